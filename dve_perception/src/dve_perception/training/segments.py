"""Panoptic segments from ground-truth semantic and instance images, merged naively.

DVEFormer's teacher embeds every ground-truth segment separately (dveformer-spec.md §7). A
segment is one (class, instance) pair of a thing class; every stuff class (listed by the caller,
or any pixel without an instance id) is one segment per image. Void pixels belong to no segment.
"Naive" merging means no overlap resolution or size filtering: the ground truth is taken as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from dve_perception.errors import InputError

__all__ = ["Segments", "panoptic_segments"]


class Segments(NamedTuple):
    """Segments of one image.

    Attributes:
        segment_ids: (H, W) int32; 0 = void/no segment, k ≥ 1 = segment k.
        class_ids: (S,) int32; segment k has semantic class `class_ids[k - 1]`.
    """

    segment_ids: np.ndarray
    class_ids: np.ndarray


def _as_label_image(name: str, image: Any) -> np.ndarray:
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"{name} image has shape {array.shape} and dtype {array.dtype}, expected a 2-D "
            "integer label image"
        )
    if array.size and array.min() < 0:
        raise InputError(f"{name} image has negative label {array.min()}, expected ids >= 0")
    return array.astype(np.int64, copy=False)


def panoptic_segments(
    semantic: Any,
    instance: Any | None = None,
    *,
    stuff_classes: Iterable[int] = (),
    void_class: int = 0,
) -> Segments:
    """Split an image into panoptic segments.

    Args:
        semantic: (H, W) integer class ids (numpy array or torch tensor).
        instance: (H, W) integer instance ids, 0 = no instance; None treats every class as stuff.
            Instance ids need only be unique within a class: the same id in two classes gives
            two segments.
        stuff_classes: class ids that always form one segment per image, whatever their
            instance ids (walls, floor, ...).
        void_class: the class id of unlabelled pixels, which belong to no segment.

    Returns:
        The segment-id image and per-segment classes, segments ordered by (class, instance).

    Raises:
        InputError: non-2-D or non-integer images, negative ids, or differing sizes.
    """
    sem = _as_label_image("semantic", semantic)
    if instance is None:
        inst = np.zeros_like(sem)
    else:
        inst = _as_label_image("instance", instance)
        if inst.shape != sem.shape:
            raise InputError(
                f"instance image is {inst.shape}, semantic image is {sem.shape}; expected the "
                "same size"
            )
    stuff = np.asarray(sorted(set(stuff_classes)), dtype=np.int64)
    # Stuff pixels and pixels without an instance id collapse to instance 0: one per class.
    inst = np.where(np.isin(sem, stuff), 0, inst)
    valid = sem != void_class
    stride = int(inst.max(initial=0)) + 1
    keys = sem[valid] * stride + inst[valid]
    unique, inverse = np.unique(keys, return_inverse=True)
    segment_ids = np.zeros(sem.shape, dtype=np.int32)
    segment_ids[valid] = inverse.reshape(-1).astype(np.int32) + 1
    return Segments(segment_ids, (unique // stride).astype(np.int32))
