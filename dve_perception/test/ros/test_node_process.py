"""Node executables as processes: an orderly exit on Ctrl-C or SIGTERM, a clear failure to start.

The combined node runs as its own process, as `ros2 launch` starts it, with a tiny ONNX network,
while the probe publishes RGB-D frames at 20 Hz. Before the fix rclpy's signal handler killed the
context first: the worker published into it ("publisher's context is invalid"), the save message
never reached /rosout, and now and then `spin()` raised and the process exited 1 with a
traceback.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest
from ros_probe import ROS_REASON, TIMEOUT_S, node_command

rclpy = pytest.importorskip("rclpy", reason=ROS_REASON)

pytestmark = pytest.mark.ros


class FramePump:
    """Publishes a frame every 50 ms from a thread until stopped."""

    def __init__(self, probe) -> None:
        self._probe, self._stop = probe, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stamp_ns = time.time_ns()
        while not self._stop.is_set():
            self._probe.publish_frame(stamp_ns)
            stamp_ns += 50_000_000
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def rosout(probe):
    """Messages the probe receives on /rosout (transient local, as rcl publishes them)."""
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(
        depth=1000,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    messages: list = []
    subscription = probe.node.create_subscription(Log, "/rosout", messages.append, qos)
    yield messages
    probe.node.destroy_subscription(subscription)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_frames_flow_saves_the_map_and_exits_0(
    probe, assets, rosout, tmp_path, stop_signal
):
    maps = tmp_path / "maps"
    command = node_command(
        "dve_perception_node", assets, map_directory=maps, save_map_on_shutdown=True
    )
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    pump = None
    try:
        probe.publish_pose()
        pump = FramePump(probe)
        deadline = time.monotonic() + TIMEOUT_S
        before = len(probe.segmentations)
        while len(probe.segmentations) < before + 3 and time.monotonic() < deadline:
            assert node.poll() is None, log_path.read_text()
            time.sleep(0.1)
        assert len(probe.segmentations) >= before + 3, (
            "no frames processed\n" + log_path.read_text()
        )
        node.send_signal(stop_signal)  # frames keep flowing while the node shuts down
        code = node.wait(timeout=60)
    finally:
        if pump is not None:
            pump.stop()
        if node.poll() is None:
            node.kill()
            node.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "[ERROR]" not in output, output
    saved = maps / "map.dvemap"
    assert saved.is_file(), output
    from dve_perception.mapping import EmbeddingMap

    assert len(EmbeddingMap.load(saved)) > 0
    # The save was logged while the context was alive, so it reached /rosout too.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("saved" in m.msg for m in rosout):
        time.sleep(0.1)
    assert any(m.msg.startswith("saved ") and "map.dvemap" in m.msg for m in rosout), [
        m.msg for m in rosout
    ]


def test_a_node_that_cannot_start_says_why_in_one_line_and_exits_1(assets, tmp_path):
    missing = tmp_path / "missing.onnx"
    command = node_command("dve_perception_node", assets, onnx_path=missing)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and str(missing) in lines[0], result.stderr


def test_a_parameter_of_the_wrong_type_stops_the_start_with_one_line_naming_it(assets):
    command = node_command("dve_perception_node", assets, sync_slop_s="fast")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "parameter sync_slop_s must be a double" in lines[0], lines
