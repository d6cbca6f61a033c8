"""`ros2 launch dve_perception robot.launch.py` end to end, on a ROS 2 machine.

Brings the launch file up with a small random network (a tiny DVEFormer exported to ONNX, a
small CLIP text tower of the real 768-d projection), publishes a few synthetic RGB-D frames
and a static camera pose, then calls `/query_text`, the map services and a malformed request.
Needs a built and sourced workspace (`colcon build && source install/setup.bash`); elsewhere
the module is skipped with the reason below.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

_REASON = "needs ROS 2 with launch_pytest: source /opt/ros/<distro> and the workspace"
launch_pytest = pytest.importorskip("launch_pytest", reason=_REASON)
rclpy = pytest.importorskip("rclpy", reason=_REASON)

from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

pytestmark = pytest.mark.ros

H, W = 96, 128
K = np.array([[100.0, 0.0, 63.5], [0.0, 100.0, 47.5], [0.0, 0.0, 1.0]])
CAMERA_FRAME = "camera_color_optical_frame"
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_text_model) -> dict[str, Path]:
    """A tiny 768-d network exported to ONNX, the text tower, a parameters file, a map folder."""
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.perception.backends.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("launch")
    onnx_path = folder / "tiny_768.onnx"
    model = build_dveformer(dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=768))
    export_onnx(model, onnx_path, height=H, width=W)
    params = folder / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n"
        f"    map_directory: {folder / 'maps'}\n"
        "    embedding_rate_hz: 0.0\n"
        "    cloud_period_s: 0.5\n"
    )
    return {"onnx": onnx_path, "text": tiny_text_model, "params": params, "maps": folder / "maps"}


@launch_pytest.fixture(scope="module")
def robot(assets):
    launch_file = Path(get_package_share_directory("dve_perception")) / "launch/robot.launch.py"
    arguments = {
        "camera_namespace": "camera",
        "backend": "onnxruntime",
        "onnx_path": str(assets["onnx"]),
        "text_model_path": str(assets["text"]),
        "vocabulary": "chair,table,floor",
        "params_file": str(assets["params"]),
        "rviz": "false",
    }
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)), launch_arguments=arguments.items()
    )
    return LaunchDescription([include, launch_pytest.actions.ReadyToTest()])


class Probe:
    """A node that plays the camera and TF, and calls the services."""

    def __init__(self) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from tf2_ros.static_transform_broadcaster import StaticTransformBroadcaster

        from dve_perception.ros.ros_types import MSG

        rclpy.init()
        self.node = rclpy.create_node("dve_perception_probe")
        self.msg = MSG
        qos = qos_profile_sensor_data
        self.pub = {
            "color": self.node.create_publisher(MSG.Image, "/camera/color/image_raw", qos),
            "depth": self.node.create_publisher(
                MSG.Image, "/camera/aligned_depth_to_color/image_raw", qos
            ),
            "info": self.node.create_publisher(MSG.CameraInfo, "/camera/color/camera_info", qos),
        }
        self.segmentations: list = []
        self.node.create_subscription(
            MSG.Image, "/dve_perception/segmentation", self.segmentations.append, 10
        )
        self.tf = StaticTransformBroadcaster(self.node)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def publish_pose(self) -> None:
        from geometry_msgs.msg import TransformStamped

        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = "map", CAMERA_FRAME
        t.transform.translation.z = 1.0
        t.transform.rotation.w = 1.0
        self.tf.sendTransform(t)

    def publish_frame(self, stamp_ns: int) -> None:
        from dve_perception.messages.outputs import array_to_image, make_header

        header = make_header(self.msg, stamp_ns, CAMERA_FRAME)
        rgb = np.random.default_rng(stamp_ns % 1000).integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = np.full((H, W), 1500, dtype=np.uint16)
        info = self.msg.CameraInfo(header=header, height=H, width=W, distortion_model="plumb_bob")
        info.k = K.reshape(-1).tolist()
        self.pub["color"].publish(array_to_image(rgb, "rgb8", header, self.msg))
        self.pub["depth"].publish(array_to_image(depth, "16UC1", header, self.msg))
        self.pub["info"].publish(info)

    def call(self, srv_type, name: str, **fields):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=TIMEOUT_S), f"{name} not offered"
        request = srv_type.Request(**fields)
        future = client.call_async(request)
        deadline = time.monotonic() + TIMEOUT_S
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert future.done(), f"{name} did not answer"
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def probe():
    probe = Probe()
    yield probe
    probe.close()


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
