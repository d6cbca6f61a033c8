"""Preprocessing: parity with the official pipeline, encodings, invalid depth and input checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dve_perception.errors import ConfigError, InputError
from dve_perception.images import read_depth, read_rgb
from dve_perception.perception.preprocess import (
    NYUV2_DEPTH_MEAN_MM,
    NYUV2_DEPTH_STD_MM,
    PreprocessConfig,
    prepare_inputs,
    resize_depth_m,
    to_rgb8,
)

SAMPLE = Path(__file__).parents[2] / "src" / "dve_perception" / "data" / "sample"
RGB_STD_LEVELS = 255.0 * np.array([0.229, 0.224, 0.225])
RGB_MEAN_LEVELS = 255.0 * np.array([0.485, 0.456, 0.406])
# Measured on the sample: 8.04 % of the 3x480x640 values are one grey level off (see below).
MAX_FRACTION_OFF_BY_ONE_LEVEL = 0.09


@pytest.fixture(scope="module")
def sample():
    return read_rgb(SAMPLE / "rgb.png"), read_depth(SAMPLE / "depth.png")


@pytest.fixture(scope="module")
def sample_inputs(sample):
    return prepare_inputs(*sample)


def test_depth_matches_official_preprocessing_exactly(sample_inputs, parity_fixture):
    assert torch.equal(sample_inputs.depth[0], torch.from_numpy(parity_fixture["depth_input"]))


def test_rgb_matches_official_preprocessing_within_one_grey_level(sample_inputs, parity_fixture):
    # OpenCV's INTER_LINEAR on uint8 is fixed point, and its SIMD vertical pass drops low bits
    # before rounding (see the next test), so OpenCV rounds some values one level lower than
    # exact bilinear interpolation does. Each channel may therefore differ by one grey level,
    # i.e. 1 / (255 * std_c) after normalisation, plus float32 rounding; and only on a small
    # fraction of pixels: 8.04 % measured on this sample, bounded at 9 %.
    ours = sample_inputs.rgb[0].numpy()
    official = parity_fixture["rgb_input"]
    levels = (ours - official) * RGB_STD_LEVELS[:, None, None]
    assert np.abs(levels - np.round(levels)).max() < 1e-4  # only whole grey levels differ
    assert np.abs(levels).max() < 1.0 + 1e-4
    assert (np.abs(levels) > 0.5).mean() <= MAX_FRACTION_OFF_BY_ONE_LEVEL
    for channel, std in enumerate(RGB_STD_LEVELS):
        atol = 1.0 / std + 1e-6
        np.testing.assert_allclose(ours[channel], official[channel], rtol=0, atol=atol)


def _opencv_linear_resize_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR for uint8, as its SIMD code path computes it (resize.cpp).

    Weights are 11-bit fixed point; the horizontal pass is exact; the vertical pass
    (VResizeLinearVec_32s8u) shifts each row right by 4, keeps the high 16 bits of the product
    with the weight, adds the two rows and rounds the last 2 bits.
    """

    def table(src: int, dst: int):
        fx = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
        sx = np.floor(fx).astype(np.int64)
        fx = fx - sx
        fx[sx < 0], sx[sx < 0] = 0, 0
        last = sx >= src - 1
        fx[last], sx[last] = 0, src - 1
        w1 = np.round(fx * 2048).astype(np.int64)
        w0 = np.round((1 - fx) * 2048).astype(np.int64)
        return sx, np.minimum(sx + 1, src - 1), w0, w1

    x0, x1, a0, a1 = table(image.shape[1], width)
    y0, y1, b0, b1 = table(image.shape[0], height)
    image = image.astype(np.int64)
    rows = image[:, x0] * a0[None, :, None] + image[:, x1] * a1[None, :, None]
    top = ((rows[y0] >> 4) * b0[:, None, None]) >> 16
    bottom = ((rows[y1] >> 4) * b1[:, None, None]) >> 16
    return ((top + bottom + 2) >> 2).astype(np.uint8)


