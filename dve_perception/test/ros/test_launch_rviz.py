"""robot.launch.py on a machine without rviz2 (a headless robot, ros-base, this machine).

RViz used to start by default, so the README's launch command failed wherever rviz2 was missing
(`package 'rviz2' not found`, exit 1) and left the already started node running, orphaned. Now
RViz starts only with `rviz:=true`, and asking for it without rviz2 fails before any node starts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ros_probe import ROS_REASON

pytest.importorskip("launch_ros", reason=ROS_REASON)
from ament_index_python.packages import (  # noqa: E402
    PackageNotFoundError,
    get_package_share_directory,
)

pytestmark = pytest.mark.ros


def _rviz_installed() -> bool:
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        return False
    return True


def _processes_mentioning(marker: str) -> list[str]:
    """Command lines of this machine's processes that contain `marker`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if marker in text:
            found.append(text)
    return found


@pytest.mark.skipif(_rviz_installed(), reason="rviz2 is installed here")
def test_rviz_without_rviz2_fails_before_any_node_starts(assets, tmp_path):
    # A parameters file of its own marks the processes this launch would start.
    params = tmp_path / "rviz_test_params.yaml"
    shutil.copy(assets["params"], params)
    command = [str(Path(sys.executable).parent / "ros2"), "launch", "dve_perception"]
    command += ["robot.launch.py", f"params_file:={params}", "backend:=onnxruntime"]
    command += [f"onnx_path:={assets['onnx']}", f"text_model_path:={assets['text']}", "rviz:=true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "rviz:=true, but the rviz2 package is not installed here" in output, output
    time.sleep(1.0)  # a node started by mistake would still be running now
    assert _processes_mentioning(str(params)) == []
