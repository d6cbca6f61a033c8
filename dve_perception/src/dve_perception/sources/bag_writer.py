"""Write posed RGB-D frames as a rosbag2, laid out like a RealSense recording with /tf.

Used by the demo and by the tests of `BagSource`: per frame a colour Image, a depth Image
registered to it and a CameraInfo (all stamped with the frame's stamp, header.frame_id = the
frame's optical frame), and the camera pose on /tf. Two TF layouts:

- "direct": one dynamic transform world_frame -> frame_id per frame on /tf.
- "chain": a dynamic world_frame -> "base_link" per frame on /tf, and static base_link ->
  "camera_link" -> frame_id on /tf_static (the last one with the REP 103 optical rotation), so
  a lookup must compose static and dynamic edges as on a robot.

/tf_static is offered with transient-local durability, as `ros2 bag record` stores it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dve_perception.errors import BackendUnavailableError, InputError
from dve_perception.frames import RGBDFrame
from dve_perception.messages.conversions import (
    matrix_to_transform_fields,
    ns_to_stamp_fields,
    pose_to_matrix,
)

__all__ = ["T_BASE_CAMERA_LINK", "T_CAMERA_LINK_OPTICAL", "write_bag"]

#: The static transforms of the "chain" layout. camera_link -> optical is REP 103's rotation
#: (optical z forward = link x, optical x right = link -y, optical y down = link -z).
T_BASE_CAMERA_LINK = pose_to_matrix((0.1, 0.02, 0.3), (0.0, 0.0871557, 0.0, 0.9961947))
T_CAMERA_LINK_OPTICAL = pose_to_matrix((0.0, 0.015, 0.0), (-0.5, 0.5, -0.5, 0.5))
_DISTROS = ("humble", "jazzy")


def write_bag(
    path: str | os.PathLike[str],
    frames: Sequence[RGBDFrame],
    *,
    storage: str = "mcap",
    distro: str = "humble",
    color_topic: str = "/camera/color/image_raw",
    depth_topic: str = "/camera/aligned_depth_to_color/image_raw",
    camera_info_topic: str = "/camera/color/camera_info",
    world_frame: str = "map",
    depth_encoding: str = "16UC1",
    color_encoding: str = "rgb8",
    tf_layout: str = "direct",
) -> Path:
    """Write frames to a new rosbag2 directory.

    Args:
        path: the bag directory to create; it must not exist.
        frames: frames with T_world_cam, in any order (written in stamp order).
        storage: "mcap" or "sqlite3".
        distro: "humble" (rosbag2 format version 8) or "jazzy" (version 9): the message
            definitions and metadata format written.
        color_topic: topic of the colour Image.
        depth_topic: topic of the depth Image.
        camera_info_topic: topic of the CameraInfo.
        world_frame: the fixed frame of the poses.
        depth_encoding: "16UC1" (millimetres, rounded; beyond 65.535 m stored as 0) or "32FC1"
            (metres; invalid pixels stored as NaN, as drivers do).
        color_encoding: "rgb8" or "bgr8".
        tf_layout: "direct" or "chain" (see the module docstring).

    Returns:
        The bag directory.

    Raises:
        InputError: the path exists, a frame has no pose or no frame_id, or an option is not
            one listed.
        BackendUnavailableError: rosbags is not installed.
    """
    path = Path(path)
    _check_options(storage, distro, depth_encoding, color_encoding, tf_layout)
    if path.exists():
        raise InputError(f"{path} exists already; write_bag creates a new bag, pick a new path")
    for index, frame in enumerate(frames):
        if frame.T_world_cam is None:
            raise InputError(f"frame {index} (stamp {frame.stamp_ns}) has no T_world_cam")
        if not frame.frame_id or frame.frame_id == world_frame:
            raise InputError(
                f"frame {index} has frame_id {frame.frame_id!r}; the camera's optical frame must "
                f"be named and differ from world_frame {world_frame!r}"
            )
    rosbags = _import_rosbags()
    typestore = rosbags.get_typestore(getattr(rosbags.Stores, f"ROS2_{distro.upper()}"))
    plugin = rosbags.StoragePlugin.MCAP if storage == "mcap" else rosbags.StoragePlugin.SQLITE3
    version = 8 if distro == "humble" else 9
    writer = rosbags.Writer(path, version=version, storage_plugin=plugin)
    with writer:
        volatile, latched = _qos_profiles(rosbags, version)
        topics = {
            "color": (color_topic, "sensor_msgs/msg/Image", volatile),
            "depth": (depth_topic, "sensor_msgs/msg/Image", volatile),
            "info": (camera_info_topic, "sensor_msgs/msg/CameraInfo", volatile),
            "tf": ("/tf", "tf2_msgs/msg/TFMessage", volatile),
        }
        if tf_layout == "chain":
            topics["tf_static"] = ("/tf_static", "tf2_msgs/msg/TFMessage", latched)
        conns = {
            key: writer.add_connection(topic, msgtype, typestore=typestore, offered_qos_profiles=q)
            for key, (topic, msgtype, q) in topics.items()
        }
        ordered = sorted(frames, key=lambda f: f.stamp_ns)
        if tf_layout == "chain" and ordered:
            static = _static_chain_message(typestore, ordered[0])
            writer.write(conns["tf_static"], ordered[0].stamp_ns, static)
        for frame in ordered:
            messages = _frame_messages(
                typestore, frame, world_frame, depth_encoding, color_encoding, tf_layout
            )
            for key, data in messages.items():
                writer.write(conns[key], frame.stamp_ns, data)
    return path


def _frame_messages(
    typestore: Any,
    frame: RGBDFrame,
    world_frame: str,
    depth_encoding: str,
    color_encoding: str,
    tf_layout: str,
) -> dict[str, bytes]:
    """Serialised tf, camera_info, colour and depth messages of one frame."""
    types = typestore.types
    header = _header(types, frame.stamp_ns, frame.frame_id)
    rgb = frame.rgb if color_encoding == "rgb8" else frame.rgb[:, :, ::-1]
    color = _image(types, header, rgb, color_encoding)
    if depth_encoding == "16UC1":
        mm = np.round(frame.depth_m.astype(np.float64) * 1000.0)
        depth_values = np.where(mm <= np.iinfo(np.uint16).max, mm, 0).astype("<u2")
    else:
        depth_values = np.where(frame.depth_m > 0, frame.depth_m, np.nan).astype("<f4")
    depth = _image(types, header, depth_values, depth_encoding)
    if tf_layout == "direct":
        tf = _tf_message(types, frame.stamp_ns, [(world_frame, frame.frame_id, frame.T_world_cam)])
    else:
        T_base_cam = T_BASE_CAMERA_LINK @ T_CAMERA_LINK_OPTICAL
        T_world_base = frame.T_world_cam @ np.linalg.inv(T_base_cam)
        tf = _tf_message(types, frame.stamp_ns, [(world_frame, "base_link", T_world_base)])
    messages = {
        "tf": tf,
        "info": _camera_info(types, header, frame),
        "color": color,
        "depth": depth,
    }
    return {
        key: bytes(typestore.serialize_cdr(msg, msg.__msgtype__)) for key, msg in messages.items()
    }


def _static_chain_message(typestore: Any, frame: RGBDFrame) -> bytes:
    edges = [
        ("base_link", "camera_link", T_BASE_CAMERA_LINK),
        ("camera_link", frame.frame_id, T_CAMERA_LINK_OPTICAL),
    ]
    msg = _tf_message(typestore.types, frame.stamp_ns, edges)
    return bytes(typestore.serialize_cdr(msg, msg.__msgtype__))


def _header(types: Any, stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = ns_to_stamp_fields(stamp_ns)
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def _image(types: Any, header: Any, values: np.ndarray, encoding: str) -> Any:
    data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    height, width = values.shape[:2]
    return types["sensor_msgs/msg/Image"](
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=data.size // height,
        data=data,
    )


def _camera_info(types: Any, header: Any, frame: RGBDFrame) -> Any:
    K = frame.K
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    height, width = frame.size
    return types["sensor_msgs/msg/CameraInfo"](
        header=header,
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=K.reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _tf_message(types: Any, stamp_ns: int, edges: list[tuple[str, str, np.ndarray]]) -> Any:
    transforms = []
    for parent, child, T in edges:
        (tx, ty, tz), (qx, qy, qz, qw) = matrix_to_transform_fields(T)
        transform = types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](x=tx, y=ty, z=tz),
            rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
        )
        transforms.append(
            types["geometry_msgs/msg/TransformStamped"](
                header=_header(types, stamp_ns, parent), child_frame_id=child, transform=transform
            )
        )
    return types["tf2_msgs/msg/TFMessage"](transforms=transforms)


def _qos_profiles(rosbags: Any, version: int) -> tuple[list[Any], list[Any]]:
    """(volatile, transient-local) offered QoS profiles as recorded by ros2 bag.

    "Infinite" durations are written as the recorder writes them: the rmw maximum in Humble
    (version 8), the rcl maximum in Jazzy (version 9).
    """
    infinite = (
        rosbags.QosTime(2147483647, 4294967295)
        if version == 8
        else rosbags.QosTime(9223372036, 854775807)
    )

    def profile(durability: Any, depth: int) -> list[Any]:
        return [
            rosbags.Qos(
                history=rosbags.QosHistory.KEEP_LAST,
                depth=depth,
                reliability=rosbags.QosReliability.RELIABLE,
                durability=durability,
                deadline=infinite,
                lifespan=infinite,
                liveliness=rosbags.QosLiveliness.AUTOMATIC,
                liveliness_lease_duration=infinite,
                avoid_ros_namespace_conventions=False,
            )
        ]

    return (
        profile(rosbags.QosDurability.VOLATILE, 10),
        profile(rosbags.QosDurability.TRANSIENT_LOCAL, 1),
    )


def _check_options(
    storage: str, distro: str, depth_encoding: str, color_encoding: str, tf_layout: str
) -> None:
    allowed = {
        "storage": (storage, ("mcap", "sqlite3")),
        "distro": (distro, _DISTROS),
        "depth_encoding": (depth_encoding, ("16UC1", "32FC1")),
        "color_encoding": (color_encoding, ("rgb8", "bgr8")),
        "tf_layout": (tf_layout, ("direct", "chain")),
    }
    for name, (value, choices) in allowed.items():
        if value not in choices:
            raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")


def _import_rosbags() -> Any:
    """The rosbags names used here, in one namespace, or BackendUnavailableError."""
    try:
        from types import SimpleNamespace

        from rosbags import interfaces
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore
    except ImportError as err:
        raise BackendUnavailableError(
            "writing bags needs the rosbags package: pip install rosbags"
        ) from err
    names = ("Qos", "QosDurability", "QosHistory", "QosLiveliness", "QosReliability", "QosTime")
    return SimpleNamespace(
        StoragePlugin=StoragePlugin,
        Writer=Writer,
        Stores=Stores,
        get_typestore=get_typestore,
        **{name: getattr(interfaces, name) for name in names},
    )
