"""Tests of the 2D segmentation evaluation and `dve-perception evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dve_perception.cli.main import main
from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.errors import InputError
from dve_perception.evaluation.segmentation_eval import evaluate_segmentation
from dve_perception.frames import EmbeddingFrame, RGBDFrame, to_embedding_frame

DIM = 8


class OracleEmbedder:
    """Emits, per pixel, a chosen class's unit vector; finds the sample by `stamp_ns` = index."""

    def __init__(self, dataset: RGBDDataset, vectors: torch.Tensor, mapping: dict[int, int]):
        self.dataset, self.vectors, self.mapping = dataset, vectors, mapping

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        semantic = self.dataset[frame.stamp_ns].semantic
        emitted = semantic.clone()
        for source, target in self.mapping.items():
            emitted[semantic == source] = target
        emitted[semantic == 0] = 1  # void pixels must not matter
        embedding = self.vectors[emitted - 1].permute(2, 0, 1)
        return to_embedding_frame(frame, embedding / embedding.norm(dim=0, keepdim=True))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> RGBDDataset:
    root = write_synthetic_dataset(tmp_path_factory.mktemp("ds"), samples=2, size=(32, 64))
    return RGBDDataset(root, "val")


def _label_counts(dataset: RGBDDataset) -> torch.Tensor:
    labels = torch.cat([dataset[i].semantic.flatten() for i in range(len(dataset))])
    return torch.bincount(labels, minlength=dataset.num_classes + 1)


def test_an_oracle_embedder_scores_miou_one(dataset: RGBDDataset) -> None:
    prototypes = torch.eye(3, DIM)
    oracle = OracleEmbedder(dataset, prototypes, {})
    result = evaluate_segmentation(oracle, dataset, prototypes, mode="text")
    assert result.miou == pytest.approx(1.0)
    assert result.matrix.valid_pixels == int(_label_counts(dataset)[1:].sum())


def test_swapping_two_classes_gives_the_hand_computed_miou(dataset: RGBDDataset) -> None:
    prototypes = torch.eye(3, DIM)
    oracle = OracleEmbedder(dataset, prototypes, {1: 2, 2: 1})
    result = evaluate_segmentation(oracle, dataset, prototypes, mode="visual_mean")
    # Walls become floor and vice versa: IoU 0 for both, chairs stay right (IoU 1).
    counts = _label_counts(dataset)
    assert result.matrix.iou().tolist() == [0.0, 0.0, 1.0]
    assert result.miou == pytest.approx(1 / 3)
    assert result.matrix.pixel_accuracy() == pytest.approx(float(counts[3] / counts[1:].sum()))


def test_linear_probing_uses_the_head_without_normalising_it(dataset: RGBDDataset) -> None:
    # Class 2's row is long: cosine picks class 1 on wall pixels, the raw head picks class 2.
    head = torch.zeros(3, DIM)
    head[0, 0], head[1, 0], head[1, 1], head[2, 2] = 1.0, 2.0, 2.0, 1.0
    oracle = OracleEmbedder(dataset, head, {})
    assert evaluate_segmentation(oracle, dataset, head, mode="text").miou == pytest.approx(1.0)
    result = evaluate_segmentation(oracle, dataset, head, mode="linear_probing")
    counts = _label_counts(dataset).double()
    assert result.matrix.iou()[0] == 0.0
    assert result.matrix.iou()[1] == pytest.approx(float(counts[2] / (counts[1] + counts[2])))


def test_the_tiny_model_pipeline_runs_through_the_evaluation(
    dataset: RGBDDataset, tiny_model: torch.nn.Module
) -> None:
    from dve_perception.perception.backends import make_backend
    from dve_perception.perception.pipeline import PerceptionPipeline
    from dve_perception.perception.preprocess import PreprocessConfig

    pipeline = PerceptionPipeline(
        make_backend("torch", model=tiny_model), PreprocessConfig(height=32, width=64)
    )
    prototypes = torch.randn(3, pipeline.embedding_dim, generator=torch.Generator().manual_seed(0))
    result = evaluate_segmentation(pipeline, dataset, prototypes, mode="text", limit=1)
    assert 0.0 <= result.miou <= 1.0
    assert result.matrix.valid_pixels == int((dataset[0].semantic > 0).sum())
    assert "mIoU" in result.format_table() and set(result.to_dict()["iou"]) == {
        "wall",
        "floor",
        "chair",
    }


