"""Tests of the linear-probing head, its training on frozen embeddings, and its file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.errors import ConfigError, InputError
from dve_perception.evaluation.segmentation_eval import evaluate_segmentation
from dve_perception.frames import EmbeddingFrame, RGBDFrame, to_embedding_frame
from dve_perception.model.checkpoint import load_linear_probing_weights, read_checkpoint_file
from dve_perception.perception.postprocess import class_scores
from dve_perception.training.linear_probing import (
    LinearProbe,
    LinearProbeConfig,
    prototypes_from_targets,
    save_linear_probe,
    train_linear_probe,
)
from dve_perception.training.targets import SegmentTargets, save_targets, visual_mean_prototypes

DIM = 8
# Each class's embedding shares a common direction (as CLIP embeddings do) plus its own one.
CLASS_VECTORS = torch.eye(3, DIM) * 0.6 + torch.eye(DIM)[3] * 0.8
# Wall and floor swapped: an initial head that gets the two largest classes wrong.
SWAPPED = CLASS_VECTORS[[1, 0, 2]]


class NoisyOracle:
    """Emits its class's vector plus seeded noise per pixel at half the label resolution."""

    def __init__(self, dataset: RGBDDataset, noise: float = 0.05, dim: int = DIM) -> None:
        self.dataset, self.noise, self.calls = dataset, noise, 0
        self.vectors = CLASS_VECTORS if dim == DIM else torch.eye(3, dim) + torch.eye(dim)[3]

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        self.calls += 1
        semantic = self.dataset[frame.stamp_ns].semantic
        small = F.interpolate(semantic[None, None].float(), scale_factor=0.5, mode="nearest")
        labels = small[0, 0].long().clamp_min(1)  # void pixels get class 1: they must not matter
        embedding = self.vectors[labels - 1].permute(2, 0, 1)
        generator = torch.Generator().manual_seed(frame.stamp_ns)
        embedding = embedding + self.noise * torch.randn(embedding.shape, generator=generator)
        return to_embedding_frame(frame, embedding / embedding.norm(dim=0, keepdim=True))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> RGBDDataset:
    root = write_synthetic_dataset(tmp_path_factory.mktemp("lp"), samples=3, size=(32, 64))
    return RGBDDataset(root, "train")


def _miou(dataset: RGBDDataset, head: torch.Tensor) -> float:
    return evaluate_segmentation(NoisyOracle(dataset), dataset, head, mode="linear_probing").miou


def test_the_probe_is_a_bias_free_1x1_conv_on_normalised_embeddings() -> None:
    prototypes = torch.randn(4, DIM, generator=torch.Generator().manual_seed(1))
    probe = LinearProbe.from_prototypes(prototypes)
    assert probe.conv.bias is None and probe.conv.kernel_size == (1, 1)
    embedding = 3.0 * torch.randn(2, DIM, 5, 6, generator=torch.Generator().manual_seed(2))
    unit = embedding / embedding.norm(dim=1, keepdim=True)
    expected = torch.einsum("kd,bdhw->bkhw", prototypes, unit)
    torch.testing.assert_close(probe(embedding), expected)
    torch.testing.assert_close(
        probe(embedding), class_scores(embedding, prototypes, normalize_prototypes=False)
    )
    with torch.no_grad():
        probe.conv.weight.zero_()
    assert prototypes.abs().sum() > 0  # the probe holds a copy, not the caller's tensor


def test_training_fixes_a_wrong_initial_head_and_the_loss_falls(dataset: RGBDDataset) -> None:
    before = _miou(dataset, SWAPPED)
    config = LinearProbeConfig(epochs=40, lr=5e-2, batch_size=1)
    result = train_linear_probe(NoisyOracle(dataset), dataset, SWAPPED, config)
    after = _miou(dataset, result.probe.weight)
    # The best a linear head can do here: the true class directions, scaled to sharpen them.
    # It is below 1 only because the embeddings are at half resolution (blurred boundaries).
    best = _miou(dataset, 10 * CLASS_VECTORS)
    assert before < 0.5  # wall and floor are swapped, only the boxes are right
    assert best > 0.9 and after > best - 0.02
    assert len(result.losses) == 40 and result.losses[-1] < 0.5 * result.losses[0]


def test_training_is_seeded_and_the_cache_does_not_change_the_result(
    dataset: RGBDDataset,
) -> None:
    config = LinearProbeConfig(epochs=3, lr=1e-2, batch_size=2, seed=7)
    cached_oracle, uncached_oracle = NoisyOracle(dataset), NoisyOracle(dataset)
    cached = train_linear_probe(cached_oracle, dataset, SWAPPED, config)
    again = train_linear_probe(NoisyOracle(dataset), dataset, SWAPPED, config)
    uncached = train_linear_probe(
        uncached_oracle,
        dataset,
        SWAPPED,
        LinearProbeConfig(**{**config.__dict__, "cache_bytes": 0}),
    )
    assert torch.equal(cached.probe.weight, again.probe.weight)
    assert torch.equal(cached.probe.weight, uncached.probe.weight)
    assert cached_oracle.calls == len(dataset)  # the frozen backbone runs once per sample
    assert uncached_oracle.calls == 3 * len(dataset)


def test_sgd_also_trains(dataset: RGBDDataset) -> None:
    config = LinearProbeConfig(epochs=5, lr=1e-1, batch_size=1, optimizer="sgd")
    result = train_linear_probe(NoisyOracle(dataset), dataset, SWAPPED, config)
    assert result.losses[-1] < result.losses[0]


