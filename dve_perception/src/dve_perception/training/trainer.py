"""Train the DVEFormer student on stored teacher targets (dveformer-spec.md §7).

One step: forward the preprocessed RGB-D crop, compare the raw embedding with the targets at the
model's output size (1/4 for the reduced-res variant, targets downscaled by nearest segment ids at
pixel centres) with the cosine-embedding loss on valid pixels, backward, AdamW step, one-cycle
learning-rate step. Output folder:

- `last.pth`, `epoch_N.pth`: the official format `{"state_dict", "epoch", "logs"}`, readable by
  `model.checkpoint.load_checkpoint` (a PDE student differs in the depth stem's weight shape);
- `resume.pth`: optimiser, scheduler, step and RNG state, plus the learnable parts of the optional
  distillation terms (alignment, recalibration, extra-teacher heads: `distillation`) which are not
  part of the student (tensors and numbers only, weights-only loadable), always written together
  with `last.pth`;
- `metrics.jsonl`: one JSON object per step (step, epoch, loss, each loss term, lr, seconds);
- `train_config.json`: the settings.

A non-finite loss stops training with a `TrainingError` before the optimiser step, so no file is
written and the last good checkpoint stays as it was.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dve_perception.atomic_file import atomic_write
from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.errors import ConfigError, TrainingError
from dve_perception.model.checkpoint import load_checkpoint, read_checkpoint_file
from dve_perception.model.dveformer import DVEFormer, build_dveformer
from dve_perception.training.depth_encoding import with_pde_depth_stem
from dve_perception.training.distillation_terms import DistillationTerms, load_dkd_prototypes
from dve_perception.training.losses import cosine_embedding_loss
from dve_perception.training.targets import load_targets, targets_dir
from dve_perception.training.train_config import TrainConfig
from dve_perception.training.train_data import DistillationDataset, collate_items, dense_targets

__all__ = ["TrainingError", "Trainer", "build_student", "save_official_checkpoint"]

_LOG = logging.getLogger(__name__)
RESUME_FILE = "resume.pth"
LAST_FILE = "last.pth"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"


def build_student(config: TrainConfig) -> DVEFormer:
    """The student: the official checkpoint to fine-tune, else random init; then the PDE stem."""
    torch.manual_seed(config.seed)  # random init is reproducible from the seed
    if config.init_checkpoint:
        model = load_checkpoint(
            config.init_checkpoint, config.model, trusted=config.trust_checkpoint
        )
    else:
        model = build_dveformer(config.model)
    if config.pde_channels:
        with_pde_depth_stem(model, config.pde_channels, depth_scale_m=1.0)
    return model


def save_official_checkpoint(
    path: Path, model: torch.nn.Module, epoch: int, logs: dict[str, Any]
) -> None:
    """Write `{"state_dict", "epoch", "logs"}` atomically (old file intact if writing fails)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path) as file:
        torch.save({"state_dict": state, "epoch": int(epoch), "logs": logs}, file)


