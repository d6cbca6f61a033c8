"""`ros2 launch dve_perception robot.launch.py` end to end, on a ROS 2 machine.

Brings the launch file up with a small random network (a tiny DVEFormer exported to ONNX, a
small CLIP text tower of the real 768-d projection), publishes a few synthetic RGB-D frames
and a static camera pose, then calls `/query_text`, the map services and a malformed request.
Needs a built and sourced workspace (`colcon build && source install/setup.bash`); elsewhere
the module is skipped with the reason below.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

_REASON = "needs ROS 2 with launch_pytest: source /opt/ros/<distro> and the workspace"
launch_pytest = pytest.importorskip("launch_pytest", reason=_REASON)
rclpy = pytest.importorskip("rclpy", reason=_REASON)

from ros_probe import CAMERA_FRAME, TIMEOUT_S, H, W, robot_launch  # noqa: E402

pytestmark = pytest.mark.ros


@launch_pytest.fixture(scope="module")
def robot(assets):
    return robot_launch(assets, camera_namespace="camera")


@pytest.mark.launch(fixture=robot)
def test_frames_become_a_segmentation_and_a_queryable_map(probe, assets):
    from dve_perception_interfaces.srv import QueryText, SaveMap

    probe.publish_pose()
    deadline = time.monotonic() + TIMEOUT_S
    stamp_ns = time.time_ns()
    while not probe.segmentations and time.monotonic() < deadline:
        probe.publish_frame(stamp_ns)
        stamp_ns += 100_000_000
        time.sleep(0.2)
    assert probe.segmentations, "no segmentation published"
    seg = probe.segmentations[-1]
    assert (seg.height, seg.width, seg.encoding) == (H, W, "mono16")

    answer = None
    while time.monotonic() < deadline:
        answer = probe.call(QueryText, "/query_text", text="a chair", top_k=3)
        if answer.success:
            break
        probe.publish_frame(stamp_ns)
        stamp_ns += 100_000_000
        time.sleep(0.5)
    assert answer is not None and answer.success, answer.message if answer else "no answer"
    assert answer.score_name == "relevancy" and len(answer.matches) <= 3
    assert answer.cloud.width > 0 and [f.name for f in answer.cloud.fields][:3] == ["x", "y", "z"]

    saved = probe.call(SaveMap, "/dve_perception/save_map", path="launch_test.dvemap")
    assert saved.success, saved.message
    assert (assets["maps"] / "launch_test.dvemap").is_file()


@pytest.mark.launch(fixture=robot)
def test_bad_requests_are_answered_and_the_node_keeps_running(probe):
    from dve_perception_interfaces.srv import LoadMap, QueryText, SaveMap

    empty = probe.call(QueryText, "/query_text", text="", top_k=1)
    assert not empty.success and "empty" in empty.message
    negative = probe.call(QueryText, "/query_text", text="a chair", top_k=-1)
    assert not negative.success and "top_k" in negative.message
    escape = probe.call(SaveMap, "/dve_perception/save_map", path="../../outside.dvemap")
    assert not escape.success and "outside the map directory" in escape.message
    missing = probe.call(LoadMap, "/dve_perception/load_map", path="missing.dvemap")
    assert not missing.success and "current map kept" in missing.message
    still = probe.call(QueryText, "/query_text", text="a table", top_k=1)
    assert still.message  # answered, so the node survived the bad requests


@pytest.mark.launch(fixture=robot)
def test_the_tf_buffer_belongs_to_the_node_and_serves_tf2_frames(probe):
    # tf2_ros.Buffer(node=...) offers tf2_frames and follows the node's clock (use_sim_time).
    from tf2_msgs.srv import FrameGraph

    probe.publish_pose()
    deadline = time.monotonic() + TIMEOUT_S
    frames = ""
    while CAMERA_FRAME not in frames and time.monotonic() < deadline:
        frames = probe.call(FrameGraph, "/dve_perception/tf2_frames").frame_yaml
        time.sleep(0.2)
    assert CAMERA_FRAME in frames and "parent: 'map'" in frames, frames


def _latched(probe, msg_type, topic: str, timeout_s: float = 20.0):
    """The last message a transient-local publisher holds, as a subscriber made now gets it."""
    from rclpy.qos import DurabilityPolicy, QoSProfile

    received: list = []
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    subscription = probe.node.create_subscription(msg_type, topic, received.append, qos)
    deadline = time.monotonic() + timeout_s
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    probe.node.destroy_subscription(subscription)
    assert received, f"nothing latched on {topic}"
    return received[-1]


def _query_until_answered(probe, text: str):
    """Publish frames until the map answers `text` (the map may still be empty)."""
    from dve_perception_interfaces.srv import QueryText

    probe.publish_pose()
    deadline = time.monotonic() + TIMEOUT_S
    stamp_ns = time.time_ns()
    while True:
        answer = probe.call(QueryText, "/query_text", text=text, top_k=3)
        if answer.success or time.monotonic() > deadline:
            return answer
        probe.publish_frame(stamp_ns)
        stamp_ns += 100_000_000
        time.sleep(0.3)


@pytest.mark.launch(fixture=robot)
def test_the_map_cloud_is_latched_for_a_late_subscriber(probe):
    from sensor_msgs.msg import PointCloud2

    assert _query_until_answered(probe, "a chair").success
    cloud = _latched(probe, PointCloud2, "/dve_perception/map/cloud")
    assert cloud.width > 0 and cloud.header.frame_id == "map"
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"]  # coloured by PCA


@pytest.mark.launch(fixture=robot)
def test_a_query_leaves_its_heatmap_and_markers_for_rviz(probe):
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    answer = _query_until_answered(probe, "a table")
    assert answer.success, answer.message
    heat = _latched(probe, PointCloud2, "/dve_perception/query/heatmap")
    assert heat.width == answer.cloud.width > 0
    markers = _latched(probe, MarkerArray, "/dve_perception/query/markers").markers
    assert markers[0].action == Marker.DELETEALL  # the previous query's boxes go first
    assert len(markers) >= 1 + len(answer.matches)


@pytest.mark.launch(fixture=robot)
def test_parameters_are_described_read_only_and_refuse_live_changes(probe):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import DescribeParameters, SetParameters

    node = "/dve_perception/dve_perception"
    names = ["vocabulary", "sync_slop_s", "map.voxel_size_m"]
    described = probe.call(DescribeParameters, f"{node}/describe_parameters", names=names)
    assert [d.name for d in described.descriptors] == names
    for descriptor in described.descriptors:
        assert descriptor.read_only and descriptor.description, descriptor
    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.5)
    result = probe.call(
        SetParameters,
        f"{node}/set_parameters",
        parameters=[Parameter(name="sync_slop_s", value=value)],
    )
    assert not result.results[0].successful and "read-only" in result.results[0].reason


@pytest.mark.launch(fixture=robot)
def test_the_readme_service_call_works_verbatim(probe):
    import shlex
    import subprocess
    import sys

    readme = Path(__file__).resolve().parents[3] / "README.md"
    if not readme.is_file():
        pytest.skip("needs the repository's README.md")
    lines = [
        ln for ln in readme.read_text().splitlines() if ln.startswith("ros2 service call /query")
    ]
    assert len(lines) == 1
    assert _query_until_answered(probe, "a red mug").success  # a map to answer from
    ros2 = Path(sys.executable).parent / "ros2"
    command = [str(ros2), *shlex.split(lines[0])[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success=True" in result.stdout and "score_name='relevancy'" in result.stdout


@pytest.mark.launch(fixture=robot)
def test_save_clear_and_load_restore_the_map_and_its_cloud(probe, assets):
    from sensor_msgs.msg import PointCloud2
    from std_srvs.srv import Trigger

    from dve_perception_interfaces.srv import LoadMap, QueryText, SaveMap

    answer = _query_until_answered(probe, "a chair")
    assert answer.success, answer.message
    time.sleep(1.0)  # frames still in flight are fused before the map is saved
    saved = probe.call(SaveMap, "/dve_perception/save_map", path="round_trip.dvemap")
    assert saved.success and saved.path == str((assets["maps"] / "round_trip.dvemap").resolve())
    voxels = int(saved.message.split()[1])  # "saved N voxels to PATH"
    assert saved.message.startswith("saved ") and voxels > 0

    cleared = probe.call(Trigger, "/dve_perception/clear_map")
    assert cleared.success, cleared.message
    assert _latched(probe, PointCloud2, "/dve_perception/map/cloud").width == 0
    empty = probe.call(QueryText, "/query_text", text="a chair", top_k=1)
    assert not empty.success and "the map is empty" in empty.message

    loaded = probe.call(LoadMap, "/dve_perception/load_map", path="round_trip.dvemap")
    assert loaded.success and loaded.voxel_count == voxels, loaded.message
    assert _latched(probe, PointCloud2, "/dve_perception/map/cloud").width == voxels
    again = probe.call(QueryText, "/query_text", text="a chair", top_k=1)
    assert again.success and again.cloud.width == voxels
