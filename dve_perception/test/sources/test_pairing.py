"""Pairing colour and depth stamps within a slop, each depth image used once."""

from __future__ import annotations

import numpy as np
import pytest

from dve_perception.errors import InputError
from dve_perception.sources.pairing import pair_by_stamp

MS = 1_000_000


def test_each_colour_stamp_gets_the_nearest_depth_stamp_within_the_slop():
    color = np.array([100, 200, 300]) * MS
    depth = np.array([98, 203, 260, 330]) * MS
    assert pair_by_stamp(color, depth, 20 * MS) == [0, 1, None]


def test_the_slop_bound_is_inclusive():
    assert pair_by_stamp(np.array([0]), np.array([20]), 20) == [0]
    assert pair_by_stamp(np.array([0]), np.array([21]), 20) == [None]


def test_a_depth_image_is_used_once_and_the_closer_colour_image_wins_it():
    color = np.array([100, 104]) * MS
    depth = np.array([103]) * MS
    assert pair_by_stamp(color, depth, 10 * MS) == [None, 0]


def test_the_loser_of_a_contest_falls_back_to_its_next_nearest_depth():
    color = np.array([100, 104]) * MS
    depth = np.array([95, 103]) * MS
    assert pair_by_stamp(color, depth, 10 * MS) == [0, 1]


def test_the_result_does_not_depend_on_the_order_of_the_stamps(rng):
    color = np.sort(rng.integers(0, 10**9, 40))
    depth = color + rng.integers(-15 * MS, 15 * MS, 40)
    depth = np.delete(depth, [3, 17])
    expected = pair_by_stamp(color, depth, 10 * MS)
    perm_c, perm_d = rng.permutation(len(color)), rng.permutation(len(depth))
    shuffled = pair_by_stamp(color[perm_c], depth[perm_d], 10 * MS)
    unshuffled = [None] * len(color)
    for k, match in enumerate(shuffled):
        unshuffled[perm_c[k]] = None if match is None else int(perm_d[match])
    assert unshuffled == expected
    used = [m for m in expected if m is not None]
    assert len(used) == len(set(used))
    assert all(abs(color[i] - depth[m]) <= 10 * MS for i, m in enumerate(expected) if m is not None)


def test_empty_inputs_pair_nothing():
    assert pair_by_stamp(np.array([1, 2]), np.array([], dtype=np.int64), 5) == [None, None]
    assert pair_by_stamp([], np.array([1]), 5) == []


def test_bad_stamps_or_slop_are_rejected():
    with pytest.raises(
        InputError, match="color_stamps_ns must be a 1-D integer array, got float64"
    ):
        pair_by_stamp(np.array([1.5]), np.array([1]), 5)
    with pytest.raises(InputError, match="slop_ns must be a non-negative integer, got -1"):
        pair_by_stamp(np.array([1]), np.array([1]), -1)
