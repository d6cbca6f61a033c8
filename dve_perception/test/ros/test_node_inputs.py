"""What the node does with inputs it cannot use, on real ROS: dropped, counted, warned once.

The combined node runs as its own process; the probe plays the camera without publishing a
camera pose, then with an encoding the node does not read, then without one of its inputs, and
reads what the node reports on /diagnostics and /rosout. The node keeps running throughout.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
from ros_probe import CAMERA_FRAME, ROS_REASON, TIMEOUT_S, H, W, node_command

pytest.importorskip("rclpy", reason=ROS_REASON)

pytestmark = pytest.mark.ros


class Reports:
    """The latest /diagnostics status per task and every /rosout line the probe receives."""

    def __init__(self, probe) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.msg import Log

        self.status: dict[str, object] = {}
        self.logs: list = []
        self._subscriptions = [
            probe.node.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 10),
            probe.node.create_subscription(Log, "/rosout", self.logs.append, 100),
        ]
        self._probe = probe

    def _diag(self, array) -> None:
        for status in array.status:
            self.status[status.name.split(": ")[-1]] = status

    def values(self, task: str) -> dict[str, str]:
        status = self.status.get(task)
        return {} if status is None else {kv.key: kv.value for kv in status.values}

    def warnings(self, text: str) -> list[str]:
        return [m.msg for m in self.logs if m.level == 30 and text in m.msg]  # 30: WARN

    def wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert condition(), what

    def close(self) -> None:
        for subscription in self._subscriptions:
            self._probe.node.destroy_subscription(subscription)


@pytest.fixture
def node_process(assets, tmp_path):
    """The combined node, warning at most once a minute so that 'once' is measurable."""
    log_path = tmp_path / "node.log"
    command = node_command("dve_perception_node", assets, warn_period_s=60.0)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    yield process, log_path
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture
def reports(probe):
    reports = Reports(probe)
    yield reports
    reports.close()


def _color(probe, stamp_ns: int, encoding: str = "rgb8"):
    """A colour image the node reads (rgb8) or one it does not (yuv422, 2 bytes a pixel)."""
    from dve_perception.messages.outputs import make_header

    header = make_header(probe.msg, stamp_ns, CAMERA_FRAME)
    step = W * (2 if encoding == "yuv422" else 3)
    return probe.msg.Image(
        header=header, height=H, width=W, encoding=encoding, step=step, data=bytes(H * step)
    )


def _feed_until(probe, reports, condition, what: str, publish) -> None:
    """Publish a frame every 200 ms until `condition()` holds."""
    deadline = time.monotonic() + TIMEOUT_S
    stamp_ns = time.time_ns()
    while not condition() and time.monotonic() < deadline:
        publish(stamp_ns)
        stamp_ns += 200_000_000
        time.sleep(0.2)
    assert condition(), what


def _count(reports, task: str, key: str) -> int:
    return int(reports.values(task).get(key, 0))


def test_frames_without_a_pose_or_with_a_bad_encoding_are_dropped_and_warned_once(
    probe, reports, node_process
):
    process, log_path = node_process
    # No camera pose on TF: perception runs, mapping drops every frame.
    _feed_until(
        probe,
        reports,
        lambda: _count(reports, "mapping", "dropped (no transform)") >= 3,
        "no frame dropped for want of a pose\n" + log_path.read_text(),
        probe.publish_frame,
    )
    assert reports.values("mapping")["fused"] == "0"
    no_tf = reports.warnings("no transform")
    assert len(no_tf) == 1 and f"map <- {CAMERA_FRAME}" in no_tf[0], no_tf

    # An encoding the node cannot read: the frame is rejected and warned about once.
    def bad_frame(stamp_ns: int) -> None:
        probe.publish_frame(stamp_ns)  # depth and camera_info; the colour image is replaced
        probe.pub["color"].publish(_color(probe, stamp_ns, "yuv422"))

    before = _count(reports, "perception", "rejected")
    _feed_until(
        probe,
        reports,
        lambda: _count(reports, "perception", "rejected") >= before + 2,
        "no rejected frame counted\n" + log_path.read_text(),
        bad_frame,
    )
    bad = reports.warnings("unsupported image encoding")
    assert len(bad) == 1 and "yuv422" in bad[0], bad
    assert process.poll() is None
    assert not [m.msg for m in reports.logs if m.level >= 40], "an ERROR was logged"


def test_diagnostics_name_the_input_that_never_arrives(probe, reports, node_process):
    from dve_perception.messages.outputs import array_to_image, make_header

    process, log_path = node_process

    def color_and_depth_only(stamp_ns: int) -> None:
        probe.pub["color"].publish(_color(probe, stamp_ns))
        header = make_header(probe.msg, stamp_ns, CAMERA_FRAME)
        depth = np.full((H, W), 1500, dtype=np.uint16)
        probe.pub["depth"].publish(array_to_image(depth, "16UC1", header, probe.msg))

    def silent_input_reported() -> bool:
        status = reports.status.get("perception")
        return status is not None and status.message.startswith("no messages on camera_info")

    _feed_until(probe, reports, silent_input_reported, log_path.read_text(), color_and_depth_only)
    assert reports.status["perception"].level == b"\x02"  # ERROR: an input is silent
    assert reports.values("perception")["camera_info messages"] == "0"
    assert process.poll() is None
