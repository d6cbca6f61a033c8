"""Voxel ground truth for the 3D map evaluation: class id per voxel key (see `map_eval`).

Keys are the map's own (`pack_voxel_keys` of floor(p_world / voxel_size_m)); class ids are 1..K
(0 = void is never stored), as in the dataset layout. `voxel_labels_from_frames` back-projects
labelled pixels exactly as `EmbeddingIntegrator` does (float32, same functions) and takes the
per-voxel majority (one vote per pixel, ties to the smaller id); `voxel_labels_from_rendered`
uses the exact hit points of synthetic frames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dve_perception.camera import backproject_depth, check_intrinsics, check_pose, transform_points
from dve_perception.errors import InputError
from dve_perception.frames import sample_depth_at_centres, scale_intrinsics
from dve_perception.mapping.voxel_hash import MAX_VOXEL_INDEX, pack_voxel_keys, unpack_voxel_keys

__all__ = ["VoxelLabels", "voxel_labels_from_frames", "voxel_labels_from_rendered"]


@dataclass(frozen=True, eq=False)
class VoxelLabels:
    """Ground-truth class per voxel.

    Attributes:
        voxel_size_m: voxel edge in metres (must equal the evaluated map's).
        keys: (M,) int64 packed voxel keys, sorted and unique.
        labels: (M,) int64 class ids in 1..K (void voxels are not stored).
        class_names: optional K names (label i is class_names[i - 1]).
    """

    voxel_size_m: float
    keys: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        """Return the number of labelled voxels."""
        return int(self.keys.shape[0])

    @property
    def voxels(self) -> np.ndarray:
        """(M, 3) int64 voxel indices."""
        return unpack_voxel_keys(torch.from_numpy(self.keys)).numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz with voxel_size_m, voxels (M, 3), labels (M,) and class_names."""
        path = Path(path)
        names = np.array(self.class_names if self.class_names is not None else [], dtype=str)
        with open(path, "wb") as file:  # a file object: np.savez would append ".npz" to names
            np.savez(
                file,
                voxel_size_m=np.float64(self.voxel_size_m),
                voxels=self.voxels,
                labels=self.labels,
                class_names=names,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VoxelLabels:
        """Read a file written by `save`.

        Raises:
            InputError: missing or unreadable file, missing arrays or inconsistent shapes.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                size, voxels = float(data["voxel_size_m"]), data["voxels"]
                labels, names = data["labels"], [str(n) for n in data["class_names"]]
        except (OSError, KeyError, ValueError) as err:
            raise InputError(
                f"cannot read voxel labels {path}: {err}; expected an .npz with voxel_size_m, "
                "voxels (M, 3), labels (M,) and class_names (from VoxelLabels.save)"
            ) from err
        if voxels.ndim != 2 or voxels.shape[1] != 3 or labels.shape != (voxels.shape[0],):
            raise InputError(
                f"{path}: voxels must be (M, 3) and labels (M,), got {voxels.shape} and "
                f"{labels.shape}"
            )
        keys = pack_voxel_keys(torch.from_numpy(voxels.astype(np.int64))).numpy()
        order = np.argsort(keys)
        return cls(size, keys[order], labels.astype(np.int64)[order], tuple(names) or None)


def voxel_labels_from_frames(
    frames: Iterable[tuple[object, np.ndarray]],
    voxel_size_m: float,
    *,
    min_depth_m: float = 0.0,
    max_depth_m: float = math.inf,
    class_names: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
) -> VoxelLabels:
    """Voxel ground truth from labelled frames by back-projection and majority vote.

    Each labelled pixel (label > 0) with finite depth in [min_depth_m, max_depth_m] (and > 0) is
    lifted with K, moved to the world with T_world_cam and floored to its voxel in float32, as
    `EmbeddingIntegrator` does, so a surface gives the keys the map gives it. One vote per pixel.

    Args:
        frames: (frame, labels) pairs; frame has depth_m (H, W), K and T_world_cam (an
            `RGBDFrame`), labels is an (H, W) integer image, 0 = void, 1..K classes.
        voxel_size_m: the map's voxel edge in metres.
        min_depth_m: ignore closer pixels (use the map's setting to score what it could see).
        max_depth_m: ignore farther pixels.
        class_names: optional names stored with the result.
        size: (h, w) to sample depth and labels at, as the pipeline pairs depth with a network
            output of that size (`to_embedding_frame`: the pixel under each output pixel's
            centre, K scaled to match). Pass the embedding size so that the ground truth holds
            the voxels the map could observe; at full resolution it also holds voxels that no
            embedding pixel reaches, which `unmapped="miss"` then counts against the map.
            None: the labels' own resolution.

    Returns:
        The labelled voxels.

    Raises:
        InputError: a bad voxel size or `size`, a frame without pose, labels of another size
            than depth, non-integer or negative labels.
    """
    if not (isinstance(voxel_size_m, (int, float)) and 0.0 < voxel_size_m < math.inf):
        raise InputError(f"voxel_size_m must be a positive finite number, got {voxel_size_m!r}")
    if size is not None and not (
        len(size) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)
    ):
        raise InputError(f"size must be two positive integers (h, w), got {size!r}")
    all_keys, all_labels = [], []
    for index, (frame, labels) in enumerate(frames):
        keys, votes = _frame_votes(
            index, frame, labels, voxel_size_m, min_depth_m, max_depth_m, size
        )
        all_keys.append(keys)
        all_labels.append(votes)
    names = tuple(class_names) if class_names is not None else None
    if not all_keys or sum(len(k) for k in all_keys) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return VoxelLabels(float(voxel_size_m), empty, empty.copy(), names)
    keys, labels = _majority(np.concatenate(all_keys), np.concatenate(all_labels))
    return VoxelLabels(float(voxel_size_m), keys, labels, names)


def _frame_votes(
    index: int,
    frame: object,
    labels: np.ndarray,
    voxel_size_m: float,
    min_depth_m: float,
    max_depth_m: float,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the packed voxel key and label of every usable labelled pixel of one frame."""
    T = getattr(frame, "T_world_cam", None)
    if T is None:
        raise InputError(f"labelled frame {index} has no T_world_cam; it cannot be placed")
    depth = np.asarray(frame.depth_m, dtype=np.float32)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels of frame {index} must be integers, got dtype {labels.dtype}")
    if labels.shape != depth.shape:
        raise InputError(
            f"labels of frame {index} are {labels.shape} but its depth is {depth.shape}; "
            "label images must be registered to colour and depth at the same size"
        )
    if labels.size and labels.min() < 0:
        raise InputError(f"labels of frame {index} contain {labels.min()}; expected 0 (void)..K")
    K, T = check_intrinsics(frame.K), check_pose(T)
    if size is not None:  # the pixels an output of this size sees, as the pipeline samples them
        (H, W), (h, w) = depth.shape, size
        depth = sample_depth_at_centres(torch.from_numpy(depth), size).numpy()
        labels = sample_depth_at_centres(torch.from_numpy(labels.astype(np.int64)), size).numpy()
        K = scale_intrinsics(K, w / W, h / H)
    valid = (labels > 0) & np.isfinite(depth) & (depth > 0)
    valid &= (depth >= min_depth_m) & (depth <= max_depth_m)
    pixels = torch.from_numpy(np.flatnonzero(valid))
    points = transform_points(T, backproject_depth(torch.from_numpy(depth), K, pixels))
    voxels = torch.floor(points / voxel_size_m).to(torch.int64)
    in_range = ((voxels >= -MAX_VOXEL_INDEX) & (voxels < MAX_VOXEL_INDEX)).all(dim=1)
    keys = pack_voxel_keys(voxels[in_range]).numpy()
    return keys, labels.reshape(-1)[pixels.numpy()][in_range.numpy()].astype(np.int64)


def _majority(keys: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and the most voted label of each (ties: the smaller label)."""
    unique, inverse = np.unique(keys, return_inverse=True)
    num_labels = int(labels.max()) + 1
    votes = np.bincount(inverse * num_labels + labels, minlength=len(unique) * num_labels)
    return unique, votes.reshape(len(unique), num_labels).argmax(axis=1).astype(np.int64)


def voxel_labels_from_rendered(
    frames: Iterable[object], voxel_size_m: float, class_names: Sequence[str] | None = None
) -> VoxelLabels:
    """Voxel ground truth of synthetic frames from their exact hit points.

    Uses `simulation.voxel_label_majority` (scene label l becomes class id l + 1, so the scene's
    label_names are the class names in order).

    Args:
        frames: `RenderedFrame`s.
        voxel_size_m: voxel edge in metres.
        class_names: optional names stored with the result (e.g. scene.label_names).
    """
    from dve_perception.simulation import voxel_label_majority

    voxels, labels = voxel_label_majority(frames, voxel_size_m)
    keys = pack_voxel_keys(torch.from_numpy(voxels)).numpy()
    order = np.argsort(keys)
    names = tuple(class_names) if class_names is not None else None
    return VoxelLabels(float(voxel_size_m), keys[order], labels[order].astype(np.int64) + 1, names)