def test_rgb_differences_are_explained_by_opencv_fixed_point_rounding(sample, parity_fixture):
    # Emulating OpenCV's integer arithmetic reproduces the official input bit for bit, so the
    # one-level differences above come from rounding alone, not from channel order, pixel
    # centres or normalisation.
    levels = parity_fixture["rgb_input"] * RGB_STD_LEVELS[:, None, None]
    official = np.round(levels + RGB_MEAN_LEVELS[:, None, None]).astype(np.int64)
    emulated = _opencv_linear_resize_u8(sample[0], 480, 640).transpose(2, 0, 1)
    np.testing.assert_array_equal(emulated, official)


def test_network_input_geometry_and_depth_in_metres(sample, sample_inputs):
    inputs = sample_inputs
    assert inputs.rgb.shape == (1, 3, 480, 640) and inputs.rgb.dtype == torch.float32
    assert inputs.depth.shape == (1, 1, 480, 640) and inputs.depth.dtype == torch.float32
    assert inputs.original_size == (1080, 1440) and inputs.network_size == (480, 640)
    assert inputs.scale_x == pytest.approx(640 / 1440) and inputs.scale_y == pytest.approx(
        480 / 1080
    )
    expected_m = resize_depth_m(torch.from_numpy(sample[1].astype(np.float32)), (480, 640)) / 1000
    torch.testing.assert_close(inputs.depth_m[0, 0], expected_m, rtol=0, atol=0)


def test_nearest_index_rule_is_opencvs_and_agrees_with_torch_nearest_on_common_sizes():
    source = torch.arange(1080 * 1440, dtype=torch.float32).reshape(1, 1, 1080, 1440)
    for size in [(480, 640), (120, 160), (240, 320), (960, 1280)]:
        ours = resize_depth_m(source, size)
        torch.testing.assert_close(ours, F.interpolate(source, size=size, mode="nearest"))
    # For some size pairs, e.g. 680 -> 480, torch's float32 scale picks a different source pixel
    # than OpenCV's double-precision floor(i * (1 / (480 / 680))) (at 32 of 480 positions with
    # torch 2.13); resize_depth_m follows OpenCV there.
    src = torch.arange(680.0)[None, None, None]
    ours = resize_depth_m(src, (1, 480))[0, 0, 0].long().numpy()
    opencv = np.minimum(np.floor(np.arange(480) * (1.0 / (480 / 680))), 679).astype(np.int64)
    np.testing.assert_array_equal(ours, opencv)


def test_resize_depth_m_keeps_leading_dims_and_dtype():
    depth = torch.arange(2 * 8 * 12, dtype=torch.float64).reshape(2, 1, 8, 12)
    out = resize_depth_m(depth, (2, 3))
    assert out.shape == (2, 1, 2, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, depth[..., ::4, ::4])


@pytest.mark.parametrize("size", [(0, 3), (2,), "ab", (2.0, 3)])
def test_resize_depth_m_rejects_bad_sizes(size):
    with pytest.raises(InputError, match="size must be two positive integers"):
        resize_depth_m(torch.zeros(4, 4), size)


def test_resize_depth_m_rejects_1d_input():
    with pytest.raises(InputError, match="shape \\(\\.\\.\\., H, W\\)"):
        resize_depth_m(torch.zeros(4), (2, 2))


def _frame(rng, h=64, w=96):
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    depth = rng.integers(300, 9000, size=(h, w), dtype=np.uint16)
    return rgb, depth


SMALL = PreprocessConfig(height=32, width=64)


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8"])
def test_other_colour_encodings_give_the_same_tensor_as_rgb8(rng, encoding):
    rgb, depth = _frame(rng)
    reference = prepare_inputs(rgb, depth, config=SMALL).rgb
    color = rgb[..., ::-1] if encoding.startswith("bgr") else rgb
    if encoding.endswith("a8"):
        alpha = rng.integers(0, 256, size=rgb.shape[:2] + (1,), dtype=np.uint8)
        color = np.concatenate([color, alpha], axis=2)
    out = prepare_inputs(color, depth, color_encoding=encoding, config=SMALL).rgb
    assert torch.equal(out, reference)


