"""Throttles, stamp-based rate limiting and rate statistics for diagnostics."""

from __future__ import annotations

import pytest

from dve_perception.node_logic import RateStats, StampRateLimiter, Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_is_ready_once_per_period_and_counts_the_suppressed_calls():
    clock = FakeClock()
    throttle = Throttle(5.0, clock=clock)
    answers = []
    for _ in range(3):
        answers.append(throttle.ready())
        clock.now += 2.0
    clock.now += 10.0
    answers.append(throttle.ready())
    assert answers == [True, False, False, True]
    assert throttle.suppressed == 2


def test_a_zero_period_throttle_is_always_ready():
    throttle = Throttle(0.0, clock=FakeClock())
    assert all(throttle.ready() for _ in range(3))


def test_rate_limiter_keeps_the_average_rate_of_a_30_hz_stream_limited_to_5_hz():
    limiter = StampRateLimiter(5.0)
    period_ns = 1_000_000_000 // 30
    passed = [i for i in range(60) if limiter.allow(1_000 + i * period_ns)]
    # Due times are 0, 200, 400, ... ms; frame i is at 33.33 i ms (1 ns short of 33.3 periodic),
    # so the first frame at or after each due time is 0, 7, 13, 19, ...: 10 frames in 2 s.
    assert passed == [0, 7, 13, 19, 25, 31, 37, 43, 49, 55]


def test_rate_limiter_restarts_its_schedule_after_a_gap_instead_of_bursting():
    limiter = StampRateLimiter(10.0)  # 100 ms
    ms = 1_000_000
    assert limiter.allow(0)
    assert limiter.allow(1_000 * ms)  # a 1 s gap: passes, and the next is due 100 ms later
    assert not limiter.allow(1_050 * ms)
    assert limiter.allow(1_100 * ms)


def test_rate_limiter_with_rate_zero_passes_everything():
    limiter = StampRateLimiter(0.0)
    assert all(limiter.allow(5) for _ in range(4))


def test_rate_limiter_restarts_when_stamps_go_back_in_time():
    limiter = StampRateLimiter(1.0)
    assert limiter.allow(10_000_000_000)
    assert not limiter.allow(10_500_000_000)
    assert limiter.allow(2_000_000_000)  # a looped bag: stamps restart
    assert not limiter.allow(2_100_000_000)


def test_rate_stats_report_frequency_latency_and_rejections():
    clock = FakeClock()
    stats = RateStats(window=10, clock=clock)
    for latency in (0.1, 0.3, 0.2):
        stats.tick(latency)
        clock.now += 0.5
    stats.drop()
    snapshot = stats.snapshot()
    assert snapshot["total"] == 3 and snapshot["rejected"] == 1
    assert snapshot["frequency_hz"] == pytest.approx(2.0)
    assert snapshot["latency_mean_s"] == pytest.approx(0.2)
    assert snapshot["latency_max_s"] == pytest.approx(0.3)


def test_rate_stats_before_two_frames_report_zero_frequency():
    stats = RateStats(clock=FakeClock())
    assert stats.snapshot()["frequency_hz"] == 0.0
    stats.tick(0.1)
    assert stats.snapshot()["frequency_hz"] == 0.0
