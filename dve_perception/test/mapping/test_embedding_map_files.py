"""Saving and loading whole maps, and PLY export, through the EmbeddingMap facade."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import MapFileError
from dve_perception.mapping import EmbeddingMap
from dve_perception.ply import read_ply

DIM = 24
H, W = 20, 30
K = np.array([[30.0, 0.0, 14.5], [0.0, 30.0, 9.5], [0.0, 0.0, 1.0]])


def _filled_map(**settings) -> EmbeddingMap:
    emap = EmbeddingMap(0.05, embedding_dim=DIM, **settings)
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        T = np.eye(4)
        T[0, 3] = 0.2 * step
        embedding = torch.randn(DIM, H, W, generator=generator)
        emap.integrate(embedding, torch.full((H, W), 1.012), K, T)
    return emap


def _assert_same_state(a: EmbeddingMap, b: EmbeddingMap) -> None:
    sa, sb = a.storage, b.storage
    order_a, order_b = sa.keys.argsort(), sb.keys.argsort()
    assert torch.equal(sa.keys[order_a], sb.keys[order_b])
    assert torch.equal(sa.features[order_a], sb.features[order_b])  # bit-exact float16
    assert torch.equal(sa.weights[order_a], sb.weights[order_b])
    assert torch.equal(sa.last_seen[order_a], sb.last_seen[order_b])
    assert a.config == b.config
    counters = ("voxels", "frames", "evicted", "feature_encoding")
    assert all(a.stats()[name] == b.stats()[name] for name in counters)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"feature_encoding": "pca", "pca_dim": 8, "pca_fit_voxels": 100},
        {"feature_encoding": "pca_int", "pca_dim": 8, "pca_head_dim": 3, "pca_fit_voxels": 100},
    ],
    ids=["float16", "pca", "pca_int"],
)
def test_a_saved_map_loads_back_exactly_and_answers_the_same(tmp_path, settings):
    emap = _filled_map(**settings)
    path = emap.save(tmp_path / "room.dvemap")
    loaded = EmbeddingMap.load(path)
    _assert_same_state(emap, loaded)
    if settings:
        assert torch.equal(loaded.storage.basis, emap.storage.basis)
    query = np.random.default_rng(1).normal(size=DIM)
    np.testing.assert_array_equal(loaded.query(query).cosine, emap.query(query).cosine)


def test_a_loaded_map_keeps_integrating(tmp_path):
    emap = _filled_map()
    loaded = EmbeddingMap.load(emap.save(tmp_path / "m.dvemap"))
    embedding = torch.randn(DIM, H, W)
    for m in (emap, loaded):
        m.integrate(embedding, torch.full((H, W), 1.5), K, np.eye(4))
    _assert_same_state(emap, loaded)


def test_an_empty_map_round_trips(tmp_path):
    emap = EmbeddingMap(0.1, embedding_dim=DIM)
    loaded = EmbeddingMap.load(emap.save(tmp_path / "empty.dvemap"))
    assert len(loaded) == 0 and loaded.voxel_size_m == 0.1


def test_loading_a_corrupted_file_raises_and_keeps_the_running_map(tmp_path):
    emap = _filled_map()
    path = emap.save(tmp_path / "m.dvemap")
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(MapFileError):
        EmbeddingMap.load(path)
    assert len(emap) > 0  # the map in memory is untouched


def test_save_ply_writes_coloured_points_and_scores(tmp_path):
    emap = _filled_map()
    result = emap.query(np.ones(DIM))
    data = read_ply(emap.save_ply(tmp_path / "heat.ply", mode="heat", result=result))
    assert data["x"].shape == (len(emap),)
    np.testing.assert_array_equal(data["score"], result.scores)
    pca = read_ply(emap.save_ply(tmp_path / "pca.ply"))
    assert "score" not in pca and pca["red"].dtype == np.uint8
