"""write_bag: what it puts in a rosbag2, read back with rosbags directly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dve_perception.errors import InputError
from dve_perception.messages.conversions import stamp_to_ns, transform_to_matrix
from dve_perception.sources import write_bag
from dve_perception.sources.bag_writer import T_BASE_CAMERA_LINK, T_CAMERA_LINK_OPTICAL


def _read_all(path):
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        topics = {name: info for name, info in reader.topics.items()}
        messages = [
            (c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()
        ]
    return topics, messages


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_chain_bag_holds_camera_messages_dynamic_base_and_latched_static_tf(
    tmp_path, room_frames, storage
):
    path = write_bag(tmp_path / "bag", room_frames[:2], storage=storage, tf_layout="chain")
    assert list(path.glob("*.mcap" if storage == "mcap" else "*.db3"))
    topics, messages = _read_all(path)
    assert {n: t.msgtype for n, t in topics.items()} == {
        "/camera/color/image_raw": "sensor_msgs/msg/Image",
        "/camera/aligned_depth_to_color/image_raw": "sensor_msgs/msg/Image",
        "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
        "/tf": "tf2_msgs/msg/TFMessage",
        "/tf_static": "tf2_msgs/msg/TFMessage",
    }
    static_qos = topics["/tf_static"].connections[0].ext.offered_qos_profiles
    assert static_qos[0].durability.name == "TRANSIENT_LOCAL"
    static = [m for topic, _, m in messages if topic == "/tf_static"]
    assert len(static) == 1
    edges = {(t.header.frame_id, t.child_frame_id) for t in static[0].transforms}
    assert edges == {("base_link", "camera_link"), ("camera_link", "camera_color_optical_frame")}
    frame = room_frames[1]
    tf = [m for topic, t, m in messages if topic == "/tf" and t == frame.stamp_ns][0]
    (stamped,) = tf.transforms
    assert (stamped.header.frame_id, stamped.child_frame_id) == ("map", "base_link")
    assert stamp_to_ns(stamped.header.stamp) == frame.stamp_ns
    T_world_cam = (
        transform_to_matrix(stamped.transform) @ T_BASE_CAMERA_LINK @ T_CAMERA_LINK_OPTICAL
    )
    np.testing.assert_allclose(T_world_cam, frame.T_world_cam, atol=1e-12)
    info = [m for topic, _, m in messages if topic == "/camera/color/camera_info"][0]
    assert (info.height, info.width, info.distortion_model) == (48, 64, "plumb_bob")
    np.testing.assert_array_equal(info.k.reshape(3, 3), room_frames[0].K)
    np.testing.assert_array_equal(info.p.reshape(3, 4)[:, :3], room_frames[0].K)


def test_the_optical_rotation_of_the_chain_layout_is_rep_103():
    # optical z (forward) = link x, optical x (right) = link -y, optical y (down) = link -z
    np.testing.assert_allclose(
        T_CAMERA_LINK_OPTICAL[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-15
    )


def test_32fc1_depth_stores_invalid_pixels_as_nan_and_bgr8_swaps_channels(tmp_path, room_frames):
    frame = room_frames[0]
    path = write_bag(
        tmp_path / "bag", [frame], depth_encoding="32FC1", color_encoding="bgr8", distro="jazzy"
    )
    _, messages = _read_all(path)
    by_topic = {topic: m for topic, _, m in messages}
    depth = by_topic["/camera/aligned_depth_to_color/image_raw"]
    values = depth.data.view("<f4").reshape(48, 64)
    assert depth.encoding == "32FC1" and np.isnan(values[0, 0])
    np.testing.assert_array_equal(values[5:], frame.depth_m[5:])
    color = by_topic["/camera/color/image_raw"]
    assert color.encoding == "bgr8" and color.step == 64 * 3
    np.testing.assert_array_equal(color.data.reshape(48, 64, 3)[..., ::-1], frame.rgb)


def test_bad_options_an_existing_path_or_a_frame_without_pose_are_rejected(tmp_path, room_frames):
    with pytest.raises(
        InputError, match=r"storage must be one of \['mcap', 'sqlite3'\], got 'zip'"
    ):
        write_bag(tmp_path / "a", room_frames, storage="zip")
    with pytest.raises(InputError, match="tf_layout must be one of"):
        write_bag(tmp_path / "a", room_frames, tf_layout="tree")
    with pytest.raises(InputError, match="distro must be one of"):
        write_bag(tmp_path / "a", room_frames, distro="rolling")
    with pytest.raises(InputError, match="exists already; write_bag creates a new bag"):
        write_bag(tmp_path, room_frames)
    with pytest.raises(InputError, match=r"frame 1 \(stamp \d+\) has no T_world_cam"):
        write_bag(tmp_path / "b", [room_frames[0], replace(room_frames[1], T_world_cam=None)])
    with pytest.raises(InputError, match="frame 0 has frame_id ''; the camera's optical frame"):
        write_bag(tmp_path / "c", [replace(room_frames[0], frame_id="")])
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
