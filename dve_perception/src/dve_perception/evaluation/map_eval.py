"""3D evaluation of a voxel map against voxel ground truth: per-class voxel IoU of text queries.

Ground truth is a `VoxelLabels`: packed voxel keys (the map's own keying, `pack_voxel_keys` of
floor(p_world / voxel_size_m)) with class ids 1..K (0 = void, as in the dataset layout). It comes
from labelled frames (`voxel_labels_from_frames`: every labelled pixel with depth is
back-projected exactly as the integrator does and votes for its voxel; majority wins, ties go to
the smaller id) or, for the synthetic scene, from the exact hit points
(`voxel_labels_from_rendered`); both live in `evaluation.voxel_labels` and are re-exported here.

`evaluate_map` queries the map once per class name and scores two variants:

- threshold: P_c = voxels whose query score is >= the threshold (relevancy 0.5 by default, the
  query's own default), G_c = ground-truth voxels of class c, IoU_c = |P_c & G_c| / |P_c | G_c|.
- argmax: each voxel goes to the class whose text embedding has the highest cosine (the same as
  the highest relevancy: the hardest negative is shared by every class), giving a confusion matrix.

Only voxels in both the map and the ground truth are scored: map voxels without ground truth
(void or never labelled surfaces) are ignored, as void pixels are in 2D. Ground-truth voxels the
map lacks are ignored too by default (`unmapped="ignore"`: the IoU then measures what the map
says about what it saw); `unmapped="miss"` counts them as false negatives of their class, so the
IoU also pays for missing coverage. The counts of both kinds are always reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dve_perception.errors import InputError
from dve_perception.evaluation.miou import ConfusionMatrix
from dve_perception.evaluation.voxel_labels import (
    VoxelLabels,
    voxel_labels_from_frames,
    voxel_labels_from_rendered,
)
from dve_perception.mapping.embedding_map import EmbeddingMap
from dve_perception.mapping.query import CANONICAL_NEGATIVES
from dve_perception.mapping.text_query import TextEncoder

__all__ = [
    "MapEvaluation",
    "VoxelLabels",
    "evaluate_map",
    "voxel_labels_from_frames",
    "voxel_labels_from_rendered",
]

UNMAPPED_POLICIES = ("ignore", "miss")


@dataclass(frozen=True, eq=False)
class MapEvaluation:
    """Per-class voxel IoU of a map's text queries (see the module docstring).

    Attributes:
        class_names: the K queried names; index k is class id k + 1.
        threshold_iou: (K,) IoU of the thresholded query sets, NaN where the union is empty.
        argmax_iou: (K,) IoU of the argmax assignment, NaN where the union is empty.
        thresholds: (K,) the threshold each query used.
        score_name: "relevancy" (with negatives) or "cosine".
        confusion: argmax confusion matrix over the scored voxels (row: truth, column: argmax).
        gt_voxels: (K,) ground-truth voxels per class (mapped or not).
        gt_unmapped: (K,) of those, how many the map lacks.
        predicted_voxels: (K,) scored voxels above the threshold per class.
        map_voxels: voxels in the map.
        map_voxels_without_gt: map voxels ignored because they have no ground truth.
        unmapped: "ignore" or "miss" (how ground-truth voxels missing from the map count).
    """

    class_names: tuple[str, ...]
    threshold_iou: np.ndarray
    argmax_iou: np.ndarray
    thresholds: np.ndarray
    score_name: str
    confusion: ConfusionMatrix
    gt_voxels: np.ndarray
    gt_unmapped: np.ndarray
    predicted_voxels: np.ndarray
    map_voxels: int
    map_voxels_without_gt: int
    unmapped: str

    @property
    def threshold_miou(self) -> float:
        """Mean threshold IoU over classes with a non-empty union (NaN if none)."""
        return _nanmean(self.threshold_iou)

    @property
    def argmax_miou(self) -> float:
        """Mean argmax IoU over classes with a non-empty union (NaN if none)."""
        return _nanmean(self.argmax_iou)

    @property
    def scored_voxels(self) -> int:
        """Voxels in both the map and the ground truth."""
        return self.confusion.valid_pixels

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (NaN becomes None)."""
        per_class = [
            {
                "class": name,
                "threshold_iou": _json_float(self.threshold_iou[k]),
                "argmax_iou": _json_float(self.argmax_iou[k]),
                "threshold": float(self.thresholds[k]),
                "gt_voxels": int(self.gt_voxels[k]),
                "gt_unmapped": int(self.gt_unmapped[k]),
                "predicted_voxels": int(self.predicted_voxels[k]),
            }
            for k, name in enumerate(self.class_names)
        ]
        return {
            "threshold_miou": _json_float(self.threshold_miou),
            "argmax_miou": _json_float(self.argmax_miou),
            "score": self.score_name,
            "unmapped": self.unmapped,
            "map_voxels": self.map_voxels,
            "scored_voxels": self.scored_voxels,
            "map_voxels_without_gt": self.map_voxels_without_gt,
            "gt_voxels_unmapped": int(self.gt_unmapped.sum()),
            "classes": per_class,
            "confusion": self.confusion.counts.tolist(),
        }

    def format_table(self) -> str:
        """Human-readable per-class table and summary."""
        width = max(12, *(len(n) for n in self.class_names))
        lines = [
            f"{'class':<{width}}  thr-IoU  argmax-IoU  GT voxels  unmapped  predicted",
        ]
        for k, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}  {_pct(self.threshold_iou[k]):>7}  {_pct(self.argmax_iou[k]):>10}"
                f"  {self.gt_voxels[k]:>9}  {self.gt_unmapped[k]:>8}  {self.predicted_voxels[k]:>9}"
            )
        lines.append(
            f"{'mIoU':<{width}}  {_pct(self.threshold_miou):>7}  {_pct(self.argmax_miou):>10}"
        )
        lines.append(
            f"score {self.score_name}; {self.scored_voxels} of {self.map_voxels} map voxels "
            "scored, "
            f"{self.map_voxels_without_gt} without ground truth ignored; "
            f"{int(self.gt_unmapped.sum())} ground-truth voxels not in the map "
            f"({'counted as misses' if self.unmapped == 'miss' else 'ignored'})"
        )
        return "\n".join(lines)


