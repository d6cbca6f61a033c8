"""Pair colour and depth images by their stamps, as an approximate-time synchroniser would.

Colour and depth of an RGB-D camera are captured together but stamped (and recorded) apart:
their stamps agree to within a few milliseconds, and either stream may drop frames. A colour
image is paired with the depth image nearest in time within a slop; each depth image is used
at most once, and when two colour images compete for the same depth image the closer pair wins.
"""

from __future__ import annotations

import numpy as np

from dve_perception.errors import InputError

__all__ = ["pair_by_stamp"]


def pair_by_stamp(
    color_stamps_ns: np.ndarray, depth_stamps_ns: np.ndarray, slop_ns: int
) -> list[int | None]:
    """Match each colour stamp to at most one depth stamp.

    Pairs are chosen greedily by smallest absolute time difference over all candidate pairs
    (ties broken by colour index, then depth index), so the result does not depend on the
    order the stamps are given in.

    Args:
        color_stamps_ns: (N,) integer colour stamps, any order.
        depth_stamps_ns: (M,) integer depth stamps, any order.
        slop_ns: the largest accepted |colour - depth| in nanoseconds (>= 0).

    Returns:
        For each colour stamp, the index into `depth_stamps_ns` of its partner, or None.

    Raises:
        InputError: the stamps are not 1-D integer arrays or the slop is negative.
    """
    color = _stamps("color_stamps_ns", color_stamps_ns)
    depth = _stamps("depth_stamps_ns", depth_stamps_ns)
    if isinstance(slop_ns, bool) or not isinstance(slop_ns, (int, np.integer)) or slop_ns < 0:
        raise InputError(f"slop_ns must be a non-negative integer, got {slop_ns!r}")
    result: list[int | None] = [None] * len(color)
    if len(color) == 0 or len(depth) == 0:
        return result
    depth_order = np.argsort(depth, kind="stable")
    sorted_depth = depth[depth_order]
    # Candidate depth images of each colour image: those within [t - slop, t + slop].
    lo = np.searchsorted(sorted_depth, color - slop_ns, side="left")
    hi = np.searchsorted(sorted_depth, color + slop_ns, side="right")
    counts = hi - lo
    color_index = np.repeat(np.arange(len(color)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    depth_index = depth_order[np.repeat(lo, counts) + offsets]
    gap = np.abs(color[color_index] - depth[depth_index])
    used_depth = np.zeros(len(depth), dtype=bool)
    for k in np.lexsort((depth_index, color_index, gap)):
        c, d = int(color_index[k]), int(depth_index[k])
        if result[c] is None and not used_depth[d]:
            result[c] = d
            used_depth[d] = True
    return result


def _stamps(name: str, stamps: np.ndarray) -> np.ndarray:
    array = np.asarray(stamps)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must be a 1-D integer array, got {array.dtype} {array.shape}")
    return array.astype(np.int64)