def test_torch_inputs_give_the_same_tensors_as_numpy(rng):
    rgb, depth = _frame(rng)
    a = prepare_inputs(rgb, depth, config=SMALL)
    b = prepare_inputs(
        torch.from_numpy(rgb), torch.from_numpy(depth.astype(np.float32) / 1000), config=SMALL
    )
    torch.testing.assert_close(b.rgb, a.rgb, rtol=0, atol=0)
    torch.testing.assert_close(b.depth, a.depth, rtol=0, atol=1e-5)


def test_float_metres_and_uint16_mm_give_the_same_depth(rng):
    rgb, depth_mm = _frame(rng)
    depth_mm[:5] = 0
    from_mm = prepare_inputs(rgb, depth_mm, config=SMALL)
    depth_m = depth_mm.astype(np.float32) / 1000
    from_m = prepare_inputs(rgb, depth_m[..., None], depth_encoding="32FC1", config=SMALL)
    # m -> mm is a float32 multiplication, so allow a few ulps of a 9 m depth after normalising.
    torch.testing.assert_close(from_m.depth, from_mm.depth, rtol=0, atol=1e-5)
    torch.testing.assert_close(from_m.depth_m, from_mm.depth_m, rtol=0, atol=1e-6)
    assert torch.equal(from_m.depth == 0, from_mm.depth == 0)


def test_invalid_depth_becomes_zero_after_normalisation():
    depth_m = np.full((32, 64), 2.0, dtype=np.float32)
    invalid = [np.nan, np.inf, -np.inf, -1.5, 0.0]
    for col, value in enumerate(invalid):
        depth_m[:, col] = value
    inputs = prepare_inputs(np.zeros((32, 64, 3), np.uint8), depth_m, config=SMALL)
    assert torch.isfinite(inputs.depth).all() and torch.isfinite(inputs.depth_m).all()
    assert (inputs.depth[..., : len(invalid)] == 0).all()
    assert (inputs.depth_m[..., : len(invalid)] == 0).all()
    expected = (2000.0 - NYUV2_DEPTH_MEAN_MM) / NYUV2_DEPTH_STD_MM
    torch.testing.assert_close(inputs.depth[..., len(invalid) :].unique(), torch.tensor([expected]))
    assert (inputs.depth_m[..., len(invalid) :] == 2.0).all()


def test_custom_depth_statistics_and_size_are_used(rng):
    rgb, depth = _frame(rng)
    config = PreprocessConfig(height=64, width=32, depth_mean_mm=1000.0, depth_std_mm=500.0)
    inputs = prepare_inputs(rgb, depth, config=config)
    assert inputs.rgb.shape == (1, 3, 64, 32) and inputs.network_size == (64, 32)
    raw = resize_depth_m(torch.from_numpy(depth.astype(np.float32)), (64, 32))
    torch.testing.assert_close(inputs.depth[0, 0], (raw - 1000.0) / 500.0)


def test_same_size_input_is_not_resampled(rng):
    rgb, depth = _frame(rng, 32, 64)
    inputs = prepare_inputs(rgb, depth, config=SMALL)
    levels = inputs.rgb[0].numpy() * RGB_STD_LEVELS[:, None, None] + RGB_MEAN_LEVELS[:, None, None]
    np.testing.assert_allclose(levels, rgb.transpose(2, 0, 1), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"height": 100}, "height 100 is not a multiple of 32"),
        ({"width": 0}, "width must be a positive integer"),
        ({"width": 64.0}, "width must be a positive integer"),
        ({"depth_std_mm": 0.0}, "depth_std_mm must be positive"),
        ({"depth_std_mm": float("nan")}, "depth_std_mm must be positive"),
        ({"depth_mean_mm": float("inf")}, "depth_mean_mm must be finite"),
    ],
)
def test_config_rejects_invalid_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig(**kwargs)


def test_depth_of_a_different_size_asks_for_registration(rng):
    rgb, _ = _frame(rng)
    with pytest.raises(InputError, match="depth image is 32x48 but the colour image is 64x96; "):
        prepare_inputs(rgb, np.ones((32, 48), np.uint16), config=SMALL)
    with pytest.raises(InputError, match="register depth to color first"):
        prepare_inputs(rgb, np.ones((32, 48), np.uint16), config=SMALL)


