"""Distillation targets from the Alpha-CLIP teacher, stored compactly, and visual-mean prototypes.

For every ground-truth segment s of an image the teacher embeds the image with the segment's
mask as alpha; the whole image is embedded with an all-ones mask. The per-pixel target is
(dveformer-spec.md §7)

    target_s = normalise(normalise(seg_emb_s) − α · normalise(img_emb)),   α = 0.65,

and void pixels are ignored. Since a target is constant over its segment, a sample is stored as
one vector per segment plus a segment-id image (`SegmentTargets`), not as a dense 768-channel
map: `<dataset>/targets/<teacher-name>/<id>.npz`. The stored vectors are the *normalised
segment embeddings* (float16), with the normalised image embedding and α beside them, so the
targets (`target_vectors`) and the visual-mean prototypes (§6) can both be derived from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import InputError
from dve_perception.training.alpha_clip import preprocess_alpha, preprocess_rgb
from dve_perception.training.segments import Segments, panoptic_segments

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TEACHER_NAME",
    "SegmentTargets",
    "compute_sample_targets",
    "compute_targets",
    "dense",
    "embed_segments",
    "load_targets",
    "save_targets",
    "target_vectors",
    "targets_dir",
    "visual_mean_prototypes",
]

DEFAULT_ALPHA = 0.65  # --dense-visual-embedding-diff-factor
DEFAULT_TEACHER_NAME = "alpha_clip_l14_336_grit_20m"
_FORMAT = "dve_perception.segment_targets"
_VERSION = 1
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class SegmentTargets:
    """The teacher's view of one sample.

    Attributes:
        segment_ids: (H, W) int32, 0 = void, k ≥ 1 = segment k.
        vectors: (S, D) float16 normalised segment embeddings; row k−1 belongs to segment k.
        class_ids: (S,) int32 semantic class of each segment.
        image_vector: (D,) float16 normalised full-image embedding.
        alpha: weight of the image embedding subtracted from each segment embedding.
        teacher: name of the teacher that produced the vectors.
    """

    segment_ids: np.ndarray
    vectors: np.ndarray
    class_ids: np.ndarray
    image_vector: np.ndarray
    alpha: float = DEFAULT_ALPHA
    teacher: str = DEFAULT_TEACHER_NAME

    def __post_init__(self) -> None:
        s = self.vectors.shape[0] if self.vectors.ndim == 2 else -1
        ok = (
            self.segment_ids.ndim == 2
            and self.vectors.ndim == 2
            and self.class_ids.shape == (s,)
            and self.image_vector.shape == (self.vectors.shape[1],)
            and int(self.segment_ids.min(initial=0)) >= 0
            and int(self.segment_ids.max(initial=0)) <= s
        )
        if not ok:
            raise InputError(
                f"inconsistent segment targets: segment_ids {self.segment_ids.shape} (max "
                f"{int(self.segment_ids.max(initial=0))}), vectors {self.vectors.shape}, class_ids "
                f"{self.class_ids.shape}, image_vector {self.image_vector.shape}; expected ids "
                "0..S, (S, D), (S,), (D,)"
            )


def target_vectors(targets: SegmentTargets) -> torch.Tensor:
    """Per-segment targets normalise(seg − α·img) as an (S, D) float32 tensor."""
    seg = torch.from_numpy(targets.vectors.astype(np.float32))
    img = torch.from_numpy(targets.image_vector.astype(np.float32))
    return F.normalize(seg - targets.alpha * img, dim=-1)


def dense(targets: SegmentTargets, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Expand the targets to a (D, h, w) float32 map; void pixels get the zero vector.

    Args:
        targets: one sample's targets.
        size: (h, w) of the map; None = the segment-id image's size. Smaller sizes (the 1/4
            targets of the reduced-res model) take segment ids by nearest-neighbour
            downscaling, so each output pixel carries one segment's target, never a blend.

    Returns:
        (D, h, w) float32; zero vectors mark pixels the loss must ignore.
    """
    ids = torch.from_numpy(targets.segment_ids.astype(np.int64))
    if size is not None and tuple(size) != tuple(ids.shape):
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"size is {size}, expected (height, width) with both >= 1")
        # float32 holds integer ids exactly up to 2^24, far beyond any segment count.
        ids = F.interpolate(ids[None, None].float(), size=tuple(size), mode="nearest")
        ids = ids[0, 0].long()
    table = torch.cat([torch.zeros(1, targets.vectors.shape[1]), target_vectors(targets)])
    return table[ids].permute(2, 0, 1).contiguous()


