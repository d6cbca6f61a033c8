"""Tests of `dve-perception compute-targets` and `dve-perception train` with tiny configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dve_perception.cli.main import main
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.model.checkpoint import load_checkpoint
from dve_perception.model.dveformer import TINY_TEST_CONFIG
from dve_perception.training.alpha_clip import TINY_ALPHA_CLIP_CONFIG, AlphaCLIPVisionTransformer
from dve_perception.training.targets import load_targets, targets_dir

STUDENT = dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=24, n_upsamplings=0)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    root = write_synthetic_dataset(tmp_path / "ds", samples=2)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    torch.save(AlphaCLIPVisionTransformer(TINY_ALPHA_CLIP_CONFIG).state_dict(), teacher)
    teacher_config = tmp_path / "teacher.json"
    teacher_config.write_text(json.dumps(dataclasses.asdict(TINY_ALPHA_CLIP_CONFIG)))
    model_config = tmp_path / "model.json"
    model_config.write_text(json.dumps(dataclasses.asdict(STUDENT)))
    return {
        "root": root,
        "teacher": teacher,
        "teacher_config": teacher_config,
        "model_config": model_config,
        "out": tmp_path / "run",
    }


def _compute(files: dict[str, Path], *extra: str) -> int:
    return main(
        [
            "compute-targets",
            str(files["root"]),
            "--teacher",
            str(files["teacher"]),
            "--teacher-config",
            str(files["teacher_config"]),
            "--device",
            "cpu",
            *extra,
        ]
    )


def _train(files: dict[str, Path], *extra: str) -> int:
    return main(
        [
            "train",
            str(files["root"]),
            "--out",
            str(files["out"]),
            "--model-config",
            str(files["model_config"]),
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--crop",
            "64x96",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ]
    )


def test_compute_targets_then_train_writes_a_loadable_checkpoint(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compute(files) == 0
    written = sorted(targets_dir(files["root"]).glob("*.npz"))
    assert [p.stem for p in written] == ["000000", "000001"]
    assert load_targets(written[0]).vectors.shape[1] == TINY_ALPHA_CLIP_CONFIG.output_dim

    assert _train(files) == 0
    assert "step 2" in capsys.readouterr().out
    model = load_checkpoint(files["out"] / "last.pth", STUDENT)
    assert model.config == STUDENT
    assert len((files["out"] / "metrics.jsonl").read_text().splitlines()) == 2


def test_train_refuses_an_existing_output_and_continues_with_resume(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compute(files) == 0
    assert _train(files, "--max-steps", "1") == 0
    assert _train(files) == 2
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert _train(files, "--resume") == 0
    assert "step 2" in capsys.readouterr().out


def test_train_without_targets_says_to_run_compute_targets(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(files) == 2
    err = capsys.readouterr().err
    assert err.startswith("dve-perception train: error: no teacher targets")
    assert "dve-perception compute-targets" in err


def test_compute_targets_rejects_a_teacher_of_another_architecture(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    other = dataclasses.replace(TINY_ALPHA_CLIP_CONFIG, width=64)
    files["teacher_config"].write_text(json.dumps(dataclasses.asdict(other)))
    assert _compute(files) == 2
    assert "dve-perception compute-targets: error:" in capsys.readouterr().err


def test_bad_config_files_are_one_line_errors(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["model_config"].write_text(json.dumps({"embedding_dim": 24, "colour": 3}))
    assert _train(files) == 2
    assert "unknown fields ['colour']" in capsys.readouterr().err
    files["teacher_config"].write_text(json.dumps({"wide": 1}))
    assert _compute(files) == 2
    assert "--teacher-config" in capsys.readouterr().err


def test_train_with_a_live_teacher_logs_the_transkd_and_cka_terms(files: dict[str, Path]) -> None:
    assert _compute(files) == 0
    flags = ["--teacher", str(files["teacher"]), "--teacher-config", str(files["teacher_config"])]
    assert _train(files, *flags, "--transkd-weight", "0.5", "--cka-weight", "0.25") == 0

    record = json.loads((files["out"] / "metrics.jsonl").read_text().splitlines()[-1])
    expected = record["loss_cosine"] + 0.5 * record["loss_transkd"] + 0.25 * record["loss_cka"]
    assert record["loss"] == pytest.approx(expected, rel=1e-5)
    load_checkpoint(files["out"] / "last.pth", STUDENT)
    saved = json.loads((files["out"] / "train_config.json").read_text())
    assert saved["teacher_config"]["width"] == TINY_ALPHA_CLIP_CONFIG.width


def test_train_with_several_teachers_and_a_proxy(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compute(files) == 0
    assert _compute(files, "--teacher-name", "second") == 0
    names = "alpha_clip_l14_336_grit_20m,second"
    assert _train(files, "--teacher-names", names, "--teacher-weights", "1,0.5") == 0
    record = json.loads((files["out"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss"] == pytest.approx(
        record["loss_cosine"] + 0.5 * record["loss_cosine_second"], rel=1e-5
    )
    # Second stage: the first run's student as the proxy of a new student.
    proxy = files["out"] / "last.pth"
    files["out"] = files["out"].parent / "stage2"
    assert (
        _train(files, "--proxy", str(proxy), "--proxy-model-config", str(files["model_config"]))
        == 0
    )
    assert "step 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _train(files, "--overwrite", "--teacher-weights", "1,x")
    assert "expected comma-separated numbers" in capsys.readouterr().err


def test_train_with_dkd_logs_the_term_and_a_bad_prototype_file_is_a_one_line_error(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compute(files) == 0
    prototypes = files["out"].parent / "prototypes.pt"
    torch.save(torch.randn(3, STUDENT.embedding_dim), prototypes)  # 3 synthetic classes
    flags = ["--dkd-weight", "0.5", "--dkd-prototypes", str(prototypes), "--max-steps", "1"]
    assert _train(files, *flags) == 0
    record = json.loads((files["out"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss"] == pytest.approx(record["loss_cosine"] + 0.5 * record["loss_dkd"])
    load_checkpoint(files["out"] / "last.pth", STUDENT)

    for shape in [(4, STUDENT.embedding_dim), (3, STUDENT.embedding_dim + 1)]:
        torch.save(torch.randn(*shape), prototypes)
        assert _train(files, *flags, "--overwrite") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"holds a {shape} matrix, expected (3, {STUDENT.embedding_dim})" in err
    assert _train(files, "--overwrite", "--dkd-weight", "1") == 2
    assert "dkd_weight and dkd_prototypes go together" in capsys.readouterr().err
