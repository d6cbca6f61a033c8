"""The trainer's optional loss terms, built from the config and computed per batch.

`DistillationTerms` owns the learnable parts that train with the student but are *not* part of
the student (and so never enter the official checkpoint; the trainer keeps them in
`resume.pth`):

- TransKD (`transkd_weight > 0`): `PatchEmbeddingAlignment` from the student's four encoder
  stage outputs to the live teacher's tokens at four depths (`features.teacher_layers`), stage
  weights alpha = (0.1, 0.1, 0.5, 1). The projected student map is resized to the teacher's
  square token grid, which covers the whole crop (the teacher sees it stretched to a square).
- CKA (`cka_weight > 0`): `CKALoss` with `FeatureRecalibration` between the student's last
  stage (stride 32, resized bilinearly to the teacher grid so rows describe the same image
  regions) and the teacher's final-block tokens.
- Extra teachers (`teacher_names[1:]`): a 1x1 convolution head per teacher from the student's
  raw embedding (D) to that teacher's target width, trained with the cosine loss on that
  teacher's stored targets.
- DKD (`dkd_weight > 0`): decoupled logit distillation for a closed-set head over the
  dataset's K classes (`closed_set_dkd`). Student logits are `dkd_logit_scale` x the cosine
  between the student's embedding and the user's (K, D) prototypes (`dkd_prototypes`); teacher
  logits are the same with the (main) dense target embedding; the class is the semantic label
  (void ignored) sampled at output pixel centres. With `dkd_dynamic_weights`, the KL summands
  get `kd_losses.teacher_confidence_weights`. The prototypes are a frozen, non-persistent
  buffer: a learnable head could lower the term by moving itself instead of the student (or
  by shrinking both logit sets towards uniform), and freezing it keeps resume unchanged.
- Proxy (`proxy_checkpoint`): a frozen DVEFormer whose normalised output (area-averaged and
  renormalised to the student's output size) replaces the stored main targets, on pixels that
  are not void in the semantic labels.

The live teacher and the proxy are frozen and held outside the module tree, so `parameters()`
and `state_dict()` contain only the learnable parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dve_perception.errors import ConfigError, InputError
from dve_perception.model.dveformer import DVEFormer
from dve_perception.perception.postprocess import (
    class_scores,
    downsample_unit_embedding,
    normalize_embedding,
)
from dve_perception.training.alpha_clip import AlphaCLIPVisionTransformer
from dve_perception.training.dkd import dkd_loss, teacher_confidence_weights
from dve_perception.training.features import StudentStageHook, teacher_token_features
from dve_perception.training.kd_losses import (
    CKALoss,
    FeatureRecalibration,
    PatchEmbeddingAlignment,
)
from dve_perception.training.losses import cosine_embedding_loss, downscale_target
from dve_perception.training.train_config import TrainConfig
from dve_perception.training.train_data import dense_targets

__all__ = [
    "DistillationTerms",
    "check_teacher",
    "closed_set_dkd",
    "load_dkd_prototypes",
    "proxy_targets",
]


def check_teacher(teacher: object) -> AlphaCLIPVisionTransformer:
    """Return `teacher` if it is an Alpha-CLIP tower, else raise a `ConfigError`."""
    if not isinstance(teacher, AlphaCLIPVisionTransformer):
        raise ConfigError(
            f"the live teacher for the TransKD/CKA terms must be an Alpha-CLIP vision tower "
            f"(training.alpha_clip.AlphaCLIPVisionTransformer), got {type(teacher).__name__}"
        )
    return teacher


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


class DistillationTerms(nn.Module):
    """Optional terms of one training run; `compute` adds them to the main cosine loss.

    Args:
        config: the run's settings (weights, teacher names and weights).
        student: the student, hooked for its stage outputs when TransKD/CKA are on.
        device: where the teacher and proxy run.
        teacher: the live Alpha-CLIP teacher; required when TransKD or CKA is on.
        proxy: a trained DVEFormer whose output replaces the stored main targets.
        extra_dims: target width of each extra teacher (`teacher_names[1:]`).
        prototypes: (K, D) closed-set class prototypes; required when `dkd_weight > 0`.

    Raises:
        ConfigError: TransKD/CKA without a teacher, a teacher of another kind, or a proxy whose
            embedding width or output stride does not fit the student; DKD without prototypes
            or with prototypes of another width than the student's embedding.
    """

    def __init__(
        self,
        config: TrainConfig,
        student: DVEFormer,
        device: torch.device,
        *,
        teacher: nn.Module | None = None,
        proxy: nn.Module | None = None,
        extra_dims: Sequence[int] = (),
        prototypes: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self._build_dkd(config, student, prototypes)
        self.transkd_weight = float(config.transkd_weight)
        self.cka_weight = float(config.cka_weight)
        weights = config.teacher_weights or (1.0,) * len(config.target_names)
        self.main_weight, self.extra_weights = float(weights[0]), tuple(weights[1:])
        self.extra_names = tuple(config.target_names[1:])
        # Plain dict: frozen networks stay out of parameters(), state_dict() and the optimiser.
        self._frozen: dict[str, nn.Module] = {}
        self.pea: PatchEmbeddingAlignment | None = None
        self.cka: CKALoss | None = None
        self.hook: StudentStageHook | None = None
        if self.transkd_weight or self.cka_weight:
            if teacher is None:
                raise ConfigError(
                    "transkd_weight / cka_weight need a live teacher: set teacher_checkpoint "
                    "(--teacher CKPT) to the Alpha-CLIP visual checkpoint"
                )
            self._frozen["teacher"] = _frozen(check_teacher(teacher), device)
            self._build_feature_terms(config, student)
        elif teacher is not None:
            raise ConfigError(
                "a live teacher was given but transkd_weight and cka_weight are 0; set a weight "
                "or drop teacher_checkpoint"
            )
        if proxy is not None:
            self._frozen["proxy"] = _frozen(_check_proxy(proxy, student), device)
        self.heads = nn.ModuleList(
            nn.Conv2d(student.config.embedding_dim, dim, kernel_size=1) for dim in extra_dims
        )

    def _build_dkd(
        self, config: TrainConfig, student: DVEFormer, prototypes: torch.Tensor | None
    ) -> None:
        self.dkd_weight = float(config.dkd_weight)
        self.dkd_options = {
            "logit_scale": float(config.dkd_logit_scale),
            "alpha": float(config.dkd_alpha),
            "beta": float(config.dkd_beta),
            "temperature": float(config.dkd_temperature),
            "dynamic_weights": bool(config.dkd_dynamic_weights),
        }
        if self.dkd_weight and prototypes is None:
            raise ConfigError("dkd_weight > 0 needs the closed-set prototypes (dkd_prototypes)")
        if prototypes is not None:
            dim = student.config.embedding_dim
            if prototypes.ndim != 2 or prototypes.shape[1] != dim:
                raise ConfigError(
                    f"DKD prototypes have shape {tuple(prototypes.shape)}, expected (K, {dim}) "
                    "for the student's embedding width"
                )
        # Frozen and non-persistent: not optimised, not in state_dict() or resume.pth.
        self.register_buffer(
            "prototypes",
            None if prototypes is None else prototypes.detach().float().clone(),
            persistent=False,
        )

    def _build_feature_terms(self, config: TrainConfig, student: DVEFormer) -> None:
        teacher = self._frozen["teacher"]
        stage_dims = student.encoder.backbone.stage_channels
        width = teacher.config.width
        if self.transkd_weight:
            self.pea = PatchEmbeddingAlignment(stage_dims, (width,) * 4)
        if self.cka_weight:
            self.cka = CKALoss(FeatureRecalibration(stage_dims[-1], width), seed=config.seed)
        self.hook = StudentStageHook(student)

    @property
    def has_proxy(self) -> bool:
        """Whether the main targets come from the proxy."""
        return "proxy" in self._frozen

    def extra_state(self) -> dict[str, Any]:
        """State outside `state_dict()` that resume must restore (the CKA row sampler)."""
        return {"cka_rng": self.cka._generator.get_state()} if self.cka is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""
        if self.cka is not None and "cka_rng" in state:
            self.cka._generator.set_state(state["cka_rng"])

    def compute(
        self, pred: torch.Tensor, batch: dict[str, Any], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """All loss terms of a batch whose student output is `pred`; "loss" is the weighted sum.

        Must be called right after the student's forward pass (the stage hook holds its
        features).
        """
        pred = pred.float()
        size = tuple(pred.shape[-2:])
        ids = batch["segment_ids"].to(device)
        if self.has_proxy:
            target = proxy_targets(self._frozen["proxy"], batch, size, device)
        else:
            target = dense_targets(ids, batch["table"], size)
        cosine = cosine_embedding_loss(pred, target)
        terms = {"loss_cosine": cosine}
        loss = self.main_weight * cosine
        if self.dkd_weight:
            semantic = batch["semantic"].to(device)
            terms["loss_dkd"] = closed_set_dkd(
                pred, target, semantic, self.prototypes, **self.dkd_options
            )
            loss = loss + self.dkd_weight * terms["loss_dkd"]
        for name, weight, head, tables in zip(
            self.extra_names,
            self.extra_weights,
            self.heads,
            zip(*batch["extra_tables"], strict=True),
            strict=True,
        ):
            term = cosine_embedding_loss(head(pred), dense_targets(ids, tables, size))
            terms[f"loss_cosine_{name}"] = term
            loss = loss + weight * term
        if self.hook is not None:
            stages = [s.float() for s in self.hook.pop()]
            tokens = teacher_token_features(self._frozen["teacher"], batch["rgb_u8"])
            if self.pea is not None:
                terms["loss_transkd"] = self.pea(stages, tokens)
                loss = loss + self.transkd_weight * terms["loss_transkd"]
            if self.cka is not None:
                terms["loss_cka"] = self._cka(stages[-1], tokens[-1])
                loss = loss + self.cka_weight * terms["loss_cka"]
        return {"loss": loss, **terms}

    def _cka(self, last_stage: torch.Tensor, final_tokens: torch.Tensor) -> torch.Tensor:
        grid = round(final_tokens.shape[1] ** 0.5)
        student = F.interpolate(last_stage, size=(grid, grid), mode="bilinear", align_corners=False)
        return self.cka(student, final_tokens)


def closed_set_dkd(
    pred: torch.Tensor,
    target: torch.Tensor,
    semantic: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    logit_scale: float = 100.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    dynamic_weights: bool = True,
) -> torch.Tensor:
    """DKD between the closed-set logits of the student's output and of the target embedding.

    Args:
        pred: (B, D, h, w) raw student embedding.
        target: (B, D, h, w) teacher target embedding (void pixels may be zero).
        semantic: (B, H, W) class ids at crop size (0 void, 1..K), sampled at output pixel
            centres (`losses.downscale_target`).
        prototypes: (K, D) class prototypes (normalised here).
        logit_scale: logits = logit_scale * cosine.
        alpha: weight of the target-class KL term (TCKD).
        beta: weight of the non-target KL term (NCKD).
        temperature: softmax temperature of both terms (and of the dynamic weights).
        dynamic_weights: per-logit `teacher_confidence_weights`; False gives plain DKD.

    Returns:
        0-dim loss averaged over non-void pixels.

    Raises:
        InputError: labels outside 0..K, or shapes that do not fit.
    """
    labels = downscale_target(semantic, tuple(pred.shape[-2:])).long() - 1  # void -> -1
    student = logit_scale * class_scores(pred.float(), prototypes)
    with torch.no_grad():
        teacher = logit_scale * class_scores(target.float(), prototypes)
    weights = None
    if dynamic_weights:
        weights = teacher_confidence_weights(teacher, labels, temperature)
    return dkd_loss(
        student,
        teacher,
        labels,
        alpha=alpha,
        beta=beta,
        temperature=temperature,
        weights=weights,
        ignore_index=-1,
    )


def load_dkd_prototypes(path: str, num_classes: int, embedding_dim: int) -> torch.Tensor:
    """Read the closed-set head's (K, D) prototypes (a `.pt` tensor or `.npy`, as `evaluate`).

    Raises:
        InputError: a missing/unreadable file, or one whose (K, D) does not match the dataset's
            class count and the student's embedding width.
    """
    from dve_perception.evaluation.segmentation_eval import read_prototypes_file

    prototypes = read_prototypes_file(Path(path))
    if tuple(prototypes.shape) != (num_classes, embedding_dim):
        raise InputError(
            f"DKD prototype file {path} holds a {tuple(prototypes.shape)} matrix, expected "
            f"({num_classes}, {embedding_dim}): one row per class of classes.txt, as wide as the "
            "student's embedding"
        )
    if not bool(torch.isfinite(prototypes).all()):
        raise InputError(f"DKD prototype file {path} has non-finite values; expected finite")
    return prototypes


def _check_proxy(proxy: nn.Module, student: DVEFormer) -> DVEFormer:
    if not isinstance(proxy, DVEFormer):
        raise ConfigError(f"the proxy must be a DVEFormer, got {type(proxy).__name__}")
    if proxy.config.embedding_dim != student.config.embedding_dim:
        raise ConfigError(
            f"the proxy embeds into {proxy.config.embedding_dim} dimensions but the student into "
            f"{student.config.embedding_dim}; expected the same embedding width"
        )
    if proxy.config.output_stride > student.config.output_stride:
        raise ConfigError(
            f"the proxy's output stride {proxy.config.output_stride} is coarser than the "
            f"student's {student.config.output_stride}; its targets would need upsampling. Use "
            "a proxy at the student's resolution or finer (e.g. fullres)"
        )
    return proxy


@torch.no_grad()
def proxy_targets(
    proxy: nn.Module, batch: dict[str, Any], size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """(B, D, h, w) normalised proxy output at the student's size; void pixels are zero.

    The proxy gets the mean/std-normalised depth (its own input), whatever the student uses.
    A larger output is area-averaged and renormalised (`downsample_unit_embedding`); validity
    is "not void" in the semantic labels, sampled at output pixel centres.
    """
    out = normalize_embedding(proxy(batch["rgb"].to(device), batch["depth"].to(device)).float())
    if tuple(out.shape[-2:]) != size:
        out = downsample_unit_embedding(out, size)
    valid = downscale_target(batch["semantic"].to(device), size) != 0
    return out * valid[:, None]
