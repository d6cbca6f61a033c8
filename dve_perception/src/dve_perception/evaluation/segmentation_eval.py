"""2D segmentation mIoU of DVEFormer embeddings on a dataset in the documented layout.

The three official protocols differ only in the class vectors (dveformer-spec.md §6):
"text" (CLIP text prototypes of "a detailed photo of a {}"), "visual_mean" (visual-mean
prototypes from teacher targets) and "linear_probing" (the weight of a bias-free 1x1 head, used
without normalisation). For each sample the embedder's unit embeddings are scored with
`postprocess.class_scores`, the scores resized bilinearly to the label size and argmaxed
(`postprocess.segment`); class index k becomes label k + 1 and void targets are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.errors import InputError
from dve_perception.evaluation.miou import ConfusionMatrix
from dve_perception.frames import RGBDFrame
from dve_perception.perception.postprocess import class_scores, segment

if TYPE_CHECKING:
    from dve_perception.perception.pipeline import FrameEmbedder

__all__ = [
    "MODES",
    "SegmentationResult",
    "evaluate_segmentation",
    "read_prototypes_file",
    "sample_frame",
]

#: The evaluation protocols; only "linear_probing" uses its class vectors unnormalised.
MODES = ("text", "visual_mean", "linear_probing")


@dataclass(frozen=True)
class SegmentationResult:
    """The outcome of one evaluation.

    Attributes:
        mode: the protocol.
        class_names: the dataset's classes (label i is class_names[i - 1]).
        matrix: the accumulated confusion matrix.
    """

    mode: str
    class_names: tuple[str, ...]
    matrix: ConfusionMatrix

    @property
    def miou(self) -> float:
        """Mean IoU over the classes present in targets or predictions."""
        return self.matrix.miou()

    def to_dict(self) -> dict:
        """Return a JSON-ready summary (NaN IoUs become None)."""
        iou = self.matrix.iou().tolist()
        return {
            "mode": self.mode,
            "miou": _none_if_nan(self.miou),
            "pixel_accuracy": _none_if_nan(self.matrix.pixel_accuracy()),
            "valid_pixels": self.matrix.valid_pixels,
            "iou": {name: _none_if_nan(v) for name, v in zip(self.class_names, iou, strict=True)},
        }

    def format_table(self) -> str:
        """Return per-class IoU lines followed by the mIoU, in percent."""
        width = max(len(name) for name in self.class_names)
        lines = [
            f"{name:<{width}}  " + ("   n/a" if math.isnan(v) else f"{100 * v:6.2f}")
            for name, v in zip(self.class_names, self.matrix.iou().tolist(), strict=True)
        ]
        lines.append(f"{'mIoU':<{width}}  {100 * self.miou:6.2f}  ({self.mode})")
        return "\n".join(lines)


def sample_frame(rgb: torch.Tensor, depth_mm: torch.Tensor, index: int) -> RGBDFrame:
    """Turn one unbatched sample into the pipeline's frame type.

    The dataset has no intrinsics and the embeddings do not depend on them, so K is a nominal
    pinhole at the image centre. `stamp_ns` carries the sample index, which lets test oracles
    look up the sample they are asked about.
    """
    height, width = int(rgb.shape[-2]), int(rgb.shape[-1])
    K = np.array([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])
    return RGBDFrame(
        rgb=rgb.permute(1, 2, 0).contiguous().numpy(),
        depth_m=(depth_mm[0].to(torch.float32) / 1000.0).numpy(),
        K=K,
        stamp_ns=index,
    )


def evaluate_segmentation(
    embedder: FrameEmbedder,
    dataset: RGBDDataset,
    prototypes: torch.Tensor,
    *,
    mode: str,
    limit: int | None = None,
) -> SegmentationResult:
    """Compute the confusion matrix of a model's segmentation over a dataset split.

    Args:
        embedder: anything with `embed(frame) -> EmbeddingFrame`, e.g. a `PerceptionPipeline`
            from `perception.pipeline_setup.build_pipeline`.
        dataset: the split to evaluate, without augmentation.
        prototypes: (K, D) or (K, D, 1, 1) class vectors in the order of classes.txt.
        mode: one of `MODES`.
        limit: evaluate only the first `limit` samples (for quick checks).

    Returns:
        The result with its confusion matrix.

    Raises:
        InputError: an unknown mode, or prototypes whose class count differs from the
            dataset's, or (from the embedder) frames it cannot take.
    """
    if mode not in MODES:
        raise InputError(f"unknown evaluation mode {mode!r}; expected one of {list(MODES)}")
    if not isinstance(prototypes, torch.Tensor) or prototypes.ndim not in (2, 4):
        raise InputError(f"prototypes must be a (K, D) tensor, got {type(prototypes).__name__}")
    if prototypes.shape[0] != dataset.num_classes:
        raise InputError(
            f"{prototypes.shape[0]} class vectors for a dataset with {dataset.num_classes} "
            f"classes in classes.txt; give one per class, in that order, without void"
        )
    matrix = ConfusionMatrix(dataset.num_classes)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        sample = dataset[index]
        embedding = embedder.embed(sample_frame(sample.rgb, sample.depth_mm, index)).embedding
        scores = class_scores(
            embedding[None].float(), prototypes, normalize_prototypes=mode != "linear_probing"
        )
        labels = segment(scores, tuple(sample.semantic.shape)).labels[0]
        matrix.update(labels.cpu() + 1, sample.semantic)
    return SegmentationResult(mode=mode, class_names=tuple(dataset.class_names), matrix=matrix)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def read_prototypes_file(path: str | Path) -> torch.Tensor:
    """Read a (K, D) prototype matrix from a .npy file or a tensor saved with `torch.save`.

    Raises:
        InputError: the file is missing, unreadable or does not hold a 2-D float matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prototype file {path} does not exist; expected a .pt or .npy file")
    try:
        if path.suffix == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise InputError(f"cannot read prototype file {path}: {err}") from err
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        raise InputError(
            f"prototype file {path} must hold one (K, D) float tensor, got "
            f"{getattr(value, 'shape', type(value).__name__)}"
        )
    return value.float()
