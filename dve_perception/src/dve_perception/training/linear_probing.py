"""Linear probing: a bias-free 1x1 head trained on frozen, L2-normalised DVEFormer embeddings.

The head is the official one (dveformer-spec.md §6): Conv2d(D→K, 1x1, bias=False) over unit
embeddings, its logits resized bilinearly to the label size, softmax/argmax. Training follows
the published recipe (frozen backbone, init from visual-mean prototypes, lr 1e-2, 50 epochs).
The official optimizer could not be read here; we use AdamW with a one-cycle schedule, the
optimizer and schedule of the official distillation recipe, and weight decay 0 so that the
head is not pulled away from its prototype initialisation for no reason.

The loss is cross-entropy over valid (non-void) pixels with the logits bilinearly resized to the
label size, not labels downsampled to the logits: this is exactly how `evaluate` scores the head
(`postprocess.segment`), so training optimises what is measured, and thin objects that nearest
downsampling would drop still contribute. Resizing K logit channels is cheap.

The backbone is frozen, so each sample is embedded once and its embedding (fp16) and labels are
kept in memory up to `cache_bytes`; samples beyond the limit are embedded again every epoch.
A reduced-res 768x120x160 fp16 embedding takes ~29 MB, so the default 4 GiB holds ~140 images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import ConfigError, InputError
from dve_perception.perception.postprocess import normalize_embedding

if TYPE_CHECKING:
    from dve_perception.datasets.rgbd_dataset import RGBDDataset
    from dve_perception.perception.pipeline import FrameEmbedder

__all__ = [
    "LINEAR_PROBING_KEY",
    "OPTIMIZERS",
    "EmbeddingCache",
    "LinearProbe",
    "LinearProbeConfig",
    "LinearProbeResult",
    "probe_loss",
    "prototypes_from_targets",
    "save_linear_probe",
    "train_linear_probe",
]

#: Key of the head's state in the published linear-probing file format.
LINEAR_PROBING_KEY = "linear_probing_head_state_dict"
OPTIMIZERS = ("adamw", "sgd")
_DEFAULT_CACHE_BYTES = 4 << 30


class LinearProbe(nn.Module):
    """Bias-free 1x1 convolution D→K applied to L2-normalised embeddings.

    Args:
        embedding_dim: D.
        num_classes: K, the dataset's classes without void.
    """

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ConfigError(
                f"a linear probe needs embedding_dim >= 1 and num_classes >= 1, got "
                f"{embedding_dim} and {num_classes}"
            )
        self.conv = nn.Conv2d(embedding_dim, num_classes, kernel_size=1, bias=False)

    @classmethod
    def from_prototypes(cls, prototypes: torch.Tensor) -> LinearProbe:
        """A probe whose weight is a copy of (K, D) or (K, D, 1, 1) class prototypes.

        Raises:
            InputError: prototypes that are not a floating (K, D[, 1, 1]) tensor.
        """
        weight = _as_matrix(prototypes, "prototypes")
        probe = cls(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            probe.conv.weight.copy_(weight[:, :, None, None])
        return probe

    @property
    def weight(self) -> torch.Tensor:
        """The head as a detached (K, D) float32 matrix (what `class_scores` takes)."""
        return self.conv.weight.detach()[:, :, 0, 0].float().cpu()

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) embeddings (normalised here) → (B, K, h, w) logits."""
        return self.conv(normalize_embedding(embedding.float(), dim=1))


@dataclass(frozen=True)
class LinearProbeConfig:
    """Training settings; defaults are the published recipe where it is known.

    Attributes:
        epochs: passes over the split (official: 50).
        lr: peak learning rate (official: 1e-2).
        batch_size: samples per optimizer step.
        optimizer: "adamw" (default, see the module docstring) or "sgd" (momentum 0.9).
        weight_decay: decoupled weight decay.
        seed: seed of the sample order.
        cache_bytes: memory for cached embeddings and labels; 0 re-embeds every epoch.
    """

    epochs: int = 50
    lr: float = 1e-2
    batch_size: int = 8
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    seed: int = 0
    cache_bytes: int = _DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer is {self.optimizer!r}, expected one of {OPTIMIZERS}")
        if self.weight_decay < 0 or self.cache_bytes < 0:
            raise ConfigError("weight_decay and cache_bytes must be >= 0")


