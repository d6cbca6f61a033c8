"""Convert ROS message fields to numpy arrays and matrices, without importing ROS.

The functions read message *fields* only (`msg.height`, `msg.data`, `msg.k`, ...), so they work
on rclpy messages and on the message classes of `rosbags` alike. `data` may be `bytes`,
`array.array('B')`, a numpy array or a list of ints. Every returned array is a fresh copy:
message buffers can be read-only or reused by the middleware.

Conventions: colour arrays are returned as laid out in the message (convert with
`color_to_rgb8`); depth as stored (uint16 millimetres or float32 metres, convert with
`depth_to_metres`); quaternions are (x, y, z, w) as in geometry_msgs.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from dve_perception.camera import check_intrinsics
from dve_perception.errors import InputError
from dve_perception.perception.preprocess import COLOR_ENCODINGS, DEPTH_ENCODINGS, to_rgb8

__all__ = [
    "IMAGE_ENCODINGS",
    "camera_info_size",
    "camera_info_to_K",
    "color_to_rgb8",
    "compressed_image_kind",
    "compressed_image_to_array",
    "decode_color",
    "decode_depth",
    "depth_to_metres",
    "field_bytes",
    "image_to_array",
    "matrix_to_quaternion",
    "matrix_to_transform_fields",
    "ns_to_stamp_fields",
    "pose_to_matrix",
    "stamp_to_ns",
    "transform_to_matrix",
]

#: sensor_msgs/Image encodings we decode: numpy dtype and channel count.
IMAGE_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("uint8", 3),
    "bgr8": ("uint8", 3),
    "rgba8": ("uint8", 4),
    "bgra8": ("uint8", 4),
    "mono8": ("uint8", 1),
    "16UC1": ("uint16", 1),
    "mono16": ("uint16", 1),
    "32FC1": ("float32", 1),
}
#: compressed_depth_image_transport prefixes a 12-byte ConfigHeader (int32 format, 2 float32
#: quantisation parameters) to the PNG.
_COMPRESSED_DEPTH_HEADER_BYTES = 12
_NS_PER_S = 1_000_000_000


def image_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/Image into a numpy array.

    Args:
        msg: a sensor_msgs/Image (fields height, width, encoding, is_bigendian, step, data).

    Returns:
        The array, (H, W, C) uint8 for rgb8/bgr8/rgba8/bgra8, (H, W) uint8 for mono8, (H, W)
        uint16 for 16UC1/mono16, (H, W) float32 for 32FC1, in native byte order; and the
        encoding.

    Raises:
        InputError: unsupported encoding, empty image, a step shorter than a row, or a data
            length that is not step * height.
    """
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise InputError(
            f"unsupported image encoding {encoding!r}; expected one of {sorted(IMAGE_ENCODINGS)} "
            "(convert the topic, e.g. with image_proc, or record one of these)"
        )
    dtype_name, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputError(f"image with encoding {encoding!r} is empty: {height}x{width}")
    dtype = np.dtype(dtype_name).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise InputError(
            f"image step {step} is shorter than a row of {width} {encoding} pixels "
            f"({row_bytes} bytes); the message is malformed"
        )
    data = field_bytes(msg.data)
    if data.size != step * height:
        raise InputError(
            f"{encoding} image {height}x{width} with step {step} needs {step * height} bytes of "
            f"data, got {data.size}; the message is truncated or malformed"
        )
    # Drop the row padding, then reinterpret the bytes in the message's byte order.
    rows = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes])
    array = rows.view(dtype).astype(dtype.newbyteorder("="))
    shape = (height, width) if channels == 1 else (height, width, channels)
    return array.reshape(shape), encoding


def compressed_image_kind(format_field: str) -> str | None:
    """Say whether a CompressedImage format string holds colour ("color") or depth ("depth").

    Args:
        format_field: the message's `format`, e.g. "rgb8; jpeg compressed bgr8", "jpeg",
            "16UC1; compressedDepth png".

    Returns:
        "depth" for compressedDepth or a 16-bit/float declared encoding, "color" for plain
        jpeg/png, None for anything else (e.g. "rvl").
    """
    text = str(format_field)
    declared = text.split(";", 1)[0].strip() if ";" in text else ""
    lowered = text.lower()
    if "compresseddepth" in lowered:
        # Humble writes "16UC1; compressedDepth" (PNG implied), Jazzy appends "png" or "rvl".
        return None if "rvl" in lowered else "depth"
    if declared in DEPTH_ENCODINGS:
        return "depth" if "png" in lowered else None
    if "jpeg" in lowered or "jpg" in lowered or "png" in lowered:
        return "color"
    return None