@pytest.mark.parametrize(
    "color,encoding,match",
    [
        (np.zeros((4, 4, 3), np.uint8), "yuv422", "unsupported colour encoding 'yuv422'"),
        (np.zeros((4, 4, 4), np.uint8), "rgb8", "'rgb8' must have shape \\(H, W, 3\\)"),
        (np.zeros((4, 4, 3), np.uint8), "bgra8", "'bgra8' must have shape \\(H, W, 4\\)"),
        (np.zeros((4, 4), np.uint8), "rgb8", "must have shape \\(H, W, 3\\), got \\(4, 4\\)"),
        (np.zeros((4, 4, 3), np.float32), "rgb8", "'rgb8' must be uint8, got float32"),
        (torch.zeros(4, 4, 3), "rgb8", "'rgb8' must be uint8, got float32"),
        (np.zeros((0, 4, 3), np.uint8), "rgb8", "colour image is empty"),
        ([[1, 2, 3]], "rgb8", "must be a numpy array or torch tensor, got list"),
    ],
)
def test_bad_colour_images_are_rejected(color, encoding, match):
    with pytest.raises(InputError, match=match):
        prepare_inputs(color, np.ones((4, 4), np.uint16), color_encoding=encoding)


@pytest.mark.parametrize(
    "depth,encoding,match",
    [
        (np.ones((4, 4), np.uint16), "32FC2", "unsupported depth encoding '32FC2'"),
        (np.ones((4, 4), np.float32), "16UC1", "'16UC1' must be uint16, got float32"),
        (np.ones((4, 4), np.uint16), "32FC1", "'32FC1' must be float32, got uint16"),
        (np.ones((4, 4), np.float64), None, "cannot infer the depth encoding from dtype float64"),
        (np.ones((4, 4), np.uint8), None, "pass uint16 millimetres \\(16UC1\\)"),
        (np.ones((4, 4, 2), np.uint16), None, "must have shape \\(H, W\\) or \\(H, W, 1\\)"),
        (np.ones((0, 4), np.uint16), None, "depth image is empty"),
        (3.0, None, "must be a numpy array or torch tensor, got float"),
    ],
)
def test_bad_depth_images_are_rejected(depth, encoding, match):
    with pytest.raises(InputError, match=match):
        prepare_inputs(np.zeros((4, 4, 3), np.uint8), depth, depth_encoding=encoding)


def test_mono16_and_inferred_encodings_are_accepted(rng):
    rgb, depth = _frame(rng)
    a = prepare_inputs(rgb, depth, depth_encoding="mono16", config=SMALL)
    b = prepare_inputs(rgb, depth, config=SMALL)
    assert torch.equal(a.depth, b.depth)


def test_to_rgb8_keeps_the_array_type_and_reorders_channels(rng):
    bgra = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    out = to_rgb8(bgra, "bgra8")
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, bgra[..., [2, 1, 0]])
    out_t = to_rgb8(torch.from_numpy(bgra), "bgra8")
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out)


def test_read_only_buffers_are_accepted_without_warnings(rng):
    rgb, depth = _frame(rng)
    rgb.flags.writeable = False
    depth.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_inputs(rgb, depth, config=SMALL)


@pytest.mark.gpu
def test_cuda_device_gives_the_same_inputs_as_cpu(sample, sample_inputs):
    on_gpu = prepare_inputs(*sample, device="cuda")
    assert on_gpu.rgb.device.type == "cuda"
    # Bilinear weights are computed in float32 on both devices; allow one level on rare ties.
    levels = (on_gpu.rgb.cpu() - sample_inputs.rgb)[0] * torch.tensor(RGB_STD_LEVELS)[:, None, None]
    assert levels.abs().max() < 1.0 + 1e-4 and (levels.abs() > 0.5).float().mean() < 1e-3
    # CUDA divides by a scalar as a multiplication by its reciprocal: one ulp apart at most.
    torch.testing.assert_close(on_gpu.depth.cpu(), sample_inputs.depth, rtol=3e-7, atol=0)