def test_bad_mode_and_prototype_count_are_rejected(dataset: RGBDDataset) -> None:
    oracle = OracleEmbedder(dataset, torch.eye(3, DIM), {})
    with pytest.raises(InputError, match="unknown evaluation mode 'texts'"):
        evaluate_segmentation(oracle, dataset, torch.eye(3, DIM), mode="texts")
    with pytest.raises(InputError, match="2 class vectors for a dataset with 3 classes"):
        evaluate_segmentation(oracle, dataset, torch.eye(2, DIM), mode="text")


def test_cli_prints_json_with_a_prototype_file(
    dataset: RGBDDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import dve_perception.perception.pipeline_setup as setup

    prototypes = torch.eye(3, DIM)
    monkeypatch.setattr(
        setup,
        "build_pipeline",
        lambda choice: (OracleEmbedder(dataset, prototypes, {1: 2, 2: 1}), {"weights": "oracle"}),
    )
    np.save(tmp_path / "protos.npy", prototypes.numpy())
    argv = ["evaluate", str(dataset.root), "--prototypes", str(tmp_path / "protos.npy"), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "visual_mean" and report["miou"] == pytest.approx(1 / 3)
    assert report["iou"] == {"wall": 0.0, "floor": 0.0, "chair": 1.0}


def test_cli_reports_bad_options_and_files(dataset: RGBDDataset, tmp_path: Path, capsys) -> None:
    both = ["--prototypes", "x.npy", "--linear-probing", "y.pth"]
    assert main(["evaluate", str(dataset.root), *both]) == 2
    assert "not both" in capsys.readouterr().err
    missing = ["--prototypes", str(tmp_path / "none.npy")]
    assert main(["evaluate", str(dataset.root), *missing]) == 2
    assert "prototype file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _write_eye_targets(dataset: RGBDDataset, folder: Path, drop_class: int) -> None:
    from dve_perception.training.targets import SegmentTargets, save_targets

    folder.mkdir(parents=True)
    for index, sample_id in enumerate(dataset.ids):
        semantic = dataset[index].semantic.numpy().astype(np.int32)
        semantic[semantic == drop_class] = 0
        classes = [c for c in range(1, dataset.num_classes + 1) if (semantic == c).any()]
        segment_ids = np.zeros_like(semantic)
        for k, c in enumerate(classes, start=1):
            segment_ids[semantic == c] = k
        save_targets(
            folder / f"{sample_id}.npz",
            SegmentTargets(
                segment_ids=segment_ids,
                vectors=np.eye(3, DIM, dtype=np.float16)[[c - 1 for c in classes]],
                class_ids=np.array(classes, dtype=np.int32),
                image_vector=np.zeros(DIM, dtype=np.float16),
            ),
        )


def test_cli_computes_visual_mean_prototypes_from_a_targets_folder(
    dataset: RGBDDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import dve_perception.perception.pipeline_setup as setup

    # Targets give wall and floor their one-hot vectors; the chair has none and takes the text
    # prototype. An oracle emitting one-hot vectors then scores mIoU 1 only if both sources are
    # used, each for the right classes.
    _write_eye_targets(dataset, tmp_path / "targets", drop_class=3)
    text_calls = []

    def text(names: list[str], text_model: Path | None, models_dir: Path) -> tuple:
        text_calls.append(names)
        return torch.eye(3, DIM)[[1, 0, 2]], {"text_model": "fake", "meaningful_text": True}

    monkeypatch.setattr(setup, "class_prototypes", text)
    oracle = OracleEmbedder(dataset, torch.eye(3, DIM), {})
    monkeypatch.setattr(setup, "build_pipeline", lambda choice: (oracle, {}))
    argv = ["evaluate", str(dataset.root), "--prototypes", f"visual-mean:{tmp_path / 'targets'}"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "visual_mean" and report["miou"] == pytest.approx(1.0)
    assert text_calls == [["wall", "floor", "chair"]]
    missing = ["--prototypes", f"visual-mean:{tmp_path / 'none'}"]
    assert main(["evaluate", str(dataset.root), *missing]) == 2
    assert "targets folder" in capsys.readouterr().err