def compressed_image_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage.

    Args:
        msg: a sensor_msgs/CompressedImage (fields format, data).

    Returns:
        (H, W, 3) uint8 RGB and "rgb8" for jpeg/png colour images; (H, W) uint16 and "16UC1"
        for 16-bit PNG depth (compressedDepth or "16UC1; png compressed"); (H, W) float32 metres
        and "32FC1" for "32FC1; compressedDepth png" (inverse-depth quantised).

    Raises:
        InputError: unknown format or undecodable data.
    """
    fmt = str(msg.format)
    kind = compressed_image_kind(fmt)
    if kind is None:
        raise InputError(
            f"unsupported CompressedImage format {fmt!r}; expected jpeg or png colour (e.g. "
            "'rgb8; jpeg compressed bgr8') or '16UC1; compressedDepth png'"
        )
    data = field_bytes(msg.data).tobytes()
    compressed_depth = "compresseddepth" in fmt.lower()
    if compressed_depth:
        header, data = data[:_COMPRESSED_DEPTH_HEADER_BYTES], data[_COMPRESSED_DEPTH_HEADER_BYTES:]
        if len(header) < _COMPRESSED_DEPTH_HEADER_BYTES:
            raise InputError(f"compressedDepth message of {len(header)} bytes has no header")
    image = _decode_with_pillow(data, fmt)
    if kind == "color":
        return np.array(image.convert("RGB"), dtype=np.uint8), "rgb8"
    if image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raise InputError(
            f"depth CompressedImage ({fmt!r}) decoded to Pillow mode {image.mode!r}; "
            "expected a 16-bit single-channel PNG"
        )
    values = np.array(image).astype(np.uint16)
    if compressed_depth and fmt.strip().startswith("32FC1"):
        return _dequantise_inverse_depth(values, header), "32FC1"
    return values, "16UC1"


def color_to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a decoded colour image to (H, W, 3) uint8 RGB.

    Args:
        array: output of `image_to_array` (or compressed_image_to_array).
        encoding: rgb8, bgr8, rgba8, bgra8 or mono8.

    Returns:
        (H, W, 3) uint8 RGB (a copy).

    Raises:
        InputError: another encoding, or an array that does not fit it.
    """
    if encoding == "mono8":
        if array.dtype != np.uint8 or array.ndim != 2:
            raise InputError(f"mono8 image must be (H, W) uint8, got {array.dtype} {array.shape}")
        return np.repeat(array[:, :, None], 3, axis=2)
    if encoding not in COLOR_ENCODINGS:
        raise InputError(
            f"unsupported colour encoding {encoding!r}; expected one of "
            f"{sorted([*COLOR_ENCODINGS, 'mono8'])}"
        )
    return np.asarray(to_rgb8(array, encoding))


def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a decoded depth image to float32 metres with 0 for invalid pixels.

    Args:
        array: (H, W) uint16 millimetres (16UC1, mono16) or float32 metres (32FC1).
        encoding: one of 16UC1, mono16, 32FC1.

    Returns:
        (H, W) float32 metres; 0, NaN, inf and negative values become 0.

    Raises:
        InputError: another encoding, or an array of the wrong dtype or shape.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise InputError(
            f"unsupported depth encoding {encoding!r}; expected one of {sorted(DEPTH_ENCODINGS)}"
        )
    dtype_name, mm_per_unit = DEPTH_ENCODINGS[encoding]
    if array.dtype != np.dtype(dtype_name) or array.ndim != 2:
        raise InputError(
            f"{encoding} depth must be (H, W) {dtype_name}, got {array.dtype} {array.shape}"
        )
    with np.errstate(invalid="ignore"):
        metres = array.astype(np.float64) * (mm_per_unit / 1000.0)
        valid = np.isfinite(metres) & (metres > 0)
    return np.where(valid, metres, 0.0).astype(np.float32)


def decode_color(msg: Any) -> np.ndarray:
    """Decode a colour Image or CompressedImage to (H, W, 3) uint8 RGB (InputError if not)."""
    if hasattr(msg, "format"):
        array, encoding = compressed_image_to_array(msg)
    else:
        array, encoding = image_to_array(msg)
    return color_to_rgb8(array, encoding)


def decode_depth(msg: Any) -> np.ndarray:
    """Decode a depth Image or CompressedImage to (H, W) float32 metres (InputError if not)."""
    if hasattr(msg, "format"):
        array, encoding = compressed_image_to_array(msg)
    else:
        array, encoding = image_to_array(msg)
    return depth_to_metres(array, encoding)


