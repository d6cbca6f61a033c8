"""ROS message fields to arrays and matrices, on rosbags message classes and rclpy-like objects."""

from __future__ import annotations

import array
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dve_perception.errors import InputError
from dve_perception.messages.conversions import (
    camera_info_size,
    camera_info_to_K,
    color_to_rgb8,
    compressed_image_kind,
    compressed_image_to_array,
    depth_to_metres,
    image_to_array,
    matrix_to_transform_fields,
    ns_to_stamp_fields,
    pose_to_matrix,
    stamp_to_ns,
    transform_to_matrix,
)


@pytest.fixture(scope="module")
def types():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE).types


def _header(types, stamp_ns=5):
    sec, nanosec = ns_to_stamp_fields(stamp_ns)
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id="cam")


def _image(types, values, encoding, *, bigendian=False, pad=0):
    values = np.asarray(values)
    dtype = values.dtype.newbyteorder(">" if bigendian else "<")
    rows = values.astype(dtype).reshape(values.shape[0], -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xEE, np.uint8)], axis=1)
    return types["sensor_msgs/msg/Image"](
        header=_header(types),
        height=values.shape[0],
        width=values.shape[1],
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1],
        data=np.ascontiguousarray(rows).reshape(-1),
    )


def _compressed(types, fmt, data):
    return types["sensor_msgs/msg/CompressedImage"](
        header=_header(types), format=fmt, data=np.frombuffer(data, np.uint8).copy()
    )


def _encode(values, fmt="PNG", **kw):
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


RNG = np.random.default_rng(7)
SAMPLES = {
    "rgb8": RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "bgr8": RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "rgba8": RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8),
    "bgra8": RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (5, 7), dtype=np.uint8),
    "16UC1": RNG.integers(0, 65536, (5, 7), dtype=np.uint16),
    "mono16": RNG.integers(0, 65536, (5, 7), dtype=np.uint16),
    "32FC1": RNG.uniform(0.1, 9.0, (5, 7)).astype(np.float32),
}


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
@pytest.mark.parametrize("pad", [0, 3])
def test_every_supported_encoding_decodes_to_the_stored_values_with_row_padding_dropped(
    types, encoding, pad
):
    values = SAMPLES[encoding]
    decoded, got_encoding = image_to_array(_image(types, values, encoding, pad=pad))
    assert got_encoding == encoding
    assert decoded.dtype == values.dtype and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_big_endian_data_is_returned_in_native_byte_order(types, encoding):
    values = SAMPLES[encoding]
    msg = _image(types, values, encoding, bigendian=True, pad=2)
    decoded, _ = image_to_array(msg)
    assert decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, values)
    assert bytes(msg.data[:2]) == values.astype(">" + values.dtype.str[1:]).tobytes()[:2]


def test_rclpy_style_bytes_and_array_data_are_accepted():
    values = SAMPLES["16UC1"]
    raw = values.astype("<u2").tobytes()
    for data in (raw, array.array("B", raw), list(raw)):
        msg = SimpleNamespace(
            height=5, width=7, encoding="16UC1", is_bigendian=0, step=14, data=data
        )
        np.testing.assert_array_equal(image_to_array(msg)[0], values)


def test_the_decoded_array_does_not_share_the_message_buffer(types):
    msg = _image(types, SAMPLES["mono8"], "mono8")
    decoded, _ = image_to_array(msg)
    decoded[:] = 0
    assert msg.data.any()


def test_an_unsupported_encoding_is_rejected_naming_it_and_the_supported_ones(types):
    msg = _image(types, SAMPLES["rgb8"], "yuv422")
    with pytest.raises(InputError, match=r"'yuv422'.*'16UC1'.*'rgb8'"):
        image_to_array(msg)


