"""Settings of a student training run (`TrainConfig`), validated when built.

Defaults follow the official recipe (dveformer-spec.md §7): AdamW, learning rate 5e-5 scaled by
batch size / 8, one-cycle schedule, bf16 autocast, 480x640 crops. `bf16` applies on CUDA only:
on a CPU device it is ignored with a warning (CPU bf16 autocast is slow and not what the recipe
measured), so the same config runs on a laptop for a smoke test.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dve_perception.errors import ConfigError
from dve_perception.model.dveformer import INPUT_MULTIPLE, VARIANTS, DVEFormerConfig
from dve_perception.training.alpha_clip import AlphaCLIPVisionConfig
from dve_perception.training.targets import DEFAULT_TEACHER_NAME

__all__ = ["OFFICIAL_BATCH_SIZE", "OFFICIAL_LR", "TrainConfig", "model_config_from_json"]

#: The official learning rate, for the official batch size.
OFFICIAL_LR = 5e-5
OFFICIAL_BATCH_SIZE = 8


def _doc(text: str) -> dict[str, object]:
    return {"description": text}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `field(...).metadata["description"]` documents each setting."""

    output_dir: str = field(metadata=_doc("folder for checkpoints, metrics.jsonl, config"))
    model: str | DVEFormerConfig = field(
        default="reducedres",
        metadata=_doc("published variant name, or a DVEFormerConfig (small tests)"),
    )
    init_checkpoint: str = field(
        default="", metadata=_doc("official checkpoint to fine-tune; empty: random init")
    )
    trust_checkpoint: bool = field(
        default=False, metadata=_doc("read init/teacher checkpoints with full unpickling")
    )
    split: str = field(default="train", metadata=_doc("dataset split to train on"))
    teacher_name: str = field(
        default=DEFAULT_TEACHER_NAME, metadata=_doc("targets subfolder: targets/<teacher_name>/")
    )
    epochs: int = field(default=50, metadata=_doc("passes over the split"))
    batch_size: int = field(default=8, metadata=_doc("samples per optimiser step"))
    lr: float | None = field(
        default=None, metadata=_doc("peak learning rate; None: 5e-5 * batch_size / 8")
    )
    weight_decay: float = field(default=0.01, metadata=_doc("AdamW weight decay"))
    pct_start: float = field(default=0.1, metadata=_doc("one-cycle warm-up fraction of steps"))
    num_workers: int = field(default=0, metadata=_doc("DataLoader worker processes"))
    bf16: bool = field(default=True, metadata=_doc("bf16 autocast on CUDA; ignored on CPU"))
    device: str = field(default="auto", metadata=_doc("torch device; auto: cuda if available"))
    seed: int = field(default=0, metadata=_doc("seed of init, data order and augmentation"))
    checkpoint_every: int = field(default=1, metadata=_doc("write epoch_N.pth every N epochs"))
    crop_size: tuple[int, int] = field(
        default=(480, 640), metadata=_doc("training crop (height, width), multiples of 32")
    )
    augment: bool = field(default=True, metadata=_doc("official augmentation; off: no transform"))
    pde_channels: int = field(
        default=0, metadata=_doc("PDE depth stem channels (32 or 64); 0: mean/std depth")
    )
    depth_randomisation: bool = field(
        default=False, metadata=_doc("random depth scale/offset/sparsity per sample")
    )
    transkd_weight: float = field(
        default=0.0, metadata=_doc("TransKD patch-embedding term weight; needs a live teacher")
    )
    cka_weight: float = field(
        default=0.0, metadata=_doc("CKA term weight (last stage); needs a live teacher")
    )
    teacher_checkpoint: str = field(
        default="", metadata=_doc("live Alpha-CLIP teacher for the TransKD/CKA terms")
    )
    teacher_config: AlphaCLIPVisionConfig | None = field(
        default=None, metadata=_doc("live teacher's architecture; None: ViT-L/14@336")
    )
    teacher_names: tuple[str, ...] = field(
        default=(), metadata=_doc("target stores of several teachers, main first; (): teacher_name")
    )
    teacher_weights: tuple[float, ...] = field(
        default=(), metadata=_doc("cosine-loss weight per teacher_names entry; (): all 1")
    )
    proxy_checkpoint: str = field(
        default="", metadata=_doc("trained DVEFormer whose output replaces the main targets")
    )
    proxy_model: str | DVEFormerConfig = field(
        default="", metadata=_doc("proxy architecture; empty: detected from the checkpoint")
    )
    dkd_weight: float = field(
        default=0.0, metadata=_doc("closed-set DKD logit-distillation weight; 0: off")
    )
    dkd_prototypes: str = field(
        default="", metadata=_doc("(K, D) class prototypes (.pt/.npy) of the closed-set head")
    )
    dkd_alpha: float = field(default=1.0, metadata=_doc("DKD weight of the target-class term"))
    dkd_beta: float = field(default=8.0, metadata=_doc("DKD weight of the non-target term"))
    dkd_temperature: float = field(default=4.0, metadata=_doc("DKD softmax temperature"))
    dkd_logit_scale: float = field(
        default=100.0, metadata=_doc("closed-set logits = scale * cosine (CLIP's 100)")
    )
    dkd_dynamic_weights: bool = field(
        default=True, metadata=_doc("teacher-confidence per-logit weights; off: plain DKD")
    )
    max_steps: int = field(default=0, metadata=_doc("stop after this many steps; 0: no limit"))
    progress: bool = field(default=True, metadata=_doc("show a tqdm progress bar"))

    def __post_init__(self) -> None:
        """Check ranges and choices."""
        if isinstance(self.model, str) and self.model not in VARIANTS:
            raise ConfigError(f"model must be one of {sorted(VARIANTS)}, got {self.model!r}")
        if not isinstance(self.model, str | DVEFormerConfig):
            raise ConfigError(f"model must be a variant name or DVEFormerConfig, got {self.model}")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("num_workers", "max_steps", "seed", "pde_channels"):
            _check_int(name, getattr(self, name), 0)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be positive and finite (or None), got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if self.pde_channels not in (0, 32, 64):
            raise ConfigError(f"pde_channels must be 0 (off), 32 or 64, got {self.pde_channels}")
        crop = tuple(self.crop_size)
        if len(crop) != 2 or any(
            not isinstance(s, int) or s < INPUT_MULTIPLE or s % INPUT_MULTIPLE for s in crop
        ):
            raise ConfigError(
                f"crop_size must be (height, width), positive multiples of {INPUT_MULTIPLE}, "
                f"got {self.crop_size}"
            )
        if not self.output_dir:
            raise ConfigError("output_dir is empty; expected a folder for the checkpoints")
        self._check_distillation()

    def _check_distillation(self) -> None:
        for name in ("transkd_weight", "cka_weight", "dkd_weight", "dkd_alpha", "dkd_beta"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
        for name in ("dkd_temperature", "dkd_logit_scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be finite and > 0, got {value!r}")
        if bool(self.dkd_weight) != bool(self.dkd_prototypes):
            raise ConfigError(
                "dkd_weight and dkd_prototypes go together: the DKD term needs the closed-set "
                f"head's prototype file, got dkd_weight={self.dkd_weight} and "
                f"dkd_prototypes={self.dkd_prototypes!r}"
            )
        if self.teacher_checkpoint and not (self.transkd_weight or self.cka_weight):
            raise ConfigError(
                "teacher_checkpoint is only used by the TransKD/CKA terms, but transkd_weight "
                "and cka_weight are 0; set a weight or drop the teacher"
            )
        names = tuple(self.teacher_names)
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"teacher_names must be distinct non-empty names, got {names}")
        if names and self.teacher_name not in (DEFAULT_TEACHER_NAME, names[0]):
            raise ConfigError(
                f"teacher_name {self.teacher_name!r} and teacher_names {names} disagree; the "
                "first of teacher_names is the main teacher"
            )
        weights = tuple(self.teacher_weights)
        if weights and len(weights) != len(self.target_names):
            raise ConfigError(
                f"teacher_weights {weights} needs one weight per teacher of {self.target_names}"
            )
        if any(not (math.isfinite(w) and w >= 0) for w in weights):
            raise ConfigError(f"teacher_weights must be finite and >= 0, got {weights}")
        if isinstance(self.proxy_model, str) and self.proxy_model not in ("", *VARIANTS):
            raise ConfigError(
                f"proxy_model must be empty or one of {sorted(VARIANTS)}, got {self.proxy_model!r}"
            )

    @property
    def target_names(self) -> tuple[str, ...]:
        """Target stores to load, the main teacher first."""
        return tuple(self.teacher_names) or (self.teacher_name,)

    @property
    def effective_lr(self) -> float:
        """The peak learning rate: `lr`, or the official 5e-5 scaled by batch_size / 8."""
        return self.lr if self.lr is not None else OFFICIAL_LR * self.batch_size / 8

    @property
    def model_config(self) -> DVEFormerConfig:
        """The architecture as a config object."""
        return self.model if isinstance(self.model, DVEFormerConfig) else VARIANTS[self.model]

    def to_json(self) -> str:
        """The settings as JSON (the model as its variant name or its fields)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("model", "proxy_model", "teacher_config"):
            if data[name] is not None and not isinstance(data[name], str):
                data[name] = asdict(data[name])
        data["crop_size"] = list(self.crop_size)
        return json.dumps(data, indent=2, sort_keys=True)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def model_config_from_json(path: str | Path) -> DVEFormerConfig:
    """Read a DVEFormerConfig from a JSON object of its fields (lists for tuples).

    Raises:
        ConfigError: a missing/unreadable file, unknown fields or invalid values.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read model config {path}: {err}") from err
    known = {f.name for f in fields(DVEFormerConfig)}
    if not isinstance(data, dict) or set(data) - known:
        unknown = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(
            f"model config {path} has unknown fields {unknown}; expected a JSON object with "
            f"fields of DVEFormerConfig: {sorted(known)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return DVEFormerConfig(**values)
    except TypeError as err:
        raise ConfigError(f"model config {path} is invalid: {err}") from err
