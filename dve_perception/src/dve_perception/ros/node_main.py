"""Start-up and shutdown shared by the three node executables (Humble- and Jazzy-safe)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from dve_perception.errors import DvePerceptionError

__all__ = ["run_node"]


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Create the node, spin it on a multi-threaded executor, and shut down cleanly.

    A `DvePerceptionError` while building the node (a missing model file, a bad parameter) is
    reported in one line and ends the process with exit code 1 instead of a traceback.
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except DvePerceptionError as err:
        print(f"[dve_perception] cannot start: {err}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            shutdown = getattr(node, "shutdown", None)
            if shutdown is not None:
                shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
