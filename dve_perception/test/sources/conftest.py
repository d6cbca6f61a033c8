"""Rendered RGB-D frames and hand-made rosbag2 messages for the recording-source tests."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dve_perception.messages.conversions import matrix_to_transform_fields, ns_to_stamp_fields
from dve_perception.simulation import (
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render_frames,
)

H, W = 48, 64
NUM_FRAMES = 6
START_NS = 1_700_000_000_123_456_789  # a realistic epoch stamp with all nanosecond digits set
PERIOD_NS = 100_000_000


@pytest.fixture(scope="session")
def room_frames():
    """Six posed 48x64 frames of the synthetic room; a few depth pixels are invalid (0)."""
    scene = make_room_scene(seed=0)
    K = pinhole_intrinsics(W, H)
    poses = orbit_trajectory(scene, NUM_FRAMES, seed=1)
    frames = render_frames(scene, K, poses, H, W, start_stamp_ns=START_NS, period_ns=PERIOD_NS)
    out = []
    for frame in frames:
        depth = frame.depth_m.copy()
        depth[:2, :5] = 0.0  # drivers mark missing depth with 0
        out.append(replace(frame, depth_m=depth))
    return out


def typestore(distro: str = "humble"):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(getattr(Stores, f"ROS2_{distro.upper()}"))


def header(types, stamp_ns: int, frame_id: str):
    sec, nanosec = ns_to_stamp_fields(stamp_ns)
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_msg(types, stamp_ns, frame_id, array, encoding, *, bigendian=False, pad=0):
    """A sensor_msgs/Image holding `array` (H, W[, C]) with `pad` bytes of padding per row."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">" if bigendian else "<")
    rows = array.astype(dtype).reshape(array.shape[0], -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return types["sensor_msgs/msg/Image"](
        header=header(types, stamp_ns, frame_id),
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1],
        data=np.ascontiguousarray(rows).reshape(-1),
    )


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def compressed_msg(types, stamp_ns, frame_id, fmt: str, data: bytes):
    return types["sensor_msgs/msg/CompressedImage"](
        header=header(types, stamp_ns, frame_id),
        format=fmt,
        data=np.frombuffer(data, dtype=np.uint8).copy(),
    )


def compressed_depth_bytes(depth_mm: np.ndarray) -> bytes:
    """compressed_depth_image_transport's 16UC1 layout: a 12-byte ConfigHeader, then a PNG."""
    config = np.zeros(3, dtype="<i4").tobytes()  # format 0 (PNG) and unused quantisation
    return config + png_bytes(depth_mm.astype(np.uint16))


def info_msg(types, stamp_ns, frame_id, K, height, width):
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return types["sensor_msgs/msg/CameraInfo"](
        header=header(types, stamp_ns, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.asarray(K, dtype=np.float64).reshape(-1),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def tf_msg(types, stamp_ns, edges):
    """A TFMessage of (parent, child, T_parent_child) edges."""
    transforms = []
    for parent, child, T in edges:
        (x, y, z), (qx, qy, qz, qw) = matrix_to_transform_fields(T)
        transforms.append(
            types["geometry_msgs/msg/TransformStamped"](
                header=header(types, stamp_ns, parent),
                child_frame_id=child,
                transform=types["geometry_msgs/msg/Transform"](
                    translation=types["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
                    rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
                ),
            )
        )
    return types["tf2_msgs/msg/TFMessage"](transforms=transforms)


def write_messages(path: Path, messages, *, storage: str = "mcap", distro: str = "humble") -> Path:
    """Write (topic, stamp_ns, msg) triples to a new bag with rosbags' Writer, in that order."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = typestore(distro)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=8 if distro == "humble" else 9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, stamp_ns, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=store)
            data = store.serialize_cdr(msg, msg.__msgtype__)
            writer.write(connections[topic], stamp_ns, bytes(data))
    return path


def frame_messages(
    types,
    frame,
    *,
    world="map",
    color_topic="/camera/color/image_raw",
    depth_topic="/camera/aligned_depth_to_color/image_raw",
    info_topic="/camera/color/camera_info",
    tf=True,
    depth=True,
    info=True,
):
    """The tf, camera_info, colour and depth messages of one frame (rgb8, 16UC1 mm)."""
    stamp, frame_id = frame.stamp_ns, frame.frame_id
    out = []
    if tf:
        out.append(("/tf", stamp, tf_msg(types, stamp, [(world, frame_id, frame.T_world_cam)])))
    if info:
        out.append((info_topic, stamp, info_msg(types, stamp, frame_id, frame.K, *frame.size)))
    out.append((color_topic, stamp, image_msg(types, stamp, frame_id, frame.rgb, "rgb8")))
    if depth:
        mm = np.round(frame.depth_m * 1000.0).astype(np.uint16)
        out.append((depth_topic, stamp, image_msg(types, stamp, frame_id, mm, "16UC1")))
    return out


def _assert_same_frame(got, want, *, depth_tol=0.501e-3):
    """Same stamp, frame, colour, K, pose and invalid pixels; depth within `depth_tol` metres.

    The default allows the 0.5 mm rounding of millimetre depth plus float32 rounding.
    """
    from dve_perception.frames import RGBDFrame

    assert isinstance(got, RGBDFrame), got
    assert got.stamp_ns == want.stamp_ns
    assert got.frame_id == want.frame_id
    np.testing.assert_array_equal(got.rgb, want.rgb)
    np.testing.assert_allclose(got.depth_m, want.depth_m, atol=depth_tol, rtol=0)
    np.testing.assert_array_equal(got.depth_m == 0, want.depth_m == 0)
    np.testing.assert_allclose(got.K, want.K, rtol=1e-12)
    np.testing.assert_allclose(got.T_world_cam, want.T_world_cam, atol=1e-9)


@pytest.fixture(scope="session")
def assert_same_frame():
    """Compare a read frame with the frame that was written."""
    return _assert_same_frame


@pytest.fixture(scope="session")
def msgs():
    """The message builders above, for tests that write bags by hand."""
    return SimpleNamespace(
        typestore=typestore,
        header=header,
        image=image_msg,
        compressed=compressed_msg,
        compressed_depth_bytes=compressed_depth_bytes,
        png_bytes=png_bytes,
        info=info_msg,
        tf=tf_msg,
        write=write_messages,
        frame=frame_messages,
    )