def evaluate_map(
    emap: EmbeddingMap,
    encoder: TextEncoder,
    class_names: Sequence[str],
    ground_truth: VoxelLabels,
    *,
    threshold: float | None = None,
    negatives: Sequence[str] = CANONICAL_NEGATIVES,
    unmapped: str = "ignore",
) -> MapEvaluation:
    """Score the map's text queries for each class against voxel ground truth.

    Args:
        emap: the map.
        encoder: text encoder of the map's embedding space; it applies its prompt template
            (CLIPTextEncoder: "a detailed photo of a {}") to the class names, as `query_text` does.
        class_names: K names; ground-truth id k + 1 is class_names[k].
        ground_truth: voxel labels with the map's voxel size.
        threshold: score threshold; None takes the query default (relevancy 0.5, or the cosine
            midpoint between the median and best voxel without negatives).
        negatives: negative phrases for relevancy (a class's own name is left out of its query);
            () scores by cosine.
        unmapped: "ignore" or "miss" for ground-truth voxels the map lacks.

    Returns:
        The evaluation.

    Raises:
        InputError: bad class names, a ground truth of another voxel size or with labels outside
            1..K, an unknown `unmapped` policy, or a negative given as one string.
    """
    names = _check_inputs(emap, class_names, ground_truth, unmapped, negatives)
    k = len(names)
    phrases = [p for p in dict.fromkeys(negatives)]
    vectors = encoder.encode([*names, *phrases])
    cosines, predicted, thresholds, score_name = [], [], np.zeros(k), "cosine"
    keys = None
    for c, name in enumerate(names):
        keep = [k + i for i, p in enumerate(phrases) if p.strip() != name.strip()]
        result = emap.query(vectors[c], negatives=vectors[keep], top_k=0, threshold=threshold)
        keys = result.keys
        cosines.append(result.cosine)
        predicted.append(result.scores >= result.threshold)
        thresholds[c], score_name = result.threshold, result.score_name
    # Match ground-truth voxels to map rows (map keys are unsorted storage order).
    gt_row = _find_rows(keys, ground_truth.keys)
    mapped = gt_row >= 0
    rows, truth = gt_row[mapped], ground_truth.labels[mapped]
    gt_voxels = np.bincount(ground_truth.labels - 1, minlength=k)
    gt_unmapped = np.bincount(ground_truth.labels[~mapped] - 1, minlength=k)
    misses = gt_unmapped if unmapped == "miss" else np.zeros(k, dtype=np.int64)
    threshold_iou, predicted_count = np.zeros(k), np.zeros(k, dtype=np.int64)
    for c in range(k):
        pred = predicted[c][rows]
        is_c = truth == c + 1
        predicted_count[c] = int(pred.sum())
        inter, union = int((pred & is_c).sum()), int((pred | is_c).sum()) + int(misses[c])
        threshold_iou[c] = inter / union if union else math.nan
    confusion = ConfusionMatrix(k)
    if len(rows):
        argmax = np.stack(cosines)[:, rows].argmax(axis=0) + 1
        confusion.update(argmax.astype(np.int64), truth)
    counts = confusion.counts.numpy().astype(np.float64)
    tp = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - tp + misses
    argmax_iou = np.where(union > 0, tp / np.maximum(union, 1), math.nan)
    n = 0 if keys is None else len(keys)
    return MapEvaluation(
        tuple(names),
        threshold_iou,
        argmax_iou,
        thresholds,
        score_name,
        confusion,
        gt_voxels,
        gt_unmapped,
        predicted_count,
        n,
        n - len(rows),
        unmapped,
    )