def save_targets(path: str | Path, targets: SegmentTargets) -> None:
    """Write one sample's targets as an `.npz` (no pickled objects) atomically."""
    header = {
        "format": _FORMAT,
        "version": _VERSION,
        "teacher": targets.teacher,
        "alpha": float(targets.alpha),
        "size": list(targets.segment_ids.shape),
        "embedding_dim": int(targets.vectors.shape[1]),
    }
    with atomic_write(path, durable=False) as file:  # recomputable cache: no fsync
        np.savez_compressed(
            file,
            header=np.array(json.dumps(header)),
            segment_ids=targets.segment_ids.astype(np.int32),
            vectors=targets.vectors.astype(np.float16),
            class_ids=targets.class_ids.astype(np.int32),
            image_vector=targets.image_vector.astype(np.float16),
        )


def load_targets(path: str | Path) -> SegmentTargets:
    """Read a file written by `save_targets`.

    Raises:
        InputError: missing, unreadable or foreign file, or inconsistent contents.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            arrays = {k: data[k] for k in ("segment_ids", "vectors", "class_ids", "image_vector")}
    except (OSError, KeyError, ValueError) as err:
        raise InputError(
            f"{path} is not a readable segment-targets file ({err}); expected an .npz written "
            "by compute_targets"
        ) from err
    if header.get("format") != _FORMAT or header.get("version") != _VERSION:
        raise InputError(
            f"{path} has format {header.get('format')!r} version {header.get('version')!r}, "
            f"expected {_FORMAT!r} version {_VERSION}"
        )
    return SegmentTargets(**arrays, alpha=float(header["alpha"]), teacher=str(header["teacher"]))


def targets_dir(dataset_root: str | Path, teacher_name: str = DEFAULT_TEACHER_NAME) -> Path:
    """Where a dataset's targets for one teacher live: `<dataset>/targets/<teacher-name>/`."""
    return Path(dataset_root) / "targets" / teacher_name