def test_data_shorter_than_step_times_height_is_rejected(types):
    msg = _image(types, SAMPLES["rgb8"], "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(InputError, match="needs 105 bytes of data, got 104"):
        image_to_array(msg)


def test_a_step_shorter_than_a_row_is_rejected(types):
    msg = _image(types, SAMPLES["rgb8"], "rgb8")
    msg.step = 20
    with pytest.raises(InputError, match="step 20 is shorter than a row"):
        image_to_array(msg)


def test_an_empty_image_is_rejected(types):
    msg = _image(types, np.zeros((1, 1), np.uint8), "mono8")
    msg.height = 0
    with pytest.raises(InputError, match="empty: 0x1"):
        image_to_array(msg)


@pytest.mark.parametrize("fmt", ["rgb8; jpeg compressed bgr8", "jpeg", "bgr8; jpeg compressed "])
def test_jpeg_colour_decodes_to_rgb_close_to_the_original(types, fmt):
    smooth = np.zeros((16, 24, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 1] = np.linspace(0, 255, 24, dtype=np.uint8)
    data = _encode(smooth, "JPEG", quality=95)
    decoded, encoding = compressed_image_to_array(_compressed(types, fmt, data))
    assert encoding == "rgb8" and decoded.shape == (16, 24, 3)
    assert np.abs(decoded.astype(int) - smooth).max() <= 8


def test_png_colour_decodes_exactly(types):
    values = SAMPLES["rgb8"]
    decoded, _ = compressed_image_to_array(_compressed(types, "png", _encode(values)))
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth", "16UC1; compressedDepth png"])
def test_compressed_depth_skips_its_header_and_decodes_16_bit_millimetres(types, fmt):
    depth = SAMPLES["16UC1"]
    data = np.zeros(3, "<i4").tobytes() + _encode(depth)
    decoded, encoding = compressed_image_to_array(_compressed(types, fmt, data))
    assert encoding == "16UC1"
    np.testing.assert_array_equal(decoded, depth)


def test_float_compressed_depth_undoes_the_inverse_depth_quantisation(types):
    depth_m = np.array([[0.5, 1.0], [2.0, 0.0]])
    quant_a, quant_b = 100.0, 10.0  # compressed_depth_image_transport: v = A / d + B
    values = np.where(depth_m > 0, quant_a / np.where(depth_m > 0, depth_m, 1) + quant_b, 0)
    header = np.int32(0).tobytes() + np.array([quant_a, quant_b], "<f4").tobytes()
    data = header + _encode(values.astype(np.uint16))
    decoded, encoding = compressed_image_to_array(
        _compressed(types, "32FC1; compressedDepth png", data)
    )
    assert encoding == "32FC1" and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, depth_m, rtol=1e-6)


def test_compressed_image_kinds_follow_the_format_string():
    assert compressed_image_kind("rgb8; jpeg compressed bgr8") == "color"
    assert compressed_image_kind("png") == "color"
    assert compressed_image_kind("16UC1; compressedDepth") == "depth"
    assert compressed_image_kind("16UC1; png compressed ") == "depth"
    assert compressed_image_kind("16UC1; compressedDepth rvl") is None
    assert compressed_image_kind("theora") is None


def test_an_unknown_compressed_format_is_rejected_naming_it(types):
    with pytest.raises(InputError, match="unsupported CompressedImage format 'theora'"):
        compressed_image_to_array(_compressed(types, "theora", b"\x00" * 10))


def test_undecodable_compressed_data_is_rejected(types):
    with pytest.raises(InputError, match=r"cannot decode CompressedImage \('jpeg', 10 bytes\)"):
        compressed_image_to_array(_compressed(types, "jpeg", b"\x00" * 10))


def test_compressed_depth_without_its_header_is_rejected(types):
    with pytest.raises(InputError, match="has no header"):
        compressed_image_to_array(_compressed(types, "16UC1; compressedDepth", b"\x00" * 5))


def test_a_colour_png_in_a_depth_format_is_rejected(types):
    data = np.zeros(3, "<i4").tobytes() + _encode(SAMPLES["rgb8"])
    with pytest.raises(InputError, match="expected a 16-bit single-channel PNG"):
        compressed_image_to_array(_compressed(types, "16UC1; compressedDepth", data))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_colour_encodings_convert_to_rgb(encoding):
    values = SAMPLES[encoding]
    rgb = color_to_rgb8(values, encoding)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    expected = {
        "rgb8": values,
        "bgr8": values[..., ::-1],
        "rgba8": values[..., :3],
        "bgra8": values[..., 2::-1],
        "mono8": np.repeat(values[..., None], 3, axis=2),
    }[encoding]
    np.testing.assert_array_equal(rgb, expected)


def test_a_depth_encoding_is_not_a_colour_image():
    with pytest.raises(InputError, match="unsupported colour encoding '16UC1'"):
        color_to_rgb8(SAMPLES["16UC1"], "16UC1")
    with pytest.raises(InputError, match=r"mono8 image must be \(H, W\) uint8"):
        color_to_rgb8(SAMPLES["rgb8"], "mono8")


def test_depth_converts_to_metres_with_every_invalid_value_as_zero():
    mm = np.array([[0, 1, 1500, 65535]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(mm, "16UC1"), [[0, 0.001, 1.5, 65.535]], rtol=1e-7)
    metres = np.array([[np.nan, np.inf, -1.0, 2.25, 0.0]], np.float32)
    out = depth_to_metres(metres, "32FC1")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 0, 2.25, 0]])


