"""Tests of the student trainer on a tiny generated dataset with a tiny random teacher."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.errors import CheckpointError, ConfigError, InputError
from dve_perception.model.checkpoint import load_checkpoint
from dve_perception.model.dveformer import TINY_TEST_CONFIG, build_dveformer
from dve_perception.training.alpha_clip import TINY_ALPHA_CLIP_CONFIG, AlphaCLIPVisionTransformer
from dve_perception.training.depth_encoding import with_pde_depth_stem
from dve_perception.training.targets import compute_targets, targets_dir
from dve_perception.training.train_config import TrainConfig
from dve_perception.training.trainer import Trainer, TrainingError

# Reduced-res (output at 1/4) so the loss runs against downscaled targets; 24-d like the teacher.
STUDENT = dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=24, n_upsamplings=0)
DEPTH_CONV = "encoder.backbone.patch_embedder.depth_layers.0.weight"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", samples=4)
    torch.manual_seed(0)
    teacher = AlphaCLIPVisionTransformer(TINY_ALPHA_CLIP_CONFIG).eval()
    compute_targets(RGBDDataset(root, "train"), teacher, targets_dir(root))
    return root


def _config(out: Path, **changes: object) -> TrainConfig:
    base = {
        "output_dir": str(out),
        "model": STUDENT,
        "epochs": 15,
        "batch_size": 2,
        "lr": 3e-3,
        "crop_size": (64, 96),
        "progress": False,
    }
    return TrainConfig(**{**base, **changes})


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def _probe_input() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(1, 3, 64, 96, generator=generator), torch.randn(
        1, 1, 64, 96, generator=generator
    )


def test_loss_falls_and_the_checkpoint_loads_back_strictly_with_the_same_output(
    dataset_root: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_config(tmp_path / "run"), dataset_root)
    trainer.train()

    losses = _losses(tmp_path / "run")
    assert len(losses) == 30  # 15 epochs x 4 samples / batch 2
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert set(ckpt) == {"state_dict", "epoch", "logs"} and ckpt["epoch"] == 15
    loaded = load_checkpoint(tmp_path / "run" / "last.pth", STUDENT)
    rgb, depth = _probe_input()
    with torch.no_grad():
        expected = trainer.model.eval()(rgb, depth)
        assert torch.allclose(loaded(rgb, depth), expected, atol=1e-6)
    assert (tmp_path / "run" / "epoch_1.pth").is_file()
    assert (tmp_path / "run" / "epoch_15.pth").is_file()


def test_a_stopped_and_resumed_run_ends_like_an_uninterrupted_one(
    dataset_root: Path, tmp_path: Path
) -> None:
    Trainer(_config(tmp_path / "full", epochs=3), dataset_root).train()
    # Stop mid-epoch 2 (step 3 of 6), then continue without the limit.
    Trainer(_config(tmp_path / "split", epochs=3, max_steps=3), dataset_root).train()
    assert len(_losses(tmp_path / "split")) == 3
    resumed = Trainer(_config(tmp_path / "split", epochs=3), dataset_root, resume=True)
    assert resumed.step == 3
    resumed.train()

    assert resumed.step == 6
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)
    full = torch.load(tmp_path / "full" / "last.pth", weights_only=True)["state_dict"]
    split = torch.load(tmp_path / "split" / "last.pth", weights_only=True)["state_dict"]
    for key, value in full.items():
        assert torch.allclose(split[key], value, atol=1e-6), key


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint_byte_identical(
    dataset_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    Trainer(_config(out, epochs=2, max_steps=2), dataset_root).train()
    before = {name: (out / name).read_bytes() for name in ("last.pth", "resume.pth")}
    trainer = Trainer(_config(out, epochs=2), dataset_root, resume=True)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss is nan at step 3 .*last good checkpoint"):
        trainer.train()
    assert {name: (out / name).read_bytes() for name in before} == before


def test_missing_targets_name_the_compute_targets_command(
    dataset_root: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved.npz"
    source = targets_dir(dataset_root) / "000001.npz"
    source.rename(moved)
    try:
        with pytest.raises(
            InputError, match=r"no teacher targets for 1 sample.*000001.*compute-targets"
        ):
            Trainer(_config(tmp_path / "run"), dataset_root)
    finally:
        moved.rename(source)


def test_pde_option_trains_and_its_checkpoint_has_the_wider_depth_convolution(
    dataset_root: Path, tmp_path: Path
) -> None:
    Trainer(
        _config(tmp_path / "run", epochs=1, pde_channels=32, depth_randomisation=True), dataset_root
    ).train()

    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["state_dict"]
    assert state[DEPTH_CONV].shape == (STUDENT.depth_embed_dim, 32, 4, 4)
    model = with_pde_depth_stem(build_dveformer(STUDENT), 32)
    model.load_state_dict(state, strict=True)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(tmp_path / "run" / "last.pth", STUDENT)


def test_a_non_empty_output_folder_is_refused_without_resume_or_overwrite(
    dataset_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ConfigError, match="not empty; pass --resume .* or --overwrite"):
        Trainer(_config(out), dataset_root)
    with pytest.raises(ConfigError, match="cannot resume: .*resume.pth does not exist"):
        Trainer(_config(out), dataset_root, resume=True)


def test_resuming_with_another_schedule_is_refused(dataset_root: Path, tmp_path: Path) -> None:
    Trainer(_config(tmp_path / "run", epochs=2, max_steps=1), dataset_root).train()
    with pytest.raises(ConfigError, match="schedule has 4 steps, this config 6"):
        Trainer(_config(tmp_path / "run", epochs=3), dataset_root, resume=True)


def test_batch_larger_than_the_split_is_refused(dataset_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="4 samples, fewer than batch_size 5"):
        Trainer(_config(tmp_path / "run", batch_size=5), dataset_root)


def test_default_learning_rate_is_the_official_one_scaled_by_batch_over_8() -> None:
    assert TrainConfig(output_dir="x", batch_size=16).effective_lr == pytest.approx(1e-4)
    assert TrainConfig(output_dir="x", batch_size=2, lr=1e-3).effective_lr == 1e-3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pde_channels": 16}, "pde_channels must be 0 .off., 32 or 64, got 16"),
        ({"crop_size": (480, 630)}, "crop_size must be .* multiples of 32"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"pct_start": 1.0}, "pct_start must be in"),
        ({"model": "huge"}, "model must be one of"),
        ({"cka_weight": -1.0}, "cka_weight must be finite and >= 0"),
        ({"output_dir": ""}, "output_dir is empty"),
    ],
)
def test_invalid_settings_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"output_dir": "out", **changes})
