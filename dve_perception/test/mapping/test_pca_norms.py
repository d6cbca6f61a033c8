"""pca maps keep the norm of each voxel's full mean, so scores divide by |m|, not |coefficients|."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError, MapFileError
from dve_perception.mapping import EmbeddingMap, MapConfig
from dve_perception.mapping.map_io import MapSnapshot, load_map, save_map
from dve_perception.mapping.voxel_map import VoxelEmbeddingMap

D, K = 16, 4


def axis_storage(**settings) -> VoxelEmbeddingMap:
    """A pca storage whose basis is the first K coordinate axes (so B^T x = x[:K])."""
    config = MapConfig(voxel_size_m=0.1, embedding_dim=D, feature_encoding="pca", pca_dim=K)
    storage = VoxelEmbeddingMap(config)
    one = torch.zeros(1, dtype=torch.int64)
    basis = torch.eye(D)[:, :K]
    storage.load_state(
        torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, K).half(), torch.ones(1), one, basis
    )
    storage.remove(torch.zeros(1, dtype=torch.bool))  # empty, basis kept
    return storage


def observation(head: list[float], tail_axis: int, tail: float) -> torch.Tensor:
    x = torch.zeros(D, dtype=torch.float64)
    x[:K] = torch.tensor(head, dtype=torch.float64)
    x[tail_axis] = tail
    return x / x.norm()


def test_fused_norm_is_the_exact_norm_of_the_mean_when_residuals_are_orthogonal():
    storage = axis_storage()
    # Three views whose parts outside the basis lie on different axes (independent residuals).
    views = [observation([1, 0.2, 0, 0], K, 0.5), observation([0.9, 0, 0.3, 0], K + 1, 0.4)]
    views.append(observation([1, 0.1, 0.1, 0], K + 2, 0.6))
    weights = [1.0, 0.5, 0.8]
    key = torch.tensor([7])
    for x, w in zip(views, weights, strict=True):
        storage.fuse(key, x.float().unsqueeze(0), torch.tensor([w]), torch.zeros(3))
    mean = sum(w * x for x, w in zip(views, weights, strict=True)) / sum(weights)
    assert torch.allclose(storage.features[0].double(), mean[:K], atol=1e-3)  # float16 code
    assert storage.norms[0].item() == pytest.approx(mean.norm().item(), rel=1e-3)
    query = torch.zeros(1, D)
    query[0, 0] = 1.0
    assert storage.scores(query)[0, 0].item() == pytest.approx(
        (mean[0] / mean.norm()).item(), abs=2e-3
    )


def test_the_code_norm_alone_overstates_scores_that_the_residual_corrects():
    storage = axis_storage()
    x = observation([1, 0, 0, 0], K, 1.0)  # half of the energy outside the basis
    storage.fuse(torch.tensor([1]), x.float().unsqueeze(0), torch.ones(1), torch.zeros(3))
    query = torch.eye(D)[:1]
    assert storage.residual_energy[0].item() == pytest.approx(0.5, rel=1e-5)
    assert storage.scores(query)[0, 0].item() == pytest.approx(2**-0.5, abs=1e-3)  # not 1.0


def test_fit_basis_records_the_energy_the_basis_drops():
    gen = torch.Generator().manual_seed(0)
    config = MapConfig(
        voxel_size_m=0.1, embedding_dim=D, feature_encoding="pca", pca_dim=K, pca_fit_voxels=64
    )
    storage = VoxelEmbeddingMap(config)
    features = torch.randn(64, D, generator=gen)
    features = (features / features.norm(dim=1, keepdim=True) * 0.9).half()
    voxels = torch.stack([torch.arange(64), torch.zeros(64), torch.zeros(64)], 1).long()
    storage.load_state(voxels, features, torch.ones(64), torch.zeros(64, dtype=torch.int64), None)
    storage.fit_basis()
    exact = features.double().norm(dim=1)
    assert torch.allclose(storage.norms.double(), exact, rtol=1e-3)
    assert bool((storage.residual_energy > 0).all())


def fitted_map(seed: int = 0, device: str = "cpu") -> EmbeddingMap:
    gen = torch.Generator().manual_seed(seed)
    emap = EmbeddingMap(
        0.1, embedding_dim=D, feature_encoding="pca", pca_dim=K, pca_fit_voxels=8, device=device
    )
    depth = torch.full((6, 8), 1.0) + torch.rand(6, 8, generator=gen)
    K_cam = np.array([[8.0, 0, 3.5], [0, 8.0, 2.5], [0, 0, 1]])
    for _ in range(3):  # the first frame fits the basis, later ones fuse in coefficient space
        embedding = torch.randn(D, 6, 8, generator=gen)
        emap.integrate(embedding.to(device), depth.to(device), K_cam, np.eye(4))
    assert emap.storage.basis is not None
    return emap


@pytest.mark.gpu
def test_pca_norms_on_cuda_match_those_on_cpu():
    cpu, cuda = fitted_map(), fitted_map(device="cuda")
    assert torch.equal(cpu.storage.keys, cuda.storage.keys.cpu())
    torch.testing.assert_close(cuda.storage.norms.cpu(), cpu.storage.norms, atol=1e-3, rtol=0)


def test_a_saved_pca_map_reloads_with_identical_scores(tmp_path):
    emap = fitted_map()
    emap.save(tmp_path / "m.dvemap")
    back = EmbeddingMap.load(tmp_path / "m.dvemap")
    queries = torch.eye(D)[:3]
    assert torch.equal(back.storage.norms, emap.storage.norms)
    assert torch.equal(back.storage.scores(queries), emap.storage.scores(queries))


def as_format_1(path: Path) -> None:
    """Rewrite a map file as format 1 wrote it: no norms member, version 1."""
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(np.load(io.BytesIO(contents["header.npy"])).tobytes())
    header["format_version"] = 1
    header["arrays"].pop("norms")
    contents.pop("norms.npy")
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(json.dumps(header).encode(), np.uint8))
    contents["header.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def test_a_format_1_pca_file_loads_with_the_norms_of_its_coefficients(tmp_path):
    emap = fitted_map()
    path = tmp_path / "old.dvemap"
    emap.save(path)
    as_format_1(path)
    back = EmbeddingMap.load(path)
    features = back.storage.features.to(torch.float32)
    assert torch.equal(back.storage.norms, torch.linalg.vector_norm(features, dim=1))
    assert torch.equal(back.storage.features, emap.storage.features)


def test_a_format_1_file_that_lists_norms_is_refused(tmp_path):
    path = tmp_path / "m.dvemap"
    fitted_map().save(path)
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(np.load(io.BytesIO(contents["header.npy"])).tobytes())
    header["format_version"] = 1
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(json.dumps(header).encode(), np.uint8))
    contents["header.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    with pytest.raises(MapFileError, match="header lists arrays .*'norms'"):
        load_map(path)


def snapshot(encoding: str, norms: np.ndarray | None) -> MapSnapshot:
    f = K if encoding == "pca" else D
    basis = np.eye(D, K, dtype=np.float32) if encoding == "pca" else None
    return MapSnapshot(
        voxel_size_m=0.1,
        embedding_dim=D,
        feature_encoding=encoding,
        voxels=np.arange(6, dtype=np.int32).reshape(2, 3),
        features=np.ones((2, f), np.float16),
        weights=np.ones(2, np.float32),
        last_seen=np.zeros(2, np.int64),
        basis=basis,
        frame_count=1,
        evicted_count=0,
        settings={},
        norms=norms,
    )


def test_norms_round_trip_bit_exactly(tmp_path):
    norms = np.array([2.5, np.float32(1e-7)], np.float32)
    save_map(tmp_path / "m.dvemap", snapshot("pca", norms))
    assert load_map(tmp_path / "m.dvemap").norms.tobytes() == norms.tobytes()


@pytest.mark.parametrize(
    ("encoding", "norms", "match"),
    [
        ("float16", np.ones(2, np.float32), "norms belong to pca maps"),
        ("pca", np.array([0.1, -0.1], np.float32), "norms must be finite and >= 0"),
        ("pca", np.array([0.1, np.nan], np.float32), "norms must be finite and >= 0"),
        ("pca", np.array([0.1, np.inf], np.float32), "norms must be finite and >= 0"),
        ("pca", np.ones(3, np.float32), r"norms must have shape \(2,\)"),
        ("pca", np.ones(2, np.float64), "norms must have dtype float32"),
    ],
)
def test_snapshot_rejects_invalid_norms(encoding, norms, match):
    with pytest.raises(InputError, match=match):
        snapshot(encoding, norms)


def test_norm_correction_keeps_pca_rankings_closer_to_exact_scores():
    # Scene-like voxel means: one of 4 prototypes + structured variation + independent noise.
    gen = torch.Generator().manual_seed(1)
    dim, n = 96, 3000
    protos = torch.randn(4, dim, generator=gen)
    variation = torch.randn(n, 6, generator=gen) @ torch.randn(6, dim, generator=gen) * 0.2
    noise = torch.randn(n, dim, generator=gen) * 0.08
    means = protos[torch.randint(0, 4, (n,), generator=gen)] + variation + noise
    means = (means / means.norm(dim=1, keepdim=True) * 0.95).half()
    queries = protos / protos.norm(dim=1, keepdim=True)
    exact = (means.double() @ queries.double().T) / means.double().norm(dim=1, keepdim=True)
    config = MapConfig(
        voxel_size_m=0.1, embedding_dim=dim, feature_encoding="pca", pca_dim=16, pca_fit_voxels=n
    )
    storage = VoxelEmbeddingMap(config)
    voxels = torch.stack([torch.arange(n), torch.zeros(n), torch.zeros(n)], 1).long()
    storage.load_state(voxels, means, torch.ones(n), torch.zeros(n, dtype=torch.int64), None)
    storage.fit_basis()
    codes = storage.features.double()
    uncorrected = (codes @ (queries.double() @ storage.basis.double()).T) / codes.norm(
        dim=1, keepdim=True
    )
    corrected = storage.scores(queries).T.double()

    def top50_agreement(scores: torch.Tensor) -> float:
        a, b = exact.topk(50, dim=0).indices, scores.topk(50, dim=0).indices
        return float((a.T.unsqueeze(2) == b.T.unsqueeze(1)).any(2).double().mean())

    assert top50_agreement(corrected) >= 0.8  # loose: the benchmark reports the real numbers
    assert top50_agreement(corrected) > top50_agreement(uncorrected)
    assert (corrected - exact).abs().max() < (uncorrected - exact).abs().max()
