"""Build basic ROS messages (header, image, point cloud) from arrays, without importing ROS.

The reverse of `messages.conversions`. Every builder takes a `types` object (see
`messages.message_types.MessageTypes`): the ROS adapters pass rclpy's classes, tests pass
`messages.message_types.rosbags_message_types()`. Builders set fields by keyword, give scalar fields
plain Python int/float/str/bool (rclpy rejects numpy scalars), fixed-size numeric arrays as
numpy arrays of the field's dtype, and `uint8[]` / `float64[]` sequences through
`types.uint8_array` / `types.float64_sequence`. Images and clouds are written in the host's
byte order with `is_bigendian` set from it, as sensor_msgs_py does.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from dve_perception.errors import InputError
from dve_perception.frames import scale_intrinsics
from dve_perception.messages.conversions import (
    IMAGE_ENCODINGS,
    camera_info_size,
    camera_info_to_K,
    ns_to_stamp_fields,
)

__all__ = [
    "array_to_image",
    "byte_buffer",
    "camera_info_to_K_at",
    "check_size",
    "make_header",
    "points_cloud",
]

#: sensor_msgs/PointField.FLOAT32 (fixed by the message definition; rosbags factories and
#: rclpy classes expose the constant differently).
_FLOAT32 = 7
_INT32_MAX = 2**31 - 1


def make_header(types: Any, stamp_ns: int, frame_id: str) -> Any:
    """Build a std_msgs/Header.

    Args:
        types: the message types (`types.Header`, `types.Time`).
        stamp_ns: the stamp in integer nanoseconds, >= 0.
        frame_id: the frame of the data.

    Returns:
        The header.

    Raises:
        InputError: a stamp that is not a non-negative integer or does not fit an int32 second.
    """
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)) or stamp_ns < 0:
        raise InputError(f"stamp_ns must be a non-negative integer, got {stamp_ns!r}")
    sec, nanosec = ns_to_stamp_fields(int(stamp_ns))
    if sec > _INT32_MAX:
        raise InputError(
            f"stamp_ns {stamp_ns} is past the int32 seconds of builtin_interfaces/Time"
        )
    return types.Header(stamp=types.Time(sec=sec, nanosec=nanosec), frame_id=str(frame_id))


def array_to_image(array: np.ndarray, encoding: str, header: Any, types: Any) -> Any:
    """Build a sensor_msgs/Image from an array (the inverse of `image_to_array`).

    Args:
        array: (H, W, C) uint8 for rgb8/bgr8 (C = 3) and rgba8/bgra8 (C = 4); (H, W) uint8 for
            mono8, uint16 for mono16/16UC1, float32 for 32FC1; any byte order.
        encoding: one of `messages.conversions.IMAGE_ENCODINGS`.
        header: the image's header.
        types: the message types (`types.Image`, `types.uint8_array`).

    Returns:
        The image, unpadded rows in the host's byte order.

    Raises:
        InputError: an unknown encoding, or an empty array or one whose dtype or shape does not
            fit the encoding.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise InputError(
            f"unsupported image encoding {encoding!r}; expected one of {sorted(IMAGE_ENCODINGS)}"
        )
    dtype_name, channels = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    if channels == 1:
        expected, shape_ok = "(H, W)", array.ndim == 2
    else:
        expected = f"(H, W, {channels})"
        shape_ok = array.ndim == 3 and array.shape[2] == channels
    if array.dtype.newbyteorder("=") != np.dtype(dtype_name) or not shape_ok or array.size == 0:
        raise InputError(
            f"a {encoding} image must be a non-empty {expected} {dtype_name} array, got "
            f"{array.dtype} {array.shape}"
        )
    native = np.ascontiguousarray(array, dtype=np.dtype(dtype_name))
    height, width = native.shape[:2]
    return types.Image(
        header=header,
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=int(sys.byteorder != "little"),
        step=int(width * channels * native.itemsize),
        data=types.uint8_array(byte_buffer(native)),
    )


