"""`robot.launch.py combined:=false`: perception and mapping in two processes, joined over DDS.

The embedding frames (float16 unit vectors, depth and camera model) cross DDS as
dve_perception_interfaces/EmbeddingFrame from perception_node to mapping_node; a query answered
by the mapping node proves that they arrived, decoded and were fused at the right pose.
"""

from __future__ import annotations

import time

import pytest
from ros_probe import ROS_REASON, TIMEOUT_S, robot_launch

launch_pytest = pytest.importorskip("launch_pytest", reason=ROS_REASON)
pytest.importorskip("rclpy", reason=ROS_REASON)

pytestmark = pytest.mark.ros


@launch_pytest.fixture(scope="module")
def split_robot(assets):
    return robot_launch(assets, combined="false")


@pytest.mark.launch(fixture=split_robot)
def test_embedding_frames_cross_dds_and_the_mapping_node_answers(probe):
    from dve_perception_interfaces.msg import EmbeddingFrame
    from dve_perception_interfaces.srv import QueryText

    frames: list = []
    probe.node.create_subscription(EmbeddingFrame, "/dve_perception/embedding", frames.append, 10)
    probe.publish_pose()
    deadline = time.monotonic() + TIMEOUT_S
    stamp_ns = time.time_ns()
    answer = None
    while time.monotonic() < deadline:
        probe.publish_frame(stamp_ns)
        stamp_ns += 100_000_000
        time.sleep(0.3)
        if frames:
            answer = probe.call(QueryText, "/query_text", text="a chair", top_k=2)
            if answer.success:
                break
    assert frames, "perception_node published no embedding frame"
    frame = frames[-1]
    assert frame.header.frame_id == "camera_color_optical_frame"
    assert answer is not None and answer.success, answer.message if answer else "no answer"
    assert answer.cloud.width > 0