@dataclass
class LinearProbeResult:
    """A trained probe and its per-epoch mean loss (first entry: after epoch 1)."""

    probe: LinearProbe
    losses: list[float] = field(default_factory=list)


class EmbeddingCache:
    """Frozen embeddings and labels per sample index, in memory up to a byte limit.

    Args:
        embedder: anything with `embed(frame) -> EmbeddingFrame`.
        dataset: the split (no augmentation: the backbone is frozen, so embeddings are fixed).
        cache_bytes: memory limit; samples that do not fit are embedded again when asked for.
    """

    def __init__(self, embedder: FrameEmbedder, dataset: RGBDDataset, cache_bytes: int) -> None:
        self.embedder, self.dataset, self.cache_bytes = embedder, dataset, cache_bytes
        self.used_bytes = 0
        self.embed_calls = 0
        self._store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ((D, h, w) float32 embedding, (H, W) int64 labels) of sample `index`."""
        if index in self._store:
            embedding, labels = self._store[index]
            return embedding.float(), labels.long()
        from dve_perception.evaluation.segmentation_eval import sample_frame

        sample = self.dataset[index]
        with torch.inference_mode():
            frame = self.embedder.embed(sample_frame(sample.rgb, sample.depth_mm, index))
        self.embed_calls += 1
        # Clone out of inference mode so autograd may use it; fp16 halves the cache.
        embedding = frame.embedding.detach().to("cpu", torch.float16).clone()
        labels = sample.semantic.to(torch.int16 if sample.semantic.max() < 2**15 else torch.int64)
        size = embedding.numel() * 2 + labels.numel() * labels.element_size()
        if self.used_bytes + size <= self.cache_bytes:
            self._store[index] = (embedding, labels)
            self.used_bytes += size
        return embedding.float(), sample.semantic.long()


def probe_loss(
    probe: LinearProbe, embedding: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of one sample over its valid pixels, and the valid pixel count.

    Args:
        probe: the head.
        embedding: (D, h, w) embedding (any scale; normalised by the probe).
        labels: (H, W) class ids, 0 = void (ignored), k ≥ 1 = class k (logit k − 1).

    Returns:
        The summed loss (0 without valid pixels) and the number of valid pixels.
    """
    logits = probe(embedding[None].to(probe.conv.weight.device))
    size = tuple(labels.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    target = labels.to(logits.device).long()[None] - 1  # void (0) becomes -1 = ignore_index
    loss = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
    return loss, int((target >= 0).sum())


def train_linear_probe(
    embedder: FrameEmbedder,
    dataset: RGBDDataset,
    init_prototypes: torch.Tensor,
    config: LinearProbeConfig | None = None,
    *,
    progress: Callable[[int, float], None] | None = None,
) -> LinearProbeResult:
    """Train a linear-probing head on a split's frozen embeddings.

    Args:
        embedder: the frozen network, e.g. a `PerceptionPipeline`.
        dataset: the training split, without augmentation.
        init_prototypes: (K, D) initial weight (visual-mean prototypes in the official recipe,
            or text prototypes), in the order of classes.txt.
        config: training settings.
        progress: called after every epoch with (epoch, mean loss).

    Returns:
        The trained probe (on the CPU) and its per-epoch losses.

    Raises:
        InputError: prototypes whose class count differs from the dataset's, a split without
            valid pixels, embeddings of another size than the prototypes, or a non-finite loss.
    """
    config = config or LinearProbeConfig()
    weight = _as_matrix(init_prototypes, "init_prototypes")
    if weight.shape[0] != dataset.num_classes:
        raise InputError(
            f"{weight.shape[0]} initial class vectors for a dataset with {dataset.num_classes} "
            "classes in classes.txt; give one per class, in that order, without void"
        )
    probe = LinearProbe.from_prototypes(weight)
    cache = EmbeddingCache(embedder, dataset, config.cache_bytes)
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    optimizer, scheduler = _optimizer(probe, config, steps_per_epoch * config.epochs)
    generator = torch.Generator().manual_seed(config.seed)
    result = LinearProbeResult(probe=probe)
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(dataset), generator=generator).tolist()
        total, pixels = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            loss, count = _batch_loss(probe, cache, order[start : start + config.batch_size])
            if count == 0:
                continue
            if not torch.isfinite(loss):
                raise InputError(
                    f"linear-probe loss became {loss.item()} in epoch {epoch}; check the "
                    "embeddings for NaN/inf (nothing was saved)"
                )
            optimizer.zero_grad(set_to_none=True)
            (loss / count).backward()
            optimizer.step()
            scheduler.step()
            total, pixels = total + loss.item(), pixels + count
        if pixels == 0:
            raise InputError(
                f"split '{dataset.split}' of {dataset.root} has no labelled (non-void) pixels"
            )
        result.losses.append(total / pixels)
        if progress is not None:
            progress(epoch, result.losses[-1])
    return result


