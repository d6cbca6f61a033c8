"""Tests of the trainer's optional terms: TransKD, CKA, several teachers and the proxy stage."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.errors import CheckpointError, ConfigError, InputError
from dve_perception.model.checkpoint import load_checkpoint
from dve_perception.model.dveformer import TINY_TEST_CONFIG, build_dveformer
from dve_perception.training.alpha_clip import (
    TINY_ALPHA_CLIP_CONFIG,
    AlphaCLIPVisionConfig,
    AlphaCLIPVisionTransformer,
    preprocess_alpha,
    preprocess_rgb,
)
from dve_perception.training.distillation_terms import (
    DistillationTerms,
    closed_set_dkd,
    proxy_targets,
)
from dve_perception.training.features import (
    StudentStageHook,
    teacher_layers,
    teacher_token_features,
)
from dve_perception.training.linear_probing import prototypes_from_targets
from dve_perception.training.targets import DEFAULT_TEACHER_NAME, compute_targets, targets_dir
from dve_perception.training.train_config import TrainConfig
from dve_perception.training.train_data import collate_items
from dve_perception.training.trainer import Trainer

STUDENT = dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=24, n_upsamplings=0)
# A live teacher with a 4x4 token grid and four blocks, so each depth is a different block.
LIVE_TEACHER = AlphaCLIPVisionConfig(
    image_size=56, patch_size=14, width=32, layers=4, heads=2, output_dim=24
)
EXTRA_TEACHER = dataclasses.replace(TINY_ALPHA_CLIP_CONFIG, output_dim=10)


def _teacher(config: AlphaCLIPVisionConfig = LIVE_TEACHER, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = AlphaCLIPVisionTransformer(config).eval()
    with torch.no_grad():  # a non-zero alpha conv, as a trained Alpha-CLIP has
        teacher.conv1_alpha.weight.normal_(0, 0.02)
    return teacher


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> object:
    """Run this file's tiny models on one intra-op thread, restoring the setting afterwards.

    Their ops are microseconds long, so a second thread gains nothing, while on a busy 2-core
    machine (the full suite running beside) every op's thread barrier waits for a descheduled
    worker; the likely cause of the ~38 s first TransKD case seen there (25 steps take <1 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", samples=4)
    dataset = RGBDDataset(root, "train")
    compute_targets(dataset, _teacher(TINY_ALPHA_CLIP_CONFIG, 0), targets_dir(root))
    compute_targets(dataset, _teacher(EXTRA_TEACHER, 2), targets_dir(root, "other"))
    return root


def _config(out: Path, **changes: object) -> TrainConfig:
    base = {
        "output_dir": str(out),
        "model": STUDENT,
        "epochs": 3,
        "batch_size": 2,
        "lr": 3e-3,
        "crop_size": (64, 96),
        "progress": False,
    }
    return TrainConfig(**{**base, **changes})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _batch(trainer: Trainer) -> dict:
    return collate_items([trainer.data[0], trainer.data[1]])


def test_teacher_depths_are_a_quarter_half_three_quarters_and_all_of_the_blocks() -> None:
    assert teacher_layers(24) == (5, 11, 17, 23)  # blocks 6, 12, 18, 24 (1-based)
    assert teacher_layers(4) == (0, 1, 2, 3)
    assert teacher_layers(2) == (0, 0, 0, 1)


def test_student_hook_gives_channels_first_maps_at_strides_4_to_32() -> None:
    model = build_dveformer(STUDENT)
    hook = StudentStageHook(model)
    with torch.no_grad():
        model(torch.zeros(2, 3, 64, 96), torch.zeros(2, 1, 64, 96))
    stages = hook.pop()
    width = STUDENT.rgb_embed_dim + STUDENT.depth_embed_dim
    expected = [(2, width * 2**i, 64 // 4 // 2**i, 96 // 4 // 2**i) for i in range(4)]
    assert [tuple(s.shape) for s in stages] == expected
    with pytest.raises(InputError, match="no student forward pass was recorded"):
        hook.pop()


def test_teacher_tokens_are_the_patch_tokens_of_the_blocks_on_a_full_image_mask() -> None:
    teacher = _teacher()
    rgb = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    tokens = teacher_token_features(teacher, rgb)

    # Recompute the tower by hand up to each block.
    with torch.no_grad():
        alpha = preprocess_alpha(torch.ones(2, 64, 96), 56)
        x = teacher.conv1(preprocess_rgb(rgb, 56)) + teacher.conv1_alpha(alpha)
        x = x.flatten(2).transpose(1, 2)
        cls = teacher.class_embedding.expand(2, 1, -1)
        x = teacher.ln_pre(torch.cat([cls, x], dim=1) + teacher.positional_embedding)
        manual = []
        for block in teacher.transformer.resblocks:
            x = block(x)
            manual.append(x[:, 1:])
    assert len(tokens) == 4
    for got, want in zip(tokens, manual, strict=True):
        assert got.shape == (2, 16, 32)
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "term"),
    [
        ({"transkd_weight": 1.0}, "loss_transkd"),
        ({"cka_weight": 1.0}, "loss_cka"),
        ({"teacher_names": (DEFAULT_TEACHER_NAME, "other")}, "loss_cosine_other"),
        ({"dkd_weight": 1.0}, "loss_dkd"),
    ],
)
def test_each_term_is_finite_at_init_and_falls_when_trained_alone_on_a_fixed_batch(
    root: Path, tmp_path: Path, changes: dict, term: str
) -> None:
    names = changes.get("teacher_names", (DEFAULT_TEACHER_NAME,))
    # Main cosine weight 0 (and no other weight), so only `term` drives the updates.
    weights = (0.0,) + (1.0,) * (len(names) - 1)
    if term == "loss_dkd":
        changes = {**changes, "dkd_prototypes": str(_prototypes_file(root, tmp_path))}
    config = _config(tmp_path / "run", teacher_weights=weights, **changes)
    live = _teacher() if term in ("loss_transkd", "loss_cka") else None
    trainer = Trainer(config, root, teacher=live)
    batch = _batch(trainer)
    optimizer = torch.optim.Adam(
        [*trainer.model.parameters(), *trainer.terms.parameters()], lr=3e-3
    )
    values = []
    for _ in range(25):
        terms = trainer.compute_loss(batch)
        assert torch.equal(terms["loss"], terms[term])  # the only weighted term
        values.append(float(terms[term].detach()))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    assert all(map(torch.isfinite, torch.tensor(values)))
    assert values[0] > 0
    if term == "loss_cka":
        assert values[0] <= 1.0
    assert min(values[-5:]) < 0.75 * values[0]


def _prototypes_file(root: Path, tmp_path: Path) -> Path:
    """Visual-mean prototypes of the 3 synthetic classes, as a user would make them."""
    prototypes, unseen = prototypes_from_targets(targets_dir(root), 3)
    assert unseen == []
    path = tmp_path / "prototypes.pt"
    torch.save(prototypes, path)
    return path


def _dkd_by_hand(
    student: list[float], teacher: list[float], label: int, weights: list[float], t: float
) -> float:
    """DKD of one example from its logits, written out with math (alpha 1, beta 8)."""
    ps = [math.exp(v / t) for v in student]
    pt = [math.exp(v / t) for v in teacher]
    ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
    tckd = pt[label] * math.log(pt[label] / ps[label]) + (1 - pt[label]) * math.log(
        (1 - pt[label]) / (1 - ps[label])
    )
    rest = [k for k in range(len(ps)) if k != label]
    hat_s = {k: ps[k] / (1 - ps[label]) for k in rest}
    hat_t = {k: pt[k] / (1 - pt[label]) for k in rest}
    # Generalised KL summands (p log p/q - p + q): each >= 0, so weights keep a divergence.
    nckd = sum(
        weights[k] * (hat_t[k] * math.log(hat_t[k] / hat_s[k]) - hat_t[k] + hat_s[k]) for k in rest
    )
    return (weights[label] * tckd + 8.0 * nckd) * t**2


def test_dkd_term_uses_teacher_confidence_weights_that_differ_from_uniform_ones() -> None:
    # Identity prototypes: the logits are the scale times the unit embedding's coordinates.
    prototypes = torch.eye(3)
    pred = torch.tensor([[0.6, 0.8, 0.0], [1.0, 2.0, 3.0]]).T.reshape(1, 3, 1, 2)
    target = torch.tensor([[0.8, 0.0, 0.6], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 2)
    semantic = torch.tensor([[[1, 0]]])  # class 0 on pixel 0; pixel 1 is void (ignored)
    scale, t = 10.0, 2.0
    student, teacher = [6.0, 8.0, 0.0], [8.0, 0.0, 6.0]
    # Teacher's non-target distribution over classes 1, 2 at temperature t, rescaled to mean 1.
    e1, e2 = math.exp(0.0 / t), math.exp(6.0 / t)
    dynamic = [1.0, 2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]
    options = {"logit_scale": scale, "alpha": 1.0, "beta": 8.0, "temperature": t}
    got_dynamic = closed_set_dkd(pred, target, semantic, prototypes, **options)
    got_uniform = closed_set_dkd(
        pred, target, semantic, prototypes, dynamic_weights=False, **options
    )
    assert float(got_dynamic) == pytest.approx(_dkd_by_hand(student, teacher, 0, dynamic, t))
    assert float(got_uniform) == pytest.approx(_dkd_by_hand(student, teacher, 0, [1.0] * 3, t))
    assert abs(float(got_dynamic) - float(got_uniform)) > 0.1 * float(got_uniform)


def test_dkd_term_is_zero_when_the_student_embedding_equals_the_target() -> None:
    torch.manual_seed(5)
    target = F.normalize(torch.randn(2, 8, 4, 6), dim=1)
    semantic = torch.randint(0, 4, (2, 16, 24))
    prototypes = torch.randn(3, 8)
    for dynamic in (True, False):
        same = closed_set_dkd(3.0 * target, target, semantic, prototypes, dynamic_weights=dynamic)
        other = closed_set_dkd(
            torch.randn(2, 8, 4, 6), target, semantic, prototypes, dynamic_weights=dynamic
        )
        assert abs(float(same)) < 1e-5 and float(other) > 1e-2
    with pytest.raises(InputError, match=r"target classes must be in \[0, 3\)"):
        closed_set_dkd(target, target, semantic + 1, prototypes)


def test_trainer_with_dkd_sums_the_term_and_keeps_resume_state_unchanged(
    root: Path, tmp_path: Path
) -> None:
    config = _config(
        tmp_path / "run",
        dkd_weight=0.5,
        dkd_prototypes=str(_prototypes_file(root, tmp_path)),
        max_steps=2,
    )
    trainer = Trainer(config, root)
    trainer.train()
    for r in _metrics(tmp_path / "run"):
        assert r["loss"] == pytest.approx(r["loss_cosine"] + 0.5 * r["loss_dkd"], rel=1e-5)
        assert math.isfinite(r["loss_dkd"]) and r["loss_dkd"] > 0
    # Frozen prototypes: not optimised and not saved; the official checkpoint is the student's.
    assert list(trainer.terms.parameters()) == []
    assert torch.load(tmp_path / "run" / "resume.pth", weights_only=True)["distillation"] == {}
    load_checkpoint(tmp_path / "run" / "last.pth", STUDENT)
    Trainer(dataclasses.replace(config, max_steps=3), root, resume=True).train()
    assert len(_metrics(tmp_path / "run")) == 3
    bad = tmp_path / "bad.pt"
    torch.save(torch.randn(3, 7), bad)
    with pytest.raises(InputError, match=r"holds a \(3, 7\) matrix, expected \(3, 24\)"):
        Trainer(dataclasses.replace(config, dkd_prototypes=str(bad)), root, overwrite=True)


def test_without_distillation_settings_no_terms_are_built(root: Path, tmp_path: Path) -> None:
    assert Trainer(_config(tmp_path / "run"), root).terms is None


def test_trainer_with_transkd_and_cka_logs_each_term_and_sums_them_with_their_weights(
    root: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path / "run", transkd_weight=0.5, cka_weight=2.0, max_steps=3)
    Trainer(config, root, teacher=_teacher()).train()

    records = _metrics(tmp_path / "run")
    assert len(records) == 3
    for r in records:
        expected = r["loss_cosine"] + 0.5 * r["loss_transkd"] + 2.0 * r["loss_cka"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
        assert r["loss_transkd"] > 0 and 0 <= r["loss_cka"] <= 1


def test_learnable_parts_are_optimised_and_resume_restores_them_exactly(
    root: Path, tmp_path: Path
) -> None:
    settings = {
        "transkd_weight": 0.5,
        "cka_weight": 1.0,
        "teacher_names": (DEFAULT_TEACHER_NAME, "other"),
        "teacher_weights": (1.0, 0.5),
    }
    full = Trainer(_config(tmp_path / "full", **settings), root, teacher=_teacher())
    optimised = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    extra = list(full.terms.parameters())
    assert len(extra) == 2 * 4 + 2 + 2  # 4 alignment Linears, recalibration, head conv
    assert {id(p) for p in extra} <= optimised
    full.train()
    Trainer(_config(tmp_path / "split", max_steps=2, **settings), root, teacher=_teacher()).train()
    resumed = Trainer(
        _config(tmp_path / "split", **settings), root, resume=True, teacher=_teacher()
    )
    resumed.train()

    def losses(out: Path) -> list[float]:
        keys = ("loss", "loss_transkd", "loss_cka", "loss_cosine_other")
        return [r[k] for r in _metrics(out) for k in keys]

    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    for name, value in full.terms.state_dict().items():
        assert torch.allclose(resumed.terms.state_dict()[name], value, atol=1e-6), name
    # The official checkpoint holds the student only: it loads strictly into the student.
    load_checkpoint(tmp_path / "full" / "last.pth", STUDENT)
    state = torch.load(tmp_path / "full" / "resume.pth", weights_only=True)
    assert set(state["distillation"]) == set(full.terms.state_dict())


def test_proxy_targets_are_its_area_averaged_unit_output_on_non_void_pixels() -> None:
    torch.manual_seed(3)
    proxy = build_dveformer(dataclasses.replace(STUDENT, n_upsamplings=2))
    batch = {
        "rgb": torch.randn(1, 3, 64, 96),
        "depth": torch.randn(1, 1, 64, 96),
        "semantic": torch.ones(1, 64, 96, dtype=torch.int64),
    }
    batch["semantic"][:, :32] = 0  # top half void
    target = proxy_targets(proxy, batch, (16, 24), torch.device("cpu"))

    with torch.no_grad():
        out = F.normalize(proxy(batch["rgb"], batch["depth"]), dim=1)
    block = F.normalize(out[0, :, 36:40, 8:12].mean(dim=(1, 2)), dim=0)  # output pixel (9, 2)
    assert torch.allclose(target[0, :, 9, 2], block, atol=1e-5)
    assert torch.all(target[:, :, :8] == 0) and torch.all(target[:, :, 8:].norm(dim=1) > 0.99)


def test_a_student_trained_on_a_proxy_imitates_it(root: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    proxy = build_dveformer(dataclasses.replace(STUDENT, n_upsamplings=2))
    trainer = Trainer(_config(tmp_path / "run", epochs=10), root, proxy=proxy)
    batch = _batch(trainer)
    terms = trainer.compute_loss(batch)
    pred = trainer.model(batch["rgb"], batch["depth"])
    target = proxy_targets(proxy, batch, tuple(pred.shape[-2:]), torch.device("cpu"))
    valid = target.norm(dim=1) > 0
    expected = (1 - F.cosine_similarity(pred, target, dim=1))[valid].mean()
    assert float(terms["loss_cosine"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    trainer.train()

    losses = [r["loss"] for r in _metrics(tmp_path / "run")]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    load_checkpoint(tmp_path / "run" / "last.pth", STUDENT)


def test_a_teacher_of_another_kind_is_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be an Alpha-CLIP vision tower.*got DVEFormer"):
        Trainer(_config(tmp_path / "a", cka_weight=1.0), root, teacher=build_dveformer(STUDENT))
    dveformer_file = tmp_path / "student.pth"
    torch.save({"state_dict": build_dveformer(STUDENT).state_dict()}, dveformer_file)
    with pytest.raises(CheckpointError, match="looks like a DVEFormer checkpoint"):
        Trainer(
            _config(tmp_path / "b", cka_weight=1.0, teacher_checkpoint=str(dveformer_file)), root
        )
    with pytest.raises(ConfigError, match="the proxy must be a DVEFormer"):
        Trainer(_config(tmp_path / "c"), root, proxy=_teacher())


def test_dimension_mismatches_are_refused(root: Path, tmp_path: Path) -> None:
    wide = dataclasses.replace(STUDENT, n_upsamplings=2, embedding_dim=32)
    with pytest.raises(
        ConfigError, match="proxy embeds into 32 dimensions but the student into 24"
    ):
        Trainer(_config(tmp_path / "a"), root, proxy=build_dveformer(wide))
    with pytest.raises(ConfigError, match="are 10-dimensional but the student embeds into 24"):
        Trainer(_config(tmp_path / "b", teacher_names=("other",)), root)
    coarse = dataclasses.replace(STUDENT, n_upsamplings=2)
    with pytest.raises(ConfigError, match="output stride 4 is coarser than the student's 1"):
        Trainer(_config(tmp_path / "c", model=coarse), root, proxy=build_dveformer(STUDENT))


def test_a_missing_target_store_of_an_extra_teacher_is_named(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no target store for teacher 'absent'.*compute-targets"):
        Trainer(_config(tmp_path / "a", teacher_names=(DEFAULT_TEACHER_NAME, "absent")), root)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transkd_weight": 1.0}, "need a live teacher"),
        ({"teacher_weights": (1.0, 2.0)}, "needs one weight per teacher"),
    ],
)
def test_inconsistent_distillation_settings_are_refused(
    root: Path, tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Trainer(_config(tmp_path / "a", **changes), root)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher_checkpoint": "t.pth"}, "only used by the TransKD/CKA terms"),
        ({"teacher_names": ("a", "a")}, "distinct non-empty names"),
        ({"teacher_name": "x", "teacher_names": ("a",)}, "disagree"),
        ({"teacher_weights": (-1.0,)}, "finite and >= 0"),
        ({"proxy_model": "huge"}, "proxy_model must be empty or one of"),
        ({"dkd_weight": 1.0}, "dkd_weight and dkd_prototypes go together"),
        ({"dkd_prototypes": "p.pt"}, "dkd_weight and dkd_prototypes go together"),
        ({"dkd_temperature": 0.0}, "dkd_temperature must be finite and > 0"),
        ({"dkd_beta": float("nan")}, "dkd_beta must be finite and >= 0"),
    ],
)
def test_invalid_distillation_settings_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(output_dir="out", **changes)


def test_distillation_terms_without_a_teacher_but_with_a_weight_fail_directly() -> None:
    config = TrainConfig(output_dir="x", model=STUDENT, cka_weight=1.0)
    with pytest.raises(ConfigError, match="need a live teacher"):
        DistillationTerms(config, build_dveformer(STUDENT), torch.device("cpu"))
