"""Storage behaviour: memory budget and eviction, the weight cap, and the PCA encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import ConfigError
from dve_perception.mapping import EmbeddingMap, MapConfig

DIM = 32
H, W = 20, 20
K = np.array([[20.0, 0.0, 9.5], [0.0, 20.0, 9.5], [0.0, 0.0, 1.0]])


def _frame(seed: int, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, H, W, generator=generator), torch.full((H, W), 1.012)


def _pose(x: float) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = x
    return T


def test_the_map_never_exceeds_its_budget_and_keeps_the_most_recent_region():
    emap = EmbeddingMap(0.05, embedding_dim=DIM, max_voxels=600, eviction_fraction=0.1)
    last_frame_voxels = None
    for step in range(12):  # the camera slides along x, 0.5 m per frame
        before = set(map(tuple, emap.points().tolist()))
        stats = emap.integrate(*_frame(step), K, _pose(0.5 * step))
        assert len(emap) <= 600
        last_frame_voxels = stats.voxels_observed
        if step > 3:
            assert stats.voxels_evicted > 0 or len(before) + stats.voxels_new <= 600
    assert emap.stats()["evicted"] > 0
    # Everything the last frame saw is kept; what is left otherwise is the newest history.
    points = emap.points()
    assert len(emap) >= last_frame_voxels
    assert points[:, 0].max() > 0.5 * 11
    assert points[:, 0].min() > 0.5 * 11 - 2.0


def test_a_frame_larger_than_the_budget_keeps_the_nearest_voxels():
    emap = EmbeddingMap(0.05, embedding_dim=DIM, max_voxels=50)
    embedding, depth = _frame(0)
    depth[:, :10] = 2.012  # left half farther away
    stats = emap.integrate(embedding, depth, K, _pose(0.0))
    assert len(emap) == 50
    assert stats.voxels_evicted == stats.voxels_observed - 50
    assert np.allclose(emap.points()[:, 2], 1.025)  # only the near half survived


def test_the_weight_cap_lets_the_map_follow_a_change():
    emap = EmbeddingMap(1.0, embedding_dim=DIM, weight_cap=5.0)
    old, new = _frame(1), _frame(2)
    pose = _pose(0.5)
    for _ in range(20):
        emap.integrate(old[0][:, :1, :1].expand(DIM, H, W), old[1], K, pose)
    assert emap.storage.weights.max().item() == pytest.approx(5.0)
    target = new[0][:, 0, 0] / new[0][:, 0, 0].norm()
    for _ in range(20):
        emap.integrate(new[0][:, :1, :1].expand(DIM, H, W), new[1], K, pose)
    # With a cap of 5 each frame keeps 5/6 of the old content: after 20 frames 2.6 % is left.
    features = emap.storage.features.float()
    cosine = (features @ target) / features.norm(dim=1)
    assert cosine.min().item() > 0.99


def test_pca_encoding_fits_a_basis_and_keeps_scores_close():
    settings = dict(embedding_dim=DIM, feature_encoding="pca", pca_dim=8, pca_fit_voxels=200)
    pca, exact = EmbeddingMap(0.05, **settings), EmbeddingMap(0.05, embedding_dim=DIM)
    # Embeddings from an 8-d subspace plus small noise: an 8-d basis must keep them.
    generator = torch.Generator().manual_seed(0)
    subspace = torch.linalg.qr(torch.randn(DIM, 8, generator=generator))[0]
    for step in range(4):
        coefficients = torch.randn(8, H, W, generator=generator)
        embedding = torch.einsum("dk,khw->dhw", subspace, coefficients)
        embedding += 0.002 * torch.randn(DIM, H, W, generator=generator)
        for emap in (pca, exact):
            emap.integrate(embedding, torch.full((H, W), 1.012), K, _pose(0.3 * step))
    assert pca.storage.basis is not None and pca.storage.feature_dim == 8
    assert pca.stats()["feature_encoding"] == "pca"
    query = torch.randn(DIM, generator=generator)
    query /= query.norm()
    a = pca.query(query).cosine
    b = exact.query(query).cosine
    assert np.abs(a - b).max() < 0.02
    saved = exact.storage.bytes_per_voxel() - pca.storage.bytes_per_voxel()
    assert saved == pytest.approx(2 * (DIM - 8))  # float16 coefficients instead of dimensions


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"voxel_size_m": 0.0}, "voxel_size_m"),
        ({"voxel_size_m": -0.05}, "voxel_size_m"),
        ({"voxel_size_m": float("nan")}, "voxel_size_m"),
        ({"max_voxels": 0}, "max_voxels"),
        ({"weight_cap": 0}, "weight_cap"),
        ({"feature_encoding": "int4"}, "feature_encoding"),
        ({"feature_encoding": "pca", "pca_dim": 768}, "pca_dim"),
        ({"min_depth_m": 3.0, "max_depth_m": 2.0}, "min_depth_m"),
        ({"eviction_fraction": 1.5}, "eviction_fraction"),
    ],
)
def test_invalid_settings_are_rejected(settings, match):
    with pytest.raises(ConfigError, match=match):
        MapConfig(**settings)


def test_clear_empties_the_map_but_keeps_settings():
    emap = EmbeddingMap(0.1, embedding_dim=DIM)
    emap.integrate(*_frame(0), K, _pose(0))
    emap.clear()
    assert len(emap) == 0 and emap.voxel_size_m == 0.1 and emap.stats()["frames"] == 0


def test_a_basis_needs_the_pca_encoding_and_enough_voxels():
    with pytest.raises(ConfigError, match="feature_encoding 'pca'"):
        EmbeddingMap(0.05, embedding_dim=DIM).storage.fit_basis()
    emap = EmbeddingMap(0.05, embedding_dim=DIM, feature_encoding="pca", pca_dim=8)
    with pytest.raises(ConfigError, match="at least pca_dim"):
        emap.storage.fit_basis()