def _batch_loss(
    probe: LinearProbe, cache: EmbeddingCache, indices: list[int]
) -> tuple[torch.Tensor, int]:
    # Samples may differ in size, so each is scored at its own label size and the sums pooled:
    # the mean over the batch's valid pixels, as one batched cross-entropy would give.
    losses, count = [], 0
    for index in indices:
        embedding, labels = cache[index]
        if embedding.shape[0] != probe.conv.in_channels:
            raise InputError(
                f"sample {index} has {embedding.shape[0]}-d embeddings but the prototypes are "
                f"{probe.conv.in_channels}-d; initialise from prototypes of this network"
            )
        loss, valid = probe_loss(probe, embedding, labels)
        losses.append(loss)
        count += valid
    return torch.stack(losses).sum(), count


def _optimizer(
    probe: LinearProbe, config: LinearProbeConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = probe.parameters()
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(total_steps, 1)
    )
    return optimizer, scheduler


def save_linear_probe(
    path: str | Path,
    probe: LinearProbe | torch.Tensor,
    *,
    epoch: int = 0,
    logs: dict | None = None,
) -> None:
    """Write a head in the published linear-probing format, atomically.

    The file is `torch.save({"linear_probing_head_state_dict": {"weight": (K, D, 1, 1)},
    "epoch": epoch, "logs": logs})`, read by `model.checkpoint.load_linear_probing_weights`
    (and so by `evaluate --linear-probing` and `sample --linear-probing`).

    Args:
        path: the output file; its folder is created.
        probe: a `LinearProbe` or a (K, D) weight.
        epoch: the epoch count to record.
        logs: plain numbers/strings/lists to record (e.g. the losses).
    """
    weight = probe.weight if isinstance(probe, LinearProbe) else _as_matrix(probe, "probe")
    state = {
        LINEAR_PROBING_KEY: {"weight": weight.float().contiguous()[:, :, None, None].clone()},
        "epoch": int(epoch),
        "logs": dict(logs or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        torch.save(state, file)


def prototypes_from_targets(
    targets_folder: str | Path,
    num_classes: int,
    text_prototypes: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Visual-mean prototypes from every `.npz` in a targets folder, with a text fallback.

    Compute the folder's targets for the training split only: every file in it is used.

    Args:
        targets_folder: e.g. `training.targets.targets_dir(dataset_root)`.
        num_classes: K.
        text_prototypes: returns (K, D) text prototypes; called only if some class has no
            segment in the targets, so the text encoder is loaded only when needed.

    Returns:
        (K, D) prototypes and the 1-based class ids that had no examples (text fallback, or zero
        rows without one).

    Raises:
        InputError: a missing folder or one without `.npz` files.
    """
    from dve_perception.training.targets import visual_mean_prototypes

    folder = Path(targets_folder)
    if not folder.is_dir():
        raise InputError(
            f"targets folder {folder} does not exist; compute the teacher targets of the "
            "training split first (expected <dataset>/targets/<teacher>/<id>.npz)"
        )
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise InputError(f"targets folder {folder} holds no .npz target files")
    prototypes = visual_mean_prototypes(files, num_classes)
    unseen = (prototypes.abs().sum(dim=1) == 0).nonzero().flatten()
    if len(unseen) and text_prototypes is not None:
        prototypes = visual_mean_prototypes(files, num_classes, text_prototypes())
    return prototypes, [int(i) + 1 for i in unseen]


def _as_matrix(value: object, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[-2:] == (1, 1):
        value = value[:, :, 0, 0]
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{name} must be a floating (K, D) tensor, got {shape}")
    if min(value.shape) < 1:
        raise InputError(f"{name} has shape {tuple(value.shape)}, expected K >= 1 and D >= 1")
    return value.detach().float().cpu()