class Trainer:
    """Distil stored teacher targets into a DVEFormer student.

    Args:
        config: the run's settings.
        dataset_root: a dataset in the documented layout with computed targets.
        resume: continue from `<output_dir>/resume.pth` and `last.pth`.
        overwrite: allow an existing, non-empty output folder without resuming.
        teacher: an in-memory live Alpha-CLIP teacher instead of `config.teacher_checkpoint`.
        proxy: an in-memory proxy DVEFormer instead of `config.proxy_checkpoint`.

    Raises:
        ConfigError: an existing output folder without resume/overwrite, a resume folder without
            state, a dataset smaller than one batch, targets whose width differs from the
            student's, or distillation settings that do not fit (see `DistillationTerms`).
        InputError: dataset problems, or missing targets (naming `compute-targets`).
        CheckpointError: a teacher or proxy checkpoint of another architecture.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset_root: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        teacher: torch.nn.Module | None = None,
        proxy: torch.nn.Module | None = None,
    ) -> None:
        self.config = config
        self.out = Path(config.output_dir)
        self._check_output_dir(resume, overwrite)
        self.device = _pick_device(config.device)
        self.autocast = config.bf16 and self.device.type == "cuda"
        if config.bf16 and not self.autocast:
            _LOG.warning(
                "bf16 autocast applies on CUDA only; training in float32 on %s", self.device
            )
        samples = RGBDDataset(dataset_root, config.split)
        main_name, *extra_names = config.target_names
        self.data = DistillationDataset(
            samples,
            targets_dir(dataset_root, main_name),
            config.crop_size,
            augment=config.augment,
            depth_random=config.depth_randomisation,
            seed=config.seed,
            extra_folders=[targets_dir(dataset_root, name) for name in extra_names],
        )
        self.steps_per_epoch = len(self.data) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"split '{config.split}' has {len(self.data)} samples, fewer than batch_size "
                f"{config.batch_size}; lower the batch size"
            )
        # max_steps stops early without changing the schedule, so a run stopped by it and
        # resumed without it ends exactly like an uninterrupted one.
        self.total_steps = config.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, config.max_steps or self.total_steps)
        self.model = build_student(config).to(self.device).train()
        self.terms = self._build_terms(teacher, proxy)
        parameters = list(self.model.parameters())
        if self.terms is not None:
            parameters += list(self.terms.parameters())
        self.optimizer = torch.optim.AdamW(
            parameters, lr=config.effective_lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=config.effective_lr,
            total_steps=max(self.total_steps, 2),  # OneCycleLR needs at least two
            pct_start=config.pct_start,
        )
        self.step = 0
        if resume:
            self._load_resume()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")

    def _check_output_dir(self, resume: bool, overwrite: bool) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"output {self.out} exists and is not a folder")
        exists = self.out.is_dir() and any(self.out.iterdir())
        if resume and not (self.out / RESUME_FILE).is_file():
            raise ConfigError(f"cannot resume: {self.out / RESUME_FILE} does not exist")
        if exists and not (resume or overwrite):
            raise ConfigError(
                f"output folder {self.out} is not empty; pass --resume to continue that run or "
                "--overwrite to start a new one there"
            )

    def _build_terms(
        self, teacher: torch.nn.Module | None, proxy: torch.nn.Module | None
    ) -> DistillationTerms | None:
        """The optional terms, or None on the plain path (which then runs exactly as before)."""
        config = self.config
        dims = [self._store_dim(folder) for folder in [self.data.folder, *self.data.extra_folders]]
        if dims[0] != config.model_config.embedding_dim:
            raise ConfigError(
                f"targets in {self.data.folder} are {dims[0]}-dimensional but the student embeds "
                f"into {config.model_config.embedding_dim}; use the teacher whose width matches "
                "the student's embedding_dim as the main teacher (first of teacher_names)"
            )
        distil = config.transkd_weight or config.cka_weight or config.dkd_weight or len(dims) > 1
        if not (distil or proxy is not None or config.proxy_checkpoint):
            return None
        if teacher is None and config.teacher_checkpoint:
            from dve_perception.training.alpha_clip import ALPHA_CLIP_L14_336
            from dve_perception.training.alpha_clip_checkpoint import load_alpha_clip

            teacher = load_alpha_clip(
                config.teacher_checkpoint,
                config.teacher_config or ALPHA_CLIP_L14_336,
                trusted=config.trust_checkpoint,
            )
        if proxy is None and config.proxy_checkpoint:
            proxy = load_checkpoint(
                config.proxy_checkpoint,
                config.proxy_model or None,
                trusted=config.trust_checkpoint,
            )
        prototypes = None
        if config.dkd_weight:
            prototypes = load_dkd_prototypes(
                config.dkd_prototypes,
                self.data.dataset.num_classes,
                config.model_config.embedding_dim,
            )
        terms = DistillationTerms(
            config,
            self.model,
            self.device,
            teacher=teacher,
            proxy=proxy,
            extra_dims=dims[1:],
            prototypes=prototypes,
        )
        return terms.to(self.device).train()

    def _store_dim(self, folder: Path) -> int:
        return int(load_targets(folder / f"{self.data.dataset.ids[0]}.npz").vectors.shape[1])

    def _load_resume(self) -> None:
        last = read_checkpoint_file(self.out / LAST_FILE)
        self.model.load_state_dict(last["state_dict"], strict=True)
        state = read_checkpoint_file(self.out / RESUME_FILE)
        saved_total = int(state["scheduler"]["total_steps"])
        if saved_total != max(self.total_steps, 2):
            raise ConfigError(
                f"cannot resume {self.out}: its schedule has {saved_total} steps, this config "
                f"{self.total_steps}; resume with the same epochs, batch size and dataset"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        if self.terms is not None:
            if "distillation" not in state:
                raise ConfigError(
                    f"cannot resume {self.out}: it was trained without the distillation terms "
                    "this config enables; resume with the same settings"
                )
            self.terms.load_state_dict(state["distillation"], strict=True)
            self.terms.load_extra_state(state.get("distillation_extra", {}))
        if self.step > self.total_steps:
            raise ConfigError(
                f"{self.out} is at step {self.step}, beyond this run's {self.total_steps} steps"
            )

    def train(self) -> dict[str, Any]:
        """Run until `epochs` (or `max_steps`) are done; return the last saved logs.

        Raises:
            TrainingError: the loss became NaN or infinite (the message names the step).
        """
        from tqdm.auto import tqdm

        bar = tqdm(total=self.stop_step, initial=self.step, disable=not self.config.progress)
        logs: dict[str, Any] = {}
        epoch_losses: list[float] = []
        try:
            while self.step < self.stop_step:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                for batch in self._loader(epoch, offset):
                    record = self._train_step(batch, epoch)
                    epoch_losses.append(record["loss"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    epoch_done = self.step % self.steps_per_epoch == 0
                    if epoch_done or self.step >= self.stop_step:
                        logs = {"loss": float(np.mean(epoch_losses)), "step": self.step}
                        self._save(epoch + 1 if epoch_done else epoch, logs, epoch_done)
                        epoch_losses = []
                    if self.step >= self.stop_step:
                        break
        finally:
            bar.close()
        return logs

    def _loader(self, epoch: int, offset: int) -> torch.utils.data.DataLoader:
        # A fixed permutation per epoch, started at the resume offset, so a resumed run sees the
        # same batches as an uninterrupted one.
        self.data.epoch = epoch
        order = torch.randperm(
            len(self.data), generator=torch.Generator().manual_seed(self.config.seed + epoch)
        ).tolist()
        usable = order[: self.steps_per_epoch * self.config.batch_size]
        return torch.utils.data.DataLoader(
            self.data,
            batch_size=self.config.batch_size,
            sampler=usable[offset * self.config.batch_size :],
            num_workers=self.config.num_workers,
            collate_fn=collate_items,
            drop_last=True,
        )

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; "loss" is their weighted sum."""
        rgb = batch["rgb"].to(self.device)
        depth_key = "depth_m" if self.config.pde_channels else "depth"
        depth = batch[depth_key].to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.model(rgb, depth)
        if self.terms is not None:
            return self.terms.compute(pred, batch, self.device)
        ids = batch["segment_ids"].to(self.device)
        target = dense_targets(ids, batch["table"], tuple(pred.shape[-2:]))
        cosine = cosine_embedding_loss(pred.float(), target)
        return {"loss": cosine, "loss_cosine": cosine}

    def _train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        terms = self.compute_loss(batch)
        loss = terms["loss"]
        if not torch.isfinite(loss.detach()).item():
            raise TrainingError(
                f"loss is {loss.item()} at step {self.step + 1} (epoch {epoch + 1}); training "
                f"stopped and the last good checkpoint {self.out / LAST_FILE} was kept. Lower the "
                "learning rate or check the data and targets of this batch: "
                f"{batch.get('id')}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record = {"step": self.step, "epoch": epoch + 1, "lr": lr}
        record.update({k: float(v.detach()) for k, v in terms.items()})
        record["seconds"] = time.perf_counter() - start
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        return record

    def _save(self, epoch: int, logs: dict[str, Any], epoch_done: bool) -> None:
        if epoch_done and epoch % self.config.checkpoint_every == 0:
            save_official_checkpoint(self.out / f"epoch_{epoch}.pth", self.model, epoch, logs)
        save_official_checkpoint(self.out / LAST_FILE, self.model, epoch, logs)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
        }
        if self.terms is not None:
            state["distillation"] = {
                k: v.detach().cpu() for k, v in self.terms.state_dict().items()
            }
            state["distillation_extra"] = self.terms.extra_state()
        with atomic_write(self.out / RESUME_FILE) as file:
            torch.save(state, file)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device {name!r} is not a torch device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device
