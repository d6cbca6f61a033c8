"""The logic of the ROS nodes, without ROS: what happens to a frame, a request, a timer tick.

The adapters in `dve_perception.ros` only turn messages into the arguments of these classes
and their outcomes back into messages, so everything that can go wrong is tested here.
"""

from __future__ import annotations

from dve_perception.node_logic.input_watch import InputWatch
from dve_perception.node_logic.latest_slot import LatestSlot
from dve_perception.node_logic.map_paths import resolve_map_path
from dve_perception.node_logic.map_service import (
    FrameOutcome,
    MapService,
    QueryOutcome,
    ServiceOutcome,
)
from dve_perception.node_logic.node_setup import (
    NodeNetwork,
    build_map,
    build_network,
    build_text_encoder,
    class_names,
)
from dve_perception.node_logic.perception_worker import (
    PerceptionOutputs,
    PerceptionWorker,
    frame_from_messages,
)
from dve_perception.node_logic.stats import RateStats, StampRateLimiter, Throttle

__all__ = [
    "FrameOutcome",
    "InputWatch",
    "LatestSlot",
    "MapService",
    "NodeNetwork",
    "PerceptionOutputs",
    "PerceptionWorker",
    "QueryOutcome",
    "RateStats",
    "ServiceOutcome",
    "StampRateLimiter",
    "Throttle",
    "build_map",
    "build_network",
    "build_text_encoder",
    "class_names",
    "frame_from_messages",
    "resolve_map_path",
]
