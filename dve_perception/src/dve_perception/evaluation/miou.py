"""Confusion matrix and mIoU with the official protocol (dveformer-spec.md §6).

Labels follow the dataset layout: 0 is void, 1..K are the classes of classes.txt. Pixels whose
*target* is void are ignored; the others are counted in a K x K matrix whose row is the target
class and column the predicted class, both shifted down by one (class c is row/column c - 1).
Per-class IoU is TP / (TP + FP + FN). A class that appears neither in the targets nor in the
predictions has an empty union and IoU NaN; the mean IoU skips those classes (nanmean), as the
nicr/DVEFormer evaluation does, so classes absent from a split neither count as 0 nor as 1.
"""

from __future__ import annotations

import numpy as np
import torch

from dve_perception.errors import InputError

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Accumulate (prediction, target) pairs over valid pixels.

    Args:
        num_classes: K, the number of classes without void.

    Attributes:
        counts: (K, K) int64 tensor; counts[t - 1, p - 1] is the number of pixels of target
            class t predicted as p.
    """

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.counts = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch of pixels.

        Args:
            pred: predicted class ids 1..K, any shape (predictions at void targets may be
                anything, they are ignored).
            target: ground-truth class ids 0..K of the same shape, 0 = void.

        Raises:
            InputError: shapes differ, non-integer labels, a target outside 0..K or a
                prediction outside 1..K at a valid pixel.
        """
        pred_t, target_t = _as_labels(pred, "pred"), _as_labels(target, "target")
        if pred_t.shape != target_t.shape:
            raise InputError(
                f"pred has shape {tuple(pred_t.shape)} but target {tuple(target_t.shape)}; "
                "resize the prediction to the label size first"
            )
        k = self.num_classes
        bad_target = (target_t < 0) | (target_t > k)
        if bad_target.any():
            raise InputError(
                f"target has label(s) {_few(target_t[bad_target])} outside 0 (void)..{k}"
            )
        valid = target_t > 0
        pred_v, target_v = pred_t[valid], target_t[valid]
        bad_pred = (pred_v < 1) | (pred_v > k)
        if bad_pred.any():
            raise InputError(
                f"pred has class id(s) {_few(pred_v[bad_pred])} outside 1..{k} at valid pixels; "
                "predictions are argmax + 1 over the K classes"
            )
        flat = (target_v - 1) * k + (pred_v - 1)
        self.counts += torch.bincount(flat, minlength=k * k).reshape(k, k).to(self.counts.device)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Return a new matrix with the counts of both (e.g. from parallel workers).

        Raises:
            InputError: the class counts differ.
        """
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise InputError(
                f"cannot merge a {self.num_classes}-class confusion matrix with "
                f"{getattr(other, 'num_classes', type(other).__name__)!r}"
            )
        merged = ConfusionMatrix(self.num_classes)
        merged.counts = self.counts + other.counts
        return merged

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def iou(self) -> torch.Tensor:
        """Per-class IoU as a (K,) float64 tensor, NaN where a class has an empty union."""
        counts = self.counts.to(torch.float64)
        tp = counts.diagonal()
        union = counts.sum(dim=0) + counts.sum(dim=1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over classes with a non-empty union; NaN when nothing was counted."""
        iou = self.iou()
        present = ~iou.isnan()
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct valid pixels / valid pixels; NaN when nothing was counted."""
        total = int(self.counts.sum())
        return float(self.counts.diagonal().sum()) / total if total else float("nan")

    @property
    def valid_pixels(self) -> int:
        """How many non-void pixels were counted."""
        return int(self.counts.sum())


def _as_labels(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class ids, got dtype {tensor.dtype}")
    return tensor.detach().to("cpu", torch.int64).reshape(-1)


def _few(values: torch.Tensor) -> str:
    unique = torch.unique(values).tolist()
    return ", ".join(map(str, unique[:5])) + (
        f" and {len(unique) - 5} more" if len(unique) > 5 else ""
    )
