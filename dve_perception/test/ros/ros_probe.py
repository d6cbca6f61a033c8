"""What the real-ROS tests share: the camera the probe plays, and the probe node itself."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

H, W = 96, 128
K = np.array([[100.0, 0.0, 63.5], [0.0, 100.0, 47.5], [0.0, 0.0, 1.0]])
CAMERA_FRAME = "camera_color_optical_frame"
TIMEOUT_S = 120.0
ROS_REASON = "needs ROS 2 (rclpy, launch_pytest): run on a ROS 2 machine"


class Probe:
    """A node in the test process that plays the camera and TF, and calls the services."""

    def __init__(self, name: str = "dve_perception_probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from tf2_ros.static_transform_broadcaster import StaticTransformBroadcaster

        from dve_perception.ros.ros_types import MSG

        self._rclpy = rclpy
        # No rclpy signal handlers in the test process: they swallow SIGTERM, so a hung run
        # could not be stopped by `timeout` or CI.
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name)
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
        self._rclpy.try_shutdown()


CAMERA_REMAPS = {
    "color/image": "/camera/color/image_raw",
    "depth/image": "/camera/aligned_depth_to_color/image_raw",
    "color/camera_info": "/camera/color/camera_info",
}


def node_command(executable: str, assets: dict, **parameters: object) -> list[str]:
    """The node executable with the test network, in the namespace robot.launch.py gives it."""
    command = [str(Path(sys.executable).parent / executable), "--ros-args"]
    command += ["-r", "__ns:=/dve_perception", "-r", "__node:=dve_perception"]
    command += ["--params-file", str(assets["params"])]
    values = {
        "backend": "onnxruntime",
        "onnx_path": str(assets["onnx"]),
        "text_model_path": str(assets["text"]),
        "vocabulary": "chair,table",
        **parameters,
    }
    for name, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        command += ["-p", f"{name}:={text}"]
    for source, target in CAMERA_REMAPS.items():
        command += ["-r", f"{source}:={target}"]
    return command


def robot_launch(assets: dict, **arguments: str):
    """robot.launch.py with the test network and text tower, then ReadyToTest (launch_pytest).

    RViz is left at its default: it is not installed here, as on a headless robot.
    """
    import launch_pytest
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    share = Path(get_package_share_directory("dve_perception"))
    values = {
        "backend": "onnxruntime",
        "onnx_path": str(assets["onnx"]),
        "text_model_path": str(assets["text"]),
        "vocabulary": "chair,table,floor",
        "params_file": str(assets["params"]),
        **arguments,
    }
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share / "launch" / "robot.launch.py")),
        launch_arguments=values.items(),
    )
    return LaunchDescription([include, launch_pytest.actions.ReadyToTest()])
