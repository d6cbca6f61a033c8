"""Forward the core's `logging` records to the node's ROS logger (so /rosout shows them)."""

from __future__ import annotations

import logging

from rclpy.node import Node

__all__ = ["forward_core_logs"]


class _RosHandler(logging.Handler):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(message)
        elif record.levelno >= logging.INFO:
            self._logger.info(message)
        else:
            self._logger.debug(message)


def forward_core_logs(node: Node, level: int = logging.INFO) -> None:
    """Send records of the `dve_perception` loggers at `level` and above to `node`'s logger."""
    core = logging.getLogger("dve_perception")
    core.setLevel(level)
    handler = _RosHandler(node)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    core.addHandler(handler)
    core.propagate = False  # the ROS logger prints already; avoid a second copy on stderr
