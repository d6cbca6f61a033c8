"""Diagnosing a synchroniser that never fires."""

from __future__ import annotations

from dve_perception.node_logic.input_watch import InputWatch


def _watch(**counts: int) -> InputWatch:
    watch = InputWatch(("color", "depth", "camera_info"))
    for name, count in counts.items():
        for _ in range(count):
            watch.seen(name)
    return watch


def test_no_messages_at_all_is_not_reported_as_a_problem():
    assert _watch().problem() is None


def test_a_silent_input_is_named_with_the_ones_that_arrive():
    problem = _watch(color=5, depth=4).problem()
    assert problem.startswith("no messages on camera_info while color (5), depth (4) arrive")
    assert "input_qos" in problem


def test_inputs_that_arrive_but_never_match_point_at_the_slop():
    assert "sync_slop_s" in _watch(color=3, depth=3, camera_info=3).problem()


def test_once_sets_are_synchronised_there_is_no_problem():
    watch = _watch(color=3, depth=3)
    watch.matched()
    assert watch.problem() is None
