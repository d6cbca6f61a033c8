"""Start-up and shutdown shared by the three node executables (Humble- and Jazzy-safe)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from dve_perception.errors import DvePerceptionError

__all__ = ["run_node"]

#: How often the spin loop looks at the stop request: the longest a signal waits to be seen.
SPIN_PERIOD_S = 0.1
#: How long the executor's shutdown may wait for running callbacks (a query, a save). Jazzy's
#: rclpy skips that wait (Executor.shutdown tests its flag after setting it), so a callback still
#: running can meet a destroyed node; the timeout matters where rclpy does wait.
EXECUTOR_SHUTDOWN_TIMEOUT_S = 30.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Create the node, spin it on a multi-threaded executor, and shut down in order.

    rclpy's own SIGINT handler shuts the context down the moment the signal arrives, before any
    `finally` runs (ros2/rclpy#398): the perception worker then published into a dead context,
    the shutdown logs (the map save) never reached /rosout, and `spin()` could raise "the given
    context is not valid". So rclpy installs no handler here; SIGINT and SIGTERM (what
    `ros2 launch` sends) only ask the spin loop to stop, and the shutdown runs in order with the
    context still valid: stop spinning, shut the executor down, stop the node's inputs and worker
    and save the map (`node.shutdown()`, which logs), destroy the node, then the context.
    A stop requested by a signal is a normal exit (code 0).

    A `DvePerceptionError` while building the node (a missing model file, a bad parameter) is
    reported in one line and ends the process with exit code 1 instead of a traceback. A signal
    while the node is being built (loading a model can take a while) interrupts the build.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous: dict[int, object] = {}
    node = executor = None
    code = 0
    try:
        node = make_node()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
        # spin_once with a timeout, not spin(): a blocked wait would not see the request.
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except DvePerceptionError as err:
        print(f"[dve_perception] cannot start: {err}", file=sys.stderr)
        code = 1
    finally:
        try:
            _shut_down(node, executor)
        finally:
            rclpy.try_shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


def _shut_down(node: Node | None, executor: MultiThreadedExecutor | None) -> None:
    """Stop the executor's callbacks, then the node's own work, then the node."""
    if executor is not None:
        executor.shutdown(timeout_sec=EXECUTOR_SHUTDOWN_TIMEOUT_S)
    if node is None:
        return
    shutdown = getattr(node, "shutdown", None)
    if shutdown is not None:
        shutdown()
    node.destroy_node()
