"""Fixtures of the real-ROS tests: a tiny network and text tower, and a node that plays the robot.

Everything here runs against the real rclpy, message_filters and tf2_ros in separate processes,
as a robot runs the nodes; on a machine without ROS 2 the tests that use it are skipped.
Each test run has a DDS domain of its own (test/conftest.py), so nothing here meets other ROS
processes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ros_probe import ROS_REASON, H, Probe, W


@pytest.fixture(scope="session")
def assets(tmp_path_factory, tiny_text_model) -> dict[str, Path]:
    """A tiny 768-d network exported to ONNX, the text tower, a parameters file, a map folder."""
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.perception.backends.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("ros_assets")
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


@pytest.fixture(scope="module")
def probe():
    pytest.importorskip("rclpy", reason=ROS_REASON)
    probe = Probe()
    yield probe
    probe.close()
