"""Voxel ground truth from the exact hit points of rendered frames.

Voxel index of a world point p (metres) is floor(p / voxel_size_m), an int64 triple. Ground truth
comes from `RenderedFrame.points_world`, never from back-projected depth, so it is exact up to
the float32 storage of the points (hits on planes are snapped onto them when rendering).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from numbers import Integral, Real

import numpy as np

from dve_perception.errors import InputError
from dve_perception.simulation.synthetic_scene import RenderedFrame, SyntheticScene

__all__ = ["surface_voxels", "voxel_label_majority"]


def surface_voxels(
    frames: Iterable[RenderedFrame],
    scene: SyntheticScene,
    voxel_size_m: float,
    label: int | None = None,
) -> np.ndarray:
    """Ground-truth observed surface voxels from the exact hit points of the frames.

    Args:
        frames: rendered frames of `scene`.
        scene: the scene (to check `label`).
        voxel_size_m: voxel edge length in metres (> 0); voxel index = floor(p_world / size).
        label: only hits of this label id; None for all hits.

    Returns:
        (M, 3) int64 unique voxel indices in the world frame, sorted lexicographically.
    """
    _check_voxel_size(voxel_size_m)
    num_labels = len(scene.label_names)
    if label is not None and not (isinstance(label, Integral) and 0 <= label < num_labels):
        raise InputError(f"label must be None or in [0, {len(scene.label_names)}), got {label!r}")
    voxels = [
        _voxel_indices(frame.points_world[mask], voxel_size_m)
        for frame, mask in _hit_masks(frames, label)
    ]
    if not voxels:
        return np.zeros((0, 3), dtype=np.int64)
    return np.unique(np.concatenate(voxels), axis=0)  # unique rows, sorted lexicographically


def voxel_label_majority(
    frames: Iterable[RenderedFrame], voxel_size_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of every observed voxel, counting one vote per hit pixel.

    Voxels on the boundary between two surfaces (e.g. where a box meets the floor) get the label
    seen most often there; ties go to the smaller label id.

    Args:
        frames: rendered frames.
        voxel_size_m: voxel edge length in metres (> 0).

    Returns:
        (M, 3) int64 voxel indices sorted lexicographically, and (M,) int32 majority labels.
    """
    _check_voxel_size(voxel_size_m)
    voxels, labels = [], []
    for frame, mask in _hit_masks(frames, None):
        voxels.append(_voxel_indices(frame.points_world[mask], voxel_size_m))
        labels.append(frame.labels[mask].astype(np.int64))
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if all_labels.size == 0:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int32)
    unique, inverse = np.unique(np.concatenate(voxels), axis=0, return_inverse=True)
    num_labels = int(all_labels.max()) + 1
    votes = np.bincount(
        inverse.ravel() * num_labels + all_labels, minlength=len(unique) * num_labels
    ).reshape(len(unique), num_labels)
    return unique, votes.argmax(axis=1).astype(np.int32)


def _hit_masks(
    frames: Iterable[RenderedFrame], label: int | None
) -> Iterator[tuple[RenderedFrame, np.ndarray]]:
    for frame in frames:
        if not isinstance(frame, RenderedFrame):
            raise InputError(f"frames must be RenderedFrame instances, got {type(frame).__name__}")
        yield frame, (frame.labels >= 0) if label is None else (frame.labels == label)


def _check_voxel_size(voxel_size_m: object) -> None:
    if not isinstance(voxel_size_m, Real) or not 0.0 < voxel_size_m < math.inf:
        raise InputError(f"voxel_size_m must be a positive finite number, got {voxel_size_m!r}")


def _voxel_indices(points_world: np.ndarray, voxel_size_m: float) -> np.ndarray:
    return np.floor(points_world.astype(np.float64) / voxel_size_m).astype(np.int64)
