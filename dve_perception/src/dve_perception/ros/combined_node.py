"""`dve_perception_node`: perception and mapping in one process (the default of robot.launch.py).

Embeddings go from the network to the map as tensors, never through DDS: a 768-d float16
frame at 120x160 is 29 MB, and serialising, copying and deserialising it at camera rate would
cost more than fusing it. The embedding topic is still published (at its reduced size and rate)
when `publish_embedding` is set, for other consumers. One text encoder serves both the
segmentation vocabulary and the queries.
"""

from __future__ import annotations

import sys

from diagnostic_updater import Updater
from rclpy.node import Node

from dve_perception.frames import EmbeddingFrame
from dve_perception.node_logic import build_text_encoder
from dve_perception.ros.log_bridge import forward_core_logs
from dve_perception.ros.mapping_adapter import MappingAdapter
from dve_perception.ros.node_main import run_node
from dve_perception.ros.params import declare_config
from dve_perception.ros.perception_adapter import PerceptionAdapter
from dve_perception.settings.node_config import MappingNodeConfig, PerceptionNodeConfig

__all__ = ["CombinedNode", "main"]


class CombinedNode(Node):
    """Both configs as parameters (shared names such as `models_dir` declared once)."""

    def __init__(self) -> None:
        super().__init__("dve_perception")
        forward_core_logs(self)
        declared: set[str] = set()
        perception = declare_config(self, PerceptionNodeConfig, declared)
        mapping = declare_config(self, MappingNodeConfig, declared)
        diagnostics = Updater(self)
        diagnostics.setHardwareID("dve_perception")
        encoder, _ = build_text_encoder(mapping)
        # No callback runs before the executor spins, so the map can be made second, sized to
        # the network that perception has just built.
        self._perception = PerceptionAdapter(
            self, perception, encoder, diagnostics, on_frame=self._fuse
        )
        self._mapping = MappingAdapter(
            self,
            mapping,
            encoder,
            diagnostics,
            subscribe=False,
            embedding_dim=self._perception.embedding_dim,
        )

    def _fuse(self, frame: EmbeddingFrame) -> None:
        # The pipeline normalises its embeddings, so the map need not check every pixel.
        self._mapping.integrate(frame, assume_unit=True)

    def shutdown(self) -> None:
        """Stop perception first, then save the map if configured."""
        self._perception.shutdown()
        self._mapping.shutdown()


def main(args: list[str] | None = None) -> None:
    """Run the node until Ctrl-C or ROS shutdown."""
    sys.exit(run_node(CombinedNode, args))