def camera_info_to_K(msg: Any) -> np.ndarray:
    """Return the intrinsics of a sensor_msgs/CameraInfo.

    Args:
        msg: a CameraInfo (field `k`, 9 values, row-major).

    Returns:
        (3, 3) float64 K.

    Raises:
        InputError: all-zero K (uncalibrated camera), not 9 values, or not a pinhole matrix.
    """
    k = np.asarray(msg.k, dtype=np.float64).ravel()
    if k.size != 9:
        raise InputError(f"camera_info K must have 9 values, got {k.size}")
    if not np.any(k):
        raise InputError(
            "camera_info has an all-zero K (uncalibrated camera); calibrate the camera or "
            "record the driver's calibrated camera_info"
        )
    return check_intrinsics(k.reshape(3, 3))


def camera_info_size(msg: Any) -> tuple[int, int]:
    """Return (height, width) of a CameraInfo.

    Raises:
        InputError: a zero size (the camera_info does not describe an image).
    """
    height, width = int(msg.height), int(msg.width)
    if height <= 0 or width <= 0:
        raise InputError(f"camera_info has no image size: {height}x{width}")
    return height, width


def pose_to_matrix(translation: Any, quaternion_xyzw: Any) -> np.ndarray:
    """Build a (4, 4) rigid transform from a translation and an (x, y, z, w) quaternion.

    The quaternion is normalised, because stored quaternions are only approximately unit.

    Raises:
        InputError: non-finite values or a zero quaternion.
    """
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    q = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(4)
    if not (np.isfinite(t).all() and np.isfinite(q).all()):
        raise InputError(f"transform has NaN or inf: translation {t}, quaternion {q}")
    norm = float(np.linalg.norm(q))
    if norm < 1e-12:
        raise InputError(
            "transform has a zero-norm rotation quaternion (x, y, z, w) = (0, 0, 0, 0); "
            "the identity is (0, 0, 0, 1)"
        )
    x, y, z, w = q / norm
    T = np.eye(4)
    T[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    T[:3, 3] = t
    return T


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Return the unit (x, y, z, w) quaternion of a rotation matrix, with w >= 0.

    Shepperd's method: pick the largest of w, x, y, z to divide by, which is stable for every
    rotation (including 180 degree turns).
    """
    R = np.asarray(R, dtype=np.float64)[:3, :3]
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    diagonal = (trace, R[0, 0], R[1, 1], R[2, 2])
    largest = int(np.argmax(diagonal))
    if largest == 0:
        s = 2.0 * math.sqrt(max(1.0 + trace, 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    else:
        i = largest - 1
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 0.0))
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = s / 4
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    quaternion = np.asarray(q) / np.linalg.norm(q)
    return -quaternion if quaternion[3] < 0 else quaternion


def transform_to_matrix(transform: Any) -> np.ndarray:
    """Convert a geometry_msgs/Transform (translation, rotation) into a (4, 4) matrix.

    Raises:
        InputError: non-finite values or a zero quaternion.
    """
    t, r = transform.translation, transform.rotation
    return pose_to_matrix((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def matrix_to_transform_fields(
    T: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """Split a rigid (4, 4) transform into geometry_msgs/Transform field values.

    Returns:
        ((x, y, z) translation, (x, y, z, w) unit quaternion with w >= 0).
    """
    T = np.asarray(T, dtype=np.float64)
    x, y, z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(T[:3, :3]))
    return (x, y, z), (qx, qy, qz, qw)


def stamp_to_ns(stamp: Any) -> int:
    """Convert a builtin_interfaces/Time (sec, nanosec) to integer nanoseconds."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def ns_to_stamp_fields(ns: int) -> tuple[int, int]:
    """Split integer nanoseconds into (sec, nanosec) with 0 <= nanosec < 1e9."""
    sec, nanosec = divmod(int(ns), _NS_PER_S)
    return sec, nanosec


def field_bytes(data: Any) -> np.ndarray:
    """View a message's uint8[] field as a 1-D uint8 array (no copy where possible)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, "buffer_info"):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def _decode_with_pillow(data: bytes, fmt: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"cannot decode CompressedImage ({fmt!r}, {len(data)} bytes): {err}"
        ) from err
    return image


def _dequantise_inverse_depth(values: np.ndarray, header: bytes) -> np.ndarray:
    """Undo compressed_depth_image_transport's inverse-depth quantisation of 32FC1 depth."""
    quant_a, quant_b = np.frombuffer(header, dtype="<f4", count=2, offset=4).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        metres = quant_a / (values.astype(np.float64) - quant_b)
    return np.where(values > 0, metres, 0.0).astype(np.float32)