def points_cloud(
    header: Any,
    points: np.ndarray,
    types: Any,
    *,
    rgb: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> Any:
    """Build an unorganised sensor_msgs/PointCloud2 of float32 x, y, z and rgb or score.

    The layout is sensor_msgs_py's `create_cloud` with FLOAT32 fields at offsets 0, 4, 8 (and
    12): no padding, host byte order, height 1, is_dense false. `rgb` follows the PCL/RViz
    convention: a FLOAT32 field whose 4 bytes are the uint32 0x00RRGGBB.

    Args:
        header: the cloud's header.
        points: (N, 3) finite coordinates in metres (N may be 0).
        types: the message types (`PointCloud2`, `PointField`, `uint8_array`).
        rgb: optional (N, 3) uint8 colours.
        scores: optional (N,) scores, stored as float32 (not together with rgb).

    Returns:
        The cloud.

    Raises:
        InputError: both rgb and scores, non-numeric, non-finite or non-(N, 3) points, or rgb /
            scores of the wrong shape or dtype.
    """
    if rgb is not None and scores is not None:
        raise InputError("a cloud carries either rgb or scores, not both")
    xyz = _check_points(points)
    count = xyz.shape[0]
    names = (
        ["x", "y", "z"]
        + (["rgb"] if rgb is not None else [])
        + (["score"] if scores is not None else [])
    )
    packed = np.zeros((count, len(names)), dtype=np.float32)
    packed[:, :3] = xyz
    if rgb is not None:
        colours = np.asarray(rgb)
        if colours.dtype != np.uint8 or colours.shape != (count, 3):
            raise InputError(f"rgb must be ({count}, 3) uint8, got {colours.dtype} {colours.shape}")
        colours = colours.astype(np.uint32)
        # Write the packed colour's bits, not a float conversion of its value.
        packed.view(np.uint32)[:, 3] = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    if scores is not None:
        values = np.asarray(scores)
        if values.shape != (count,) or values.dtype.kind not in "fiu":
            raise InputError(
                f"scores must be ({count},) numbers, got {values.dtype} {values.shape}"
            )
        packed[:, 3] = values
    point_step = 4 * len(names)
    fields = [
        types.PointField(name=name, offset=4 * i, datatype=_FLOAT32, count=1)
        for i, name in enumerate(names)
    ]
    return types.PointCloud2(
        header=header,
        height=1,
        width=int(count),
        fields=fields,
        is_bigendian=sys.byteorder != "little",
        point_step=point_step,
        row_step=point_step * int(count),
        data=types.uint8_array(byte_buffer(packed)),
        is_dense=False,
    )


def camera_info_to_K_at(msg: Any, size: tuple[int, int]) -> np.ndarray:
    """Return a CameraInfo's K scaled to an image of `size` (pixel-centre convention).

    Args:
        msg: a sensor_msgs/CameraInfo with its image size and a calibrated K.
        size: (height, width) of the image the intrinsics are wanted for.

    Returns:
        (3, 3) float64 K at `size`.

    Raises:
        InputError: a camera_info without size or K, or a size that is not two positive ints.
    """
    K = camera_info_to_K(msg)
    info_h, info_w = camera_info_size(msg)
    height, width = check_size(size)
    return scale_intrinsics(K, width / info_w, height / info_h)


def check_size(size: Any) -> tuple[int, int]:
    """Return (height, width) as ints.

    Raises:
        InputError: not a tuple or list of two positive integers.
    """
    values = tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(values) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise InputError(f"size must be (height, width) positive integers, got {size!r}")
    return int(values[0]), int(values[1])


def byte_buffer(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat uint8 memoryview (works when empty)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _check_points(points: Any) -> np.ndarray:
    array = np.asarray(points)
    if array.ndim != 2 or array.shape[1] != 3 or array.dtype.kind not in "fiu":
        raise InputError(f"points must be an (N, 3) numeric array, got {array.dtype} {array.shape}")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        xyz = array.astype(np.float32)
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz).all(axis=1)).sum())
        raise InputError(f"{bad} of {xyz.shape[0]} points are NaN, inf or beyond float32 range")
    return xyz