def test_depth_with_the_wrong_dtype_or_encoding_is_rejected():
    with pytest.raises(InputError, match=r"16UC1 depth must be \(H, W\) uint16, got float32"):
        depth_to_metres(SAMPLES["32FC1"], "16UC1")
    with pytest.raises(InputError, match="unsupported depth encoding 'rgb8'"):
        depth_to_metres(SAMPLES["rgb8"], "rgb8")


def test_camera_info_gives_k_and_size(types):
    K = np.array([[500.0, 0, 320.5], [0, 501.0, 240.5], [0, 0, 1]])
    msg = types["sensor_msgs/msg/CameraInfo"](
        header=_header(types),
        height=480,
        width=640,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=K.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=np.zeros(12),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )
    np.testing.assert_array_equal(camera_info_to_K(msg), K)
    assert camera_info_size(msg) == (480, 640)


def test_an_uncalibrated_camera_info_is_rejected():
    with pytest.raises(InputError, match=r"all-zero K \(uncalibrated camera\)"):
        camera_info_to_K(SimpleNamespace(k=[0.0] * 9))
    with pytest.raises(InputError, match="K must have 9 values, got 4"):
        camera_info_to_K(SimpleNamespace(k=[1.0] * 4))
    with pytest.raises(InputError, match="camera_info has no image size: 0x0"):
        camera_info_size(SimpleNamespace(height=0, width=0))


def _transform(t, q):
    return SimpleNamespace(
        translation=SimpleNamespace(x=t[0], y=t[1], z=t[2]),
        rotation=SimpleNamespace(x=q[0], y=q[1], z=q[2], w=q[3]),
    )


def test_a_transform_message_becomes_the_matrix_of_its_quaternion_normalised():
    half = math.radians(90) / 2
    T = transform_to_matrix(_transform((1, 2, 3), (0, 0, 2 * math.sin(half), 2 * math.cos(half))))
    expected = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(T, expected, atol=1e-15)


def test_a_zero_or_non_finite_quaternion_is_rejected():
    with pytest.raises(InputError, match="zero-norm rotation quaternion"):
        transform_to_matrix(_transform((0, 0, 0), (0, 0, 0, 0)))
    with pytest.raises(InputError, match="NaN or inf"):
        pose_to_matrix((0, math.nan, 0), (0, 0, 0, 1))


def test_matrices_round_trip_through_transform_fields_including_half_turns(rng):
    quaternions = [
        *rng.normal(size=(50, 4)),
        (1, 0, 0, 0),
        (0, 1, 0, 0),
        (0, 0, 1, 0),
        (0, 0, 0, 1),
    ]
    for q in quaternions:
        T = pose_to_matrix(rng.normal(size=3), q)
        translation, quaternion = matrix_to_transform_fields(T)
        assert quaternion[3] >= 0 and math.isclose(np.linalg.norm(quaternion), 1.0)
        np.testing.assert_allclose(pose_to_matrix(translation, quaternion), T, atol=1e-12)


@pytest.mark.parametrize("ns", [0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000])
def test_stamps_round_trip_with_nanoseconds_in_range(ns):
    sec, nanosec = ns_to_stamp_fields(ns)
    assert 0 <= nanosec < 1_000_000_000
    assert stamp_to_ns(SimpleNamespace(sec=sec, nanosec=nanosec)) == ns
