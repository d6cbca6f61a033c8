"""`mapping_node`: embedding frames + TF in; the voxel map, /query_text and map services."""

from __future__ import annotations

import sys

from diagnostic_updater import Updater
from rclpy.node import Node

from dve_perception.node_logic import build_text_encoder
from dve_perception.ros.log_bridge import forward_core_logs
from dve_perception.ros.mapping_adapter import MappingAdapter
from dve_perception.ros.node_main import run_node
from dve_perception.ros.params import declare_config
from dve_perception.settings.node_config import MappingNodeConfig

__all__ = ["MappingNode", "main"]


class MappingNode(Node):
    """Parameters from `MappingNodeConfig`; topics, services and TF in `MappingAdapter`."""

    def __init__(self) -> None:
        super().__init__("mapping")
        forward_core_logs(self)
        config = declare_config(self, MappingNodeConfig)
        diagnostics = Updater(self)
        diagnostics.setHardwareID("dve_perception")
        encoder, _ = build_text_encoder(config)
        self._mapping = MappingAdapter(self, config, encoder, diagnostics, subscribe=True)

    def shutdown(self) -> None:
        """Save the map if configured."""
        self._mapping.shutdown()


def main(args: list[str] | None = None) -> None:
    """Run the node until Ctrl-C or ROS shutdown."""
    sys.exit(run_node(MappingNode, args))
