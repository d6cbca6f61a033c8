"""`perception_node`: RGB-D in; segmentation, previews and (reduced) embedding frames out."""

from __future__ import annotations

import sys

from diagnostic_updater import Updater
from rclpy.node import Node

from dve_perception.node_logic import build_text_encoder
from dve_perception.ros.log_bridge import forward_core_logs
from dve_perception.ros.node_main import run_node
from dve_perception.ros.params import declare_config
from dve_perception.ros.perception_adapter import PerceptionAdapter
from dve_perception.settings.node_config import PerceptionNodeConfig

__all__ = ["PerceptionNode", "main"]


class PerceptionNode(Node):
    """Parameters from `PerceptionNodeConfig`; topics and behaviour in `PerceptionAdapter`."""

    def __init__(self) -> None:
        super().__init__("perception")
        forward_core_logs(self)
        config = declare_config(self, PerceptionNodeConfig)
        diagnostics = Updater(self)
        diagnostics.setHardwareID("dve_perception")
        # The text tower is only needed for the segmentation's class prototypes.
        encoder = build_text_encoder(config)[0] if config.publish_segmentation else None
        self._perception = PerceptionAdapter(self, config, encoder, diagnostics)

    def shutdown(self) -> None:
        """Stop the worker thread."""
        self._perception.shutdown()


def main(args: list[str] | None = None) -> None:
    """Run the node until Ctrl-C or ROS shutdown."""
    sys.exit(run_node(PerceptionNode, args))
