"""Tests of `dve-perception train-linear-probe` with a patched network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dve_perception.cli.main import main
from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.frames import EmbeddingFrame, RGBDFrame, to_embedding_frame
from dve_perception.model.checkpoint import load_linear_probing_weights, read_checkpoint_file
from dve_perception.training.targets import SegmentTargets, save_targets

# The published head format is 768-d, which `evaluate --linear-probing` expects.
DIM = 768
CLASS_VECTORS = torch.eye(3, DIM) + torch.eye(DIM)[3]


class Oracle:
    """Emits each labelled pixel's class vector (void pixels: class 1)."""

    def __init__(self, dataset: RGBDDataset) -> None:
        self.dataset = dataset

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        labels = self.dataset[frame.stamp_ns].semantic.clamp_min(1)
        embedding = CLASS_VECTORS[labels - 1].permute(2, 0, 1)
        return to_embedding_frame(frame, embedding / embedding.norm(dim=0, keepdim=True))


@pytest.fixture
def patched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    import dve_perception.perception.pipeline_setup as setup

    root = write_synthetic_dataset(tmp_path / "ds", samples=2, size=(32, 64))
    dataset = RGBDDataset(root, "train")
    calls = {"text": 0}

    def text(names: list[str], text_model: Path | None, models_dir: Path) -> tuple:
        calls["text"] += 1
        return CLASS_VECTORS[[1, 0, 2]], {"text_model": "fake", "meaningful_text": True}

    monkeypatch.setattr(setup, "class_prototypes", text)
    monkeypatch.setattr(setup, "build_pipeline", lambda choice: (Oracle(dataset), {}))
    return {"root": root, "dataset": dataset, "calls": calls}


def test_cli_trains_a_head_that_evaluate_reads_back(patched: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "head.pth"
    argv = ["train-linear-probe", str(patched["root"]), "--out", str(out)]
    assert main([*argv, "--epochs", "20", "--lr", "0.05", "--batch-size", "1"]) == 0
    assert "written to" in capsys.readouterr().out
    weight = load_linear_probing_weights(out)
    assert weight.shape == (3, DIM)
    logs = read_checkpoint_file(out)["logs"]
    assert logs["init"] == "text" and logs["losses"][-1] < logs["losses"][0]
    assert main(["evaluate", str(patched["root"]), "--linear-probing", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The text init swaps wall and floor (mIoU 1/3); the trained head gets every pixel right.
    assert report["mode"] == "linear_probing" and report["miou"] == pytest.approx(1.0)


def _write_targets(root: Path, dataset: RGBDDataset, drop_class: int) -> Path:
    folder = root / "targets" / "teacher"
    folder.mkdir(parents=True)
    for index, sample_id in enumerate(dataset.ids):
        semantic = dataset[index].semantic.numpy()
        semantic = np.where(semantic == drop_class, 0, semantic).astype(np.int32)
        classes = [c for c in (1, 2, 3) if (semantic == c).any()]
        segment_ids = np.zeros_like(semantic)
        for k, c in enumerate(classes, start=1):
            segment_ids[semantic == c] = k
        save_targets(
            folder / f"{sample_id}.npz",
            SegmentTargets(
                segment_ids=segment_ids,
                vectors=CLASS_VECTORS[[c - 1 for c in classes]].numpy().astype(np.float16),
                class_ids=np.array(classes, dtype=np.int32),
                image_vector=np.zeros(DIM, dtype=np.float16),
            ),
        )
    return folder


def test_visual_mean_init_uses_text_only_for_classes_without_examples(
    patched: dict, tmp_path: Path
) -> None:
    folder = _write_targets(patched["root"], patched["dataset"], drop_class=3)
    out = tmp_path / "head.pth"
    argv = ["train-linear-probe", str(patched["root"]), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--lr", "1e-9", "--init", f"visual-mean:{folder}"]) == 0
    assert patched["calls"]["text"] == 1  # the chair has no targets
    # With a negligible lr the head stays at its init: visual means of wall and floor (image
    # vectors are zero, so the mean segment vector), the chair's text prototype.
    expected = CLASS_VECTORS / CLASS_VECTORS.norm(dim=1, keepdim=True)
    torch.testing.assert_close(load_linear_probing_weights(out), expected, atol=1e-3, rtol=0)


def test_cli_reports_bad_options_in_one_line(patched: dict, tmp_path: Path, capsys) -> None:
    base = ["train-linear-probe", str(patched["root"]), "--out", str(tmp_path / "h.pth")]
    assert main([*base, "--init", "visual"]) == 2
    assert "expected 'text' or 'visual-mean:TARGETS_DIR'" in capsys.readouterr().err
    assert main([*base, "--init", f"visual-mean:{tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "targets folder" in err and "does not exist" in err and err.count("\n") == 1
    assert main([*base, "--epochs", "0"]) == 2
    assert "epochs and batch_size must be >= 1" in capsys.readouterr().err
    assert main([*base[:1], str(tmp_path / "nowhere"), *base[2:]]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "h.pth").exists()


def test_a_class_list_that_does_not_match_the_head_is_rejected(
    patched: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import dve_perception.perception.pipeline_setup as setup

    monkeypatch.setattr(setup, "class_prototypes", lambda *a: (torch.eye(2, DIM), {}))
    argv = ["train-linear-probe", str(patched["root"]), "--out", str(tmp_path / "h.pth")]
    assert main(argv) == 2
    assert "2 initial class vectors for a dataset with 3 classes" in capsys.readouterr().err
