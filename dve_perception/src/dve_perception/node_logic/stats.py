"""Rates, latencies and throttles for node diagnostics, on an injectable clock."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RateStats", "StampRateLimiter", "Throttle"]

_NS_PER_S = 1_000_000_000


class Throttle:
    """Say `ready()` at most once per `period_s` (for warnings that could repeat every frame).

    Args:
        period_s: minimum time between two True answers; 0 answers True every time.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = float(period_s)
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Return True when the period has passed since the last True (and restart it)."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.period_s:
                self.suppressed += 1
                return False
            self._last = now
            return True


class StampRateLimiter:
    """Let through `rate_hz` items per second of *message* time, on average.

    Message stamps, not the wall clock, decide, so a bag played at any speed (`use_sim_time`)
    publishes the same frames. The next due time advances by one period from the previous due
    time (not from the item that passed), so a 30 Hz camera limited to 5 Hz gives 5 Hz, not
    the 4.3 Hz of "at least 200 ms since the last one". After a gap longer than a period the
    schedule restarts instead of bursting, and a stamp that goes backwards (a bag restarted in
    a loop) restarts it too.

    Args:
        rate_hz: the rate; 0 lets everything through.
    """

    def __init__(self, rate_hz: float) -> None:
        self.period_ns = 0 if rate_hz <= 0 else int(round(_NS_PER_S / rate_hz))
        self._last_ns: int | None = None
        self._due_ns = 0

    def allow(self, stamp_ns: int) -> bool:
        """Return True if an item stamped `stamp_ns` may pass (and record it)."""
        if self._last_ns is None or stamp_ns < self._last_ns:
            self._due_ns = stamp_ns + self.period_ns
        elif stamp_ns < self._due_ns:
            return False
        elif stamp_ns < self._due_ns + self.period_ns:
            self._due_ns += self.period_ns
        else:
            self._due_ns = stamp_ns + self.period_ns
        self._last_ns = stamp_ns
        return True


class RateStats:
    """Processed frames per second, latency and drops over a sliding window.

    Args:
        window: number of recent frames the rate and latency are computed over.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, window: int = 50, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: deque[float] = deque(maxlen=window)
        self._latencies: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.total = 0
        self.rejected = 0

    def tick(self, latency_s: float) -> None:
        """Record one processed frame and its latency (arrival to publication)."""
        with self._lock:
            self.total += 1
            self._times.append(self._clock())
            self._latencies.append(float(latency_s))

    def drop(self) -> None:
        """Record a frame that was rejected (bad input, an error)."""
        with self._lock:
            self.rejected += 1

    def snapshot(self) -> dict[str, float | int]:
        """Return total, rejected, frequency_hz and mean/max latency over the window."""
        with self._lock:
            times, latencies = list(self._times), list(self._latencies)
            total, rejected = self.total, self.rejected
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return {
            "total": total,
            "rejected": rejected,
            "frequency_hz": (len(times) - 1) / span if span > 0 else 0.0,
            "latency_mean_s": sum(latencies) / len(latencies) if latencies else 0.0,
            "latency_max_s": max(latencies) if latencies else 0.0,
        }
