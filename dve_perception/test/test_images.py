"""Reading and writing colour and depth images, including the bundled sample frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dve_perception.errors import InputError
from dve_perception.images import read_depth, read_rgb, write_png

SAMPLE = Path(__file__).parents[1] / "src" / "dve_perception" / "data" / "sample"


def test_sample_frame_reads_as_rgb_uint8_and_depth_uint16_mm():
    rgb = read_rgb(SAMPLE / "rgb.png")
    depth = read_depth(SAMPLE / "depth.png")
    assert rgb.shape == (1080, 1440, 3) and rgb.dtype == np.uint8
    assert depth.shape == (1080, 1440) and depth.dtype == np.uint16
    # The sample is in millimetres: an indoor scene with a median of about 3 m.
    assert 2000 < np.median(depth[depth > 0]) < 4000
    assert rgb.flags.writeable and depth.flags.writeable


def test_rgb_png_round_trips_exactly(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "c.png"), rgb)


def test_depth_png_round_trips_exactly_over_the_full_uint16_range(tmp_path, rng):
    depth = rng.integers(0, 65536, size=(6, 4), dtype=np.uint16)
    depth[0, 0], depth[0, 1] = 0, 65535
    write_png(tmp_path / "d.png", depth)
    with Image.open(tmp_path / "d.png") as image:
        assert image.mode.startswith("I;16")
    np.testing.assert_array_equal(read_depth(tmp_path / "d.png"), depth)


def test_greyscale_png_is_written_and_read_back_as_three_equal_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_png(tmp_path / "g.png", grey)
    rgb = read_rgb(tmp_path / "g.png")
    assert rgb.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)


def test_rgba_png_drops_alpha(tmp_path, rng):
    rgba = rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgba[..., :3])


def test_jpeg_reads_as_rgb(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # a flat red survives JPEG almost unchanged
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    out = read_rgb(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= 3


def test_depth_decoded_as_32bit_mode_I_is_accepted_when_values_fit(tmp_path):
    # Older Pillow versions open 16-bit PNGs in mode "I"; emulate that with a TIFF.
    values = np.array([[0, 1234], [65535, 7]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "d.tif")
    np.testing.assert_array_equal(read_depth(tmp_path / "d.tif"), values.astype(np.uint16))


def test_mode_I_depth_outside_uint16_range_is_rejected(tmp_path):
    Image.fromarray(np.array([[70000]], dtype=np.int32)).save(tmp_path / "d.tif")
    with pytest.raises(InputError, match="outside 0..65535; expected a 16-bit PNG"):
        read_depth(tmp_path / "d.tif")


def test_8bit_depth_png_is_rejected_with_what_was_expected(tmp_path):
    write_png(tmp_path / "d8.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="8-bit greyscale.*expected a 16-bit single-channel PNG"):
        read_depth(tmp_path / "d8.png")


def test_colour_depth_png_is_rejected(tmp_path):
    write_png(tmp_path / "c.png", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="'RGB'.*expected a 16-bit single-channel PNG"):
        read_depth(tmp_path / "c.png")


def test_16bit_image_read_as_colour_is_rejected(tmp_path):
    write_png(tmp_path / "d.png", np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(InputError, match="expected an 8-bit RGB image \\(is this the depth"):
        read_rgb(tmp_path / "d.png")


@pytest.mark.parametrize("reader", [read_rgb, read_depth])
def test_missing_file_raises_input_error_naming_the_path(tmp_path, reader):
    with pytest.raises(InputError, match="nope.png does not exist"):
        reader(tmp_path / "nope.png")


@pytest.mark.parametrize("reader", [read_rgb, read_depth])
def test_directory_instead_of_file_is_rejected(tmp_path, reader):
    with pytest.raises(InputError, match="does not exist or is not a file"):
        reader(tmp_path)


@pytest.mark.parametrize("reader", [read_rgb, read_depth])
def test_non_image_file_raises_input_error(tmp_path, reader):
    (tmp_path / "x.png").write_bytes(b"this is not a png")
    with pytest.raises(InputError, match="cannot read .* image"):
        reader(tmp_path / "x.png")


def test_truncated_png_raises_input_error(tmp_path, rng):
    write_png(tmp_path / "c.png", rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    data = (tmp_path / "c.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read colour image"):
        read_rgb(tmp_path / "t.png")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 2, 3), dtype=np.float32),
        np.zeros((2, 2, 4), dtype=np.uint8),
        np.zeros((2, 2, 3), dtype=np.uint16),
        np.zeros((2,), dtype=np.uint8),
    ],
    ids=["float", "rgba", "rgb16", "1d"],
)
def test_write_png_rejects_unsupported_arrays(tmp_path, array):
    with pytest.raises(InputError, match="expected \\(H, W, 3\\) uint8 RGB"):
        write_png(tmp_path / "x.png", array)


def test_write_png_rejects_empty_image(tmp_path):
    with pytest.raises(InputError, match="empty image"):
        write_png(tmp_path / "x.png", np.zeros((0, 3), dtype=np.uint8))
