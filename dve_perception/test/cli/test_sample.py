"""The sample command's work: one frame in, PNGs and a summary out, honest about its weights."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dve_perception.cli.sample import bundled_sample, run_sample
from dve_perception.errors import InputError

SAMPLE_HW = (1080, 1440)


@pytest.fixture
def models_dir(tmp_path, reducedres_checkpoint, tiny_text_model) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    os.symlink(reducedres_checkpoint, folder / "dveformer_reducedres_mixed.pth")
    os.symlink(tiny_text_model, folder / "clip-vit-large-patch14-336")
    return folder


def test_installed_weights_give_full_size_outputs(tmp_path, models_dir):
    result = run_sample(tmp_path / "out", models_dir=models_dir)
    assert result.meaningful
    names = {p.name for p in result.files}
    assert names == {
        "embedding_pca.png",
        "segmentation.png",
        "segmentation_overlay.png",
        "segmentation_labels.png",
        "summary.json",
    }
    labels = np.asarray(Image.open(tmp_path / "out" / "segmentation_labels.png"))
    assert labels.shape == SAMPLE_HW and labels.max() < 40
    assert Image.open(tmp_path / "out" / "segmentation.png").size == SAMPLE_HW[::-1]
    assert Image.open(tmp_path / "out" / "embedding_pca.png").size == (160, 120)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["weights"].endswith("dveformer_reducedres_mixed.pth")
    assert summary["embedding_shape"] == [768, 120, 160]
    assert abs(sum(summary["class_fractions"].values()) - 1.0) < 1e-3
    assert set(summary["class_fractions"]) <= set(summary["vocabulary"])


def test_missing_weights_fall_back_to_generated_ones_and_say_so(tmp_path, tiny_text_model, caplog):
    empty = tmp_path / "no_models"
    empty.mkdir()
    with caplog.at_level(logging.WARNING):
        result = run_sample(
            tmp_path / "out", models_dir=empty, text_model=tiny_text_model, vocabulary="sofa,lamp"
        )
    assert not result.meaningful
    assert "GENERATED weights" in caplog.text
    assert result.summary["weights"] == "generated (seed 1)"
    assert "no meaning" in result.summary["note"]


def test_linear_probing_head_replaces_text_prototypes(tmp_path, models_dir):
    # A head whose single non-zero class wins everywhere makes the expected labels known.
    weight = torch.zeros(3, 768, 1, 1)
    weight[2] = 1.0
    lp = tmp_path / "lp.pth"
    torch.save({"linear_probing_head_state_dict": {"weight": weight}, "epoch": 0, "logs": {}}, lp)
    embedding_sign = run_sample(
        tmp_path / "out", models_dir=models_dir, linear_probing=lp, vocabulary="a,b,c"
    )
    labels = np.asarray(Image.open(tmp_path / "out" / "segmentation_labels.png"))
    # Pixels whose embedding sums positive pick class 2, the others tie at 0 and pick class 0.
    assert set(np.unique(labels)) <= {0, 2} and (labels == 2).any()
    assert embedding_sign.summary["classes_from"] == str(lp)
    with pytest.raises(InputError, match="has 3 classes but the vocabulary has 2 names"):
        run_sample(tmp_path / "out2", models_dir=models_dir, linear_probing=lp, vocabulary="a,b")


def test_mismatched_depth_is_reported(tmp_path, models_dir):
    rgb, _ = bundled_sample()
    small_depth = tmp_path / "depth.png"
    Image.fromarray(np.full((480, 640), 1000, dtype=np.uint16)).save(small_depth)
    with pytest.raises(InputError, match="register depth to color"):
        run_sample(tmp_path / "out", rgb_path=rgb, depth_path=small_depth, models_dir=models_dir)