def test_save_and_load_round_trip_exactly_in_the_published_format(tmp_path: Path) -> None:
    weight = torch.randn(5, 768, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "sub" / "head.pth"
    save_linear_probe(path, LinearProbe.from_prototypes(weight), epoch=50, logs={"losses": [1.0]})
    assert torch.equal(load_linear_probing_weights(path), weight)
    raw = read_checkpoint_file(path)
    assert raw["linear_probing_head_state_dict"]["weight"].shape == (5, 768, 1, 1)
    assert raw["epoch"] == 50 and raw["logs"] == {"losses": [1.0]}
    assert [p.name for p in path.parent.iterdir()] == ["head.pth"]  # no temporary file left


def test_a_saved_head_evaluates_like_the_trained_probe(
    dataset: RGBDDataset, tmp_path: Path
) -> None:
    config = LinearProbeConfig(epochs=2, lr=1e-2, batch_size=3)
    result = train_linear_probe(NoisyOracle(dataset), dataset, SWAPPED, config)
    save_linear_probe(tmp_path / "head.pth", result.probe)
    loaded = load_linear_probing_weights(tmp_path / "head.pth", embedding_dim=DIM)
    direct = evaluate_segmentation(
        NoisyOracle(dataset), dataset, result.probe.weight, mode="linear_probing"
    )
    saved = evaluate_segmentation(NoisyOracle(dataset), dataset, loaded, mode="linear_probing")
    assert torch.equal(direct.matrix.counts, saved.matrix.counts)


def _write_targets(dataset: RGBDDataset, folder: Path, drop_class: int | None = None) -> None:
    generator = torch.Generator().manual_seed(4)
    folder.mkdir(parents=True)
    for index, sample_id in enumerate(dataset.ids):
        semantic = dataset[index].semantic.numpy()
        if drop_class is not None:
            semantic = np.where(semantic == drop_class, 0, semantic)
        classes = [c for c in range(1, 4) if (semantic == c).any()]
        segment_ids = np.zeros_like(semantic, dtype=np.int32)
        for k, c in enumerate(classes, start=1):
            segment_ids[semantic == c] = k
        vectors = F.normalize(torch.randn(len(classes), DIM, generator=generator), dim=-1)
        image = F.normalize(torch.randn(DIM, generator=generator), dim=0)
        save_targets(
            folder / f"{sample_id}.npz",
            SegmentTargets(
                segment_ids=segment_ids,
                vectors=vectors.numpy().astype(np.float16),
                class_ids=np.array(classes, dtype=np.int32),
                image_vector=image.numpy().astype(np.float16),
            ),
        )


def test_visual_mean_init_equals_the_targets_prototypes(
    dataset: RGBDDataset, tmp_path: Path
) -> None:
    _write_targets(dataset, tmp_path / "all")
    called = []
    prototypes, unseen = prototypes_from_targets(tmp_path / "all", 3, lambda: called.append(1))
    files = sorted((tmp_path / "all").glob("*.npz"))
    assert torch.equal(prototypes, visual_mean_prototypes(files, 3))
    assert unseen == [] and called == []  # the text encoder is not needed


def test_classes_without_targets_fall_back_to_text(dataset: RGBDDataset, tmp_path: Path) -> None:
    _write_targets(dataset, tmp_path / "nochair", drop_class=3)
    text = torch.full((3, DIM), 2.0)
    prototypes, unseen = prototypes_from_targets(tmp_path / "nochair", 3, lambda: text)
    assert unseen == [3]
    torch.testing.assert_close(prototypes[2], torch.full((DIM,), 2.0) / (2.0 * DIM**0.5))
    files = sorted((tmp_path / "nochair").glob("*.npz"))
    torch.testing.assert_close(prototypes[:2], visual_mean_prototypes(files, 3)[:2])


def test_bad_inputs_give_clear_errors(dataset: RGBDDataset, tmp_path: Path) -> None:
    oracle = NoisyOracle(dataset)
    with pytest.raises(InputError, match="2 initial class vectors for a dataset with 3 classes"):
        train_linear_probe(oracle, dataset, torch.eye(2, DIM), LinearProbeConfig(epochs=1))
    with pytest.raises(InputError, match="8-d embeddings but the prototypes are 5-d"):
        train_linear_probe(oracle, dataset, torch.eye(3, 5), LinearProbeConfig(epochs=1))
    with pytest.raises(InputError, match="init_prototypes must be a floating"):
        train_linear_probe(oracle, dataset, torch.eye(3, DIM).long(), LinearProbeConfig(epochs=1))
    with pytest.raises(InputError, match="targets folder .*missing does not exist"):
        prototypes_from_targets(tmp_path / "missing", 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .npz target files"):
        prototypes_from_targets(tmp_path / "empty", 3)
    with pytest.raises(ConfigError, match="optimizer is 'adam'"):
        LinearProbeConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="lr must be a positive number, got nan"):
        LinearProbeConfig(lr=float("nan"))


def test_a_nan_loss_stops_training_with_a_clear_message(dataset: RGBDDataset) -> None:
    class NaNOracle(NoisyOracle):
        def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
            out = super().embed(frame)
            out.embedding[:, 4, 20] = float("nan")  # a labelled pixel
            return out

    with pytest.raises(InputError, match="linear-probe loss became nan in epoch 1"):
        train_linear_probe(NaNOracle(dataset), dataset, SWAPPED, LinearProbeConfig(epochs=1))
