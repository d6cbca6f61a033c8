"""Say which input topic is silent when the synchroniser produces nothing.

`ApproximateTimeSynchronizer` only calls back once colour, depth and camera_info all arrive
within the slop. When one of them never arrives (a wrong topic name, a QoS mismatch, a driver
that does not publish camera_info) the node would otherwise just stay quiet, so each input is
counted on its own and the diagnostics name the ones missing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

__all__ = ["InputWatch"]


class InputWatch:
    """Count messages per input and per synced set.

    Args:
        inputs: the input names, e.g. ("color", "depth", "camera_info").
    """

    def __init__(self, inputs: Sequence[str]) -> None:
        self.counts = dict.fromkeys(inputs, 0)
        self.synced = 0
        self._lock = threading.Lock()

    def seen(self, name: str) -> None:
        """Record one message on input `name`."""
        with self._lock:
            self.counts[name] += 1

    def matched(self) -> None:
        """Record one synchronised set."""
        with self._lock:
            self.synced += 1

    def problem(self) -> str | None:
        """Describe why nothing is synchronised, or None when sets arrive (or nothing at all).

        Returns:
            None when sets are being synchronised or when no input has any message yet (the
            camera may simply not be running); otherwise which inputs are silent, or that all
            arrive but never within the slop of each other.
        """
        with self._lock:
            counts, synced = dict(self.counts), self.synced
        if synced or not any(counts.values()):
            return None
        silent = [name for name, count in counts.items() if count == 0]
        if silent:
            heard = ", ".join(f"{n} ({c})" for n, c in counts.items() if c)
            return (
                f"no messages on {', '.join(silent)} while {heard} arrive; check the topic "
                "names (remappings) and that the QoS matches the publisher's (input_qos)"
            )
        return (
            "colour, depth and camera_info all arrive but never within sync_slop_s of each "
            "other; check the stamps (depth registered to colour?) or raise sync_slop_s"
        )