def _check_inputs(
    emap: EmbeddingMap,
    class_names: Sequence[str],
    ground_truth: VoxelLabels,
    unmapped: str,
    negatives: Sequence[str],
) -> list[str]:
    if isinstance(class_names, str) or not class_names:
        raise InputError(f"class_names must be a non-empty list of names, got {class_names!r}")
    names = list(class_names)
    if any(not isinstance(n, str) or not n.strip() for n in names) or len(set(names)) < len(names):
        raise InputError(f"class names must be unique non-blank strings, got {names}")
    if isinstance(negatives, str):
        raise InputError("negatives must be a list of phrases, not a single string")
    if unmapped not in UNMAPPED_POLICIES:
        raise InputError(f"unmapped must be one of {UNMAPPED_POLICIES}, got {unmapped!r}")
    if not isinstance(ground_truth, VoxelLabels):
        raise InputError(f"ground_truth must be VoxelLabels, got {type(ground_truth).__name__}")
    if not math.isclose(ground_truth.voxel_size_m, emap.voxel_size_m, rel_tol=1e-9):
        raise InputError(
            f"the ground truth has {ground_truth.voxel_size_m} m voxels but the map "
            f"{emap.voxel_size_m} m; build the ground truth with the map's voxel size"
        )
    labels = ground_truth.labels
    if len(labels) and (labels.min() < 1 or labels.max() > len(names)):
        bad = sorted(set(labels[(labels < 1) | (labels > len(names))].tolist()))[:5]
        raise InputError(
            f"ground-truth labels {bad} are outside 1..{len(names)} (the {len(names)} class names)"
        )
    return names


def _find_rows(map_keys: np.ndarray | None, keys: np.ndarray) -> np.ndarray:
    """Row of each key in map_keys, -1 where absent."""
    if map_keys is None or len(map_keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    order = np.argsort(map_keys)
    pos = np.clip(np.searchsorted(map_keys, keys, sorter=order), 0, len(order) - 1)
    rows = order[pos]
    return np.where(map_keys[rows] == keys, rows, -1)


def _nanmean(values: np.ndarray) -> float:
    present = ~np.isnan(values)
    return float(values[present].mean()) if present.any() else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(float(value)) else round(float(value), 6)


def _pct(value: float) -> str:
    return "-" if math.isnan(float(value)) else f"{100 * float(value):.1f}"
