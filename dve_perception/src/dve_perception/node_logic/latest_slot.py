"""A one-item mailbox between a middleware callback and a worker thread.

Camera drivers publish faster than a CPU (or a busy GPU) can run the network. Queuing frames
would make the node fall further behind every second; keeping only the newest one bounds the
latency to one network run. Replaced frames are counted so diagnostics can show the drop rate.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["LatestSlot"]

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Hold at most one item; a newer `put` replaces (and counts) the waiting one."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._has_item = False
        self._closed = False
        self.received = 0
        self.dropped = 0

    @property
    def closed(self) -> bool:
        """Whether `close` was called (the worker should exit)."""
        with self._condition:
            return self._closed

    def put(self, item: T) -> None:
        """Offer an item; a waiting one that was never taken is dropped and counted."""
        with self._condition:
            if self._closed:
                return
            self.received += 1
            if self._has_item:
                self.dropped += 1
            self._item, self._has_item = item, True
            self._condition.notify()

    def take(self, timeout_s: float | None = None) -> T | None:
        """Return the newest item, waiting up to `timeout_s`; None on timeout or when closed."""
        with self._condition:
            if not self._has_item and not self._closed:
                self._condition.wait(timeout=timeout_s)
            if not self._has_item:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def close(self) -> None:
        """Wake the worker and refuse further items."""
        with self._condition:
            self._closed = True
            self._item, self._has_item = None, False
            self._condition.notify_all()