@torch.inference_mode()
def embed_segments(
    teacher: torch.nn.Module,
    rgb: torch.Tensor,
    segment_ids: torch.Tensor | np.ndarray,
    num_segments: int,
    *,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed each segment (mask as alpha) and the whole image (all-ones mask) with the teacher.

    Args:
        teacher: an `AlphaCLIPVisionTransformer` (any module with `forward(image, alpha)` and a
            `config.image_size`).
        rgb: (3, H, W) uint8 image.
        segment_ids: (H, W) ids 0..num_segments.
        num_segments: S.
        batch_size: segments per teacher call.

    Returns:
        (S, D) normalised segment embeddings and the (D,) normalised image embedding, float32.
    """
    if batch_size < 1:
        raise InputError(f"batch_size is {batch_size}, expected >= 1")
    param = next(teacher.parameters())
    size = teacher.config.image_size
    image = preprocess_rgb(rgb, size).to(param.device)
    ids = torch.as_tensor(np.asarray(segment_ids)).to(param.device)
    full = preprocess_alpha(torch.ones_like(ids, dtype=torch.bool), size)
    img_emb = teacher(image, full).float()[0]
    chunks = []
    for start in range(1, num_segments + 1, batch_size):
        k = torch.arange(start, min(start + batch_size, num_segments + 1), device=ids.device)
        masks = ids[None] == k[:, None, None]
        alpha = preprocess_alpha(masks, size)
        chunks.append(teacher(image.expand(len(k), -1, -1, -1), alpha).float())
    seg = torch.cat(chunks) if chunks else torch.zeros(0, img_emb.shape[0], device=ids.device)
    return F.normalize(seg, dim=-1).cpu(), F.normalize(img_emb, dim=-1).cpu()


def compute_sample_targets(
    rgb: Any,
    segments: Segments,
    teacher: torch.nn.Module,
    *,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 8,
    teacher_name: str = DEFAULT_TEACHER_NAME,
) -> SegmentTargets:
    """Targets of one image from its segments (see `segments.panoptic_segments`).

    Raises:
        InputError: the image and the segment-id image differ in size, or rgb is not (3, H, W).
    """
    rgb = torch.as_tensor(np.asarray(rgb)) if not isinstance(rgb, torch.Tensor) else rgb
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise InputError(f"rgb has shape {tuple(rgb.shape)}, expected (3, H, W)")
    if tuple(rgb.shape[1:]) != segments.segment_ids.shape:
        raise InputError(
            f"rgb is {tuple(rgb.shape[1:])} but the label images are "
            f"{segments.segment_ids.shape}; expected the same size"
        )
    seg, img = embed_segments(
        teacher, rgb, segments.segment_ids, len(segments.class_ids), batch_size=batch_size
    )
    return SegmentTargets(
        segment_ids=segments.segment_ids.astype(np.int32),
        vectors=seg.numpy().astype(np.float16),
        class_ids=segments.class_ids.astype(np.int32),
        image_vector=img.numpy().astype(np.float16),
        alpha=alpha,
        teacher=teacher_name,
    )


def compute_targets(
    dataset: Sequence[Any],
    teacher: torch.nn.Module,
    out_dir: str | Path,
    *,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 8,
    teacher_name: str = DEFAULT_TEACHER_NAME,
    stuff_classes: Iterable[int] = (),
    void_class: int = 0,
) -> list[Path]:
    """Compute and save the targets of every sample as `<out_dir>/<sample.id>.npz`.

    Args:
        dataset: samples with `.id`, `.rgb` (3, H, W) uint8, `.semantic` (H, W) and
            `.instance` (H, W) or None (e.g. `datasets.rgbd_dataset.RGBDDataset(root, split)`).
        teacher: the Alpha-CLIP vision tower, in eval mode, on the device to use.
        out_dir: usually `targets_dir(dataset_root, teacher_name)`; created if missing.
        alpha: image-embedding weight α.
        batch_size: segments per teacher call.
        teacher_name: recorded in every file.
        stuff_classes: class ids with one segment per image.
        void_class: class id of ignored pixels.

    Returns:
        The written files, in dataset order.

    Raises:
        InputError: a sample id that is not a plain file name, or bad sample images.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stuff = tuple(stuff_classes)
    written = []
    for sample in dataset:
        sample_id = str(sample.id)
        if not _SAFE_ID.match(sample_id) or sample_id in (".", ".."):
            raise InputError(
                f"sample id {sample_id!r} cannot be a file name; expected letters, digits, "
                "'_', '-', '.'"
            )
        segments = panoptic_segments(
            sample.semantic, sample.instance, stuff_classes=stuff, void_class=void_class
        )
        targets = compute_sample_targets(
            sample.rgb,
            segments,
            teacher,
            alpha=alpha,
            batch_size=batch_size,
            teacher_name=teacher_name,
        )
        path = out / f"{sample_id}.npz"
        save_targets(path, targets)
        written.append(path)
    return written


def visual_mean_prototypes(
    target_files: Iterable[str | Path],
    num_classes: int,
    text_fallback: torch.Tensor | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> torch.Tensor:
    """Visual-mean class prototypes (dveformer-spec.md §6).

    Prototype c = normalise(mean over segments of c of the normalised segment embeddings −
    α · mean of the normalised image embeddings of the images those segments come from). The
    image mean is taken per segment, so an image with two segments of c counts twice.
    Semantic class ids are 1..num_classes with 0 = void; row c−1 holds class c, the dataset's
    label order without void.

    Args:
        target_files: `.npz` files from `compute_targets` (the training split).
        num_classes: classes without void.
        text_fallback: (num_classes, D) text embeddings for classes without any segment.
        alpha: image-embedding weight α.

    Returns:
        (num_classes, D) float32, rows L2-normalised; rows of unseen classes are the
        normalised text embedding, or zero without a fallback.

    Raises:
        InputError: no files, mixed embedding sizes, or a fallback of the wrong shape.
    """
    seg_sum: torch.Tensor | None = None
    img_sum: torch.Tensor | None = None
    counts = torch.zeros(num_classes)
    for path in target_files:
        t = load_targets(path)
        if seg_sum is None:
            seg_sum = torch.zeros(num_classes, t.vectors.shape[1])
            img_sum = torch.zeros_like(seg_sum)
        if t.vectors.shape[1] != seg_sum.shape[1]:
            raise InputError(
                f"{path} has {t.vectors.shape[1]}-d embeddings, earlier files "
                f"{seg_sum.shape[1]}-d; expected one teacher"
            )
        rows = torch.from_numpy(t.class_ids.astype(np.int64)) - 1
        keep = (rows >= 0) & (rows < num_classes)
        seg = torch.from_numpy(t.vectors.astype(np.float32))[keep]
        seg_sum.index_add_(0, rows[keep], seg)
        img = torch.from_numpy(t.image_vector.astype(np.float32))
        img_sum.index_add_(0, rows[keep], img.expand(int(keep.sum()), -1))
        counts.index_add_(0, rows[keep], torch.ones(int(keep.sum())))
    if seg_sum is None or img_sum is None:
        raise InputError("no target files given; expected the training split's .npz files")
    seen = counts > 0
    prototypes = torch.zeros_like(seg_sum)
    mean_seg = seg_sum[seen] / counts[seen, None]
    mean_img = img_sum[seen] / counts[seen, None]
    prototypes[seen] = F.normalize(mean_seg - alpha * mean_img, dim=-1)
    if text_fallback is not None:
        if tuple(text_fallback.shape) != tuple(prototypes.shape):
            raise InputError(
                f"text_fallback has shape {tuple(text_fallback.shape)}, expected "
                f"{tuple(prototypes.shape)}"
            )
        prototypes[~seen] = F.normalize(text_fallback[~seen].float(), dim=-1)
    return prototypes
