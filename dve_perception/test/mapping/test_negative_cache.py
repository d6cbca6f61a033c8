"""Cached negative scores: queries that use them give the same answers and read the map less."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.mapping import CANONICAL_NEGATIVES, EmbeddingMap
from dve_perception.mapping.text_query import query_text

DIM = 24
H, W = 16, 16
K = np.array([[16.0, 0.0, 7.5], [0.0, 16.0, 7.5], [0.0, 0.0, 1.0]])


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True)


def _vectors(count: int, seed: int) -> torch.Tensor:
    return _unit(torch.randn(count, DIM, generator=torch.Generator().manual_seed(seed)))


def _frame_at(step: int) -> tuple:
    """A frame of random embeddings, the camera sliding along x by 0.3 m per step."""
    generator = torch.Generator().manual_seed(100 + step)
    depth = 1.0 + 0.5 * torch.rand(H, W, generator=generator)
    pose = np.eye(4)
    pose[0, 3] = 0.3 * step
    return torch.randn(DIM, H, W, generator=generator), depth, K, pose


def _integrate(emap: EmbeddingMap, step: int) -> None:
    emap.integrate(*_frame_at(step))


def _plain_query(emap: EmbeddingMap, query: torch.Tensor, negatives: torch.Tensor):
    """The same query with the cache switched off (and back on afterwards)."""
    cached = emap.storage.negatives
    emap.cache_negatives(None)
    try:
        return emap.query(query, negatives, top_k=3)
    finally:
        if cached is not None:
            emap.cache_negatives(cached)


MAPS = {
    "float16": {},
    # The basis is fitted while the cache is on, so the refresh after the fit is exercised.
    "pca fitted later": {"feature_encoding": "pca", "pca_dim": 8, "pca_fit_voxels": 1000},
    "pca_int fitted later": {
        "feature_encoding": "pca_int",
        "pca_dim": 12,
        "pca_head_dim": 4,
        "pca_fit_voxels": 1000,
    },
    "evicting": {"max_voxels": 600, "eviction_fraction": 0.1},
}


@pytest.mark.parametrize("settings", MAPS.values(), ids=MAPS.keys())
def test_the_cache_follows_every_change_and_queries_answer_as_without_it(settings):
    emap = EmbeddingMap(0.05, embedding_dim=DIM, **settings)
    for step in range(2):
        _integrate(emap, step)
    canonical, extra = _vectors(4, seed=1), _vectors(1, seed=2)
    emap.cache_negatives(canonical)
    for step in range(2, 8):  # updates, new voxels, a basis fit or evictions, all cached
        _integrate(emap, step)
        emap.storage.hardest_negative()  # read after each frame, as by a query now and then
    storage = emap.storage
    assert storage.basis is not None or "pca_dim" not in settings
    assert storage.evicted_count > 0 or "max_voxels" not in settings
    fresh = storage.scores(_unit(canonical)).amax(dim=0)
    torch.testing.assert_close(storage.hardest_negative(), fresh, rtol=0, atol=0)
    query = _vectors(1, seed=3)[0]
    for negatives in (canonical, torch.cat([extra, canonical])):
        cached, plain = emap.query(query, negatives, top_k=3), _plain_query(emap, query, negatives)
        np.testing.assert_array_equal(cached.relevancy, plain.relevancy)
        np.testing.assert_array_equal(cached.cosine, plain.cosine)
        assert [c.voxel_count for c in cached.clusters] == [c.voxel_count for c in plain.clusters]
        assert cached.threshold == plain.threshold


@pytest.mark.parametrize("settings", MAPS.values(), ids=MAPS.keys())
def test_the_first_query_after_caching_fills_the_cache_in_its_own_pass(settings):
    emap = EmbeddingMap(0.05, embedding_dim=DIM, **settings)
    for step in range(8):
        _integrate(emap, step)
    canonical, query = _vectors(4, seed=1), _vectors(1, seed=3)[0]
    plain = emap.query(query, canonical, top_k=3)
    emap.cache_negatives(canonical)
    cached = emap.query(query, canonical, top_k=3)  # every voxel is stale: one combined pass
    storage = emap.storage
    assert not storage._changed[: len(storage)].any()
    fresh = storage.scores(_unit(canonical)).amax(dim=0)
    torch.testing.assert_close(storage.hardest_negative(), fresh, rtol=0, atol=0)
    np.testing.assert_array_equal(cached.relevancy, plain.relevancy)
    np.testing.assert_array_equal(cached.cosine, plain.cosine)


def test_loading_content_into_the_storage_rescores_it():
    source = EmbeddingMap(0.05, embedding_dim=DIM)
    for step in range(3):
        _integrate(source, step)
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    _integrate(emap, 7)
    negatives = _vectors(4, seed=1)
    emap.cache_negatives(negatives)
    s = source.storage
    emap.storage.load_state(s.voxels, s.features, s.weights, s.last_seen, None)
    fresh = emap.storage.scores(negatives).amax(dim=0)
    torch.testing.assert_close(emap.storage.hardest_negative(), fresh, rtol=0, atol=0)


def test_a_query_with_the_cached_negatives_scores_only_its_other_vectors(monkeypatch):
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    _integrate(emap, 0)
    canonical, extra = _vectors(4, seed=1), _vectors(2, seed=2)
    rows_scored: list[int] = []
    original = type(emap.storage).scores

    def counting(self, queries):
        rows_scored.append(queries.shape[0])
        return original(self, queries)

    monkeypatch.setattr(type(emap.storage), "scores", counting)
    emap.query(_vectors(1, seed=3)[0], canonical)
    assert rows_scored == [5]  # no cache yet: the query and its 4 negatives
    emap.cache_negatives(canonical)
    rows_scored.clear()
    # The first query after caching finds every voxel to score: the 4 cached negatives go in
    # its own pass over the map (1 + 4 rows); later ones score only their other vectors.
    emap.query(_vectors(1, seed=3)[0], canonical)
    emap.query(_vectors(1, seed=3)[0], canonical)
    emap.query(_vectors(1, seed=3)[0], torch.cat([canonical[[2, 0, 3, 1]], extra]))
    # A subset of the cached vectors cannot use the cache: the best of all four is not the
    # best of three.
    emap.query(_vectors(1, seed=3)[0], canonical[:3])
    assert rows_scored == [5, 1, 3, 4]


def test_the_cache_costs_four_bytes_per_voxel_and_stops_on_none_or_clear():
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    _integrate(emap, 0)
    before = emap.storage.bytes_per_voxel()
    emap.cache_negatives(_vectors(4, seed=1))
    assert emap.storage.bytes_per_voxel() == pytest.approx(before + 5)
    emap.cache_negatives(None)
    assert emap.storage.negatives is None and emap.storage.bytes_per_voxel() == before
    emap.cache_negatives(_vectors(4, seed=1))
    emap.clear()
    assert emap.storage.negatives is None


def _record_scoring(monkeypatch, emap: EmbeddingMap) -> list[int]:
    """Record how many voxels each negative-scoring call scores (the whole map, or a gather)."""
    counts: list[int] = []
    storage_type = type(emap.storage)
    gather, in_order = storage_type._score_negatives, storage_type.scores

    def gathering(self, slots):
        counts.append(slots.numel())
        return gather(self, slots)

    def scoring(self, queries):
        if self.negatives is not None and torch.equal(queries, self.negatives):
            counts.append(len(self))
        return in_order(self, queries)

    monkeypatch.setattr(storage_type, "_score_negatives", gathering)
    monkeypatch.setattr(storage_type, "scores", scoring)
    return counts


def test_only_voxels_that_changed_are_rescored_and_only_when_read(monkeypatch):
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    for step in range(6):  # ~6 frames of voxels, so that one frame changes a small part
        _integrate(emap, step)
    negatives = _vectors(4, seed=1)
    counts = _record_scoring(monkeypatch, emap)
    emap.cache_negatives(negatives)
    assert counts == []  # lazy: nothing is scored before a query needs it
    emap.storage.hardest_negative()
    assert counts == [len(emap)]  # everything changed: the map is scored in order
    stats = emap.integrate(*_frame_at(1))
    assert len(counts) == 1  # fusion only flags the voxels it touched
    emap.storage.hardest_negative()
    assert counts[-1] == stats.voxels_observed < len(emap) / 4  # gathered
    emap.storage.hardest_negative()
    emap.cache_negatives(negatives.clone() * 3.0)  # normalised: the same unit vectors
    emap.storage.hardest_negative()
    assert len(counts) == 2
    emap.cache_negatives(_vectors(4, seed=5))
    emap.storage.hardest_negative()
    assert counts[-1] == len(emap)


@pytest.mark.parametrize(
    ("negatives", "match"),
    [
        (torch.zeros(0, DIM), "at least one vector"),
        (torch.ones(2, DIM + 1), "dimension|shape"),
        (torch.zeros(2, DIM), "zero"),
        (torch.full((1, DIM), float("nan")), "finite"),
    ],
)
def test_bad_negatives_are_refused_and_keep_the_cache(negatives, match):
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    _integrate(emap, 0)
    good = _vectors(4, seed=1)
    emap.cache_negatives(good)
    with pytest.raises(InputError, match=match):
        emap.cache_negatives(negatives)
    torch.testing.assert_close(emap.storage.negatives, good)


class _Encoder:
    def encode(self, texts):
        seeds = [sum(map(ord, t)) for t in texts]
        rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return _unit(torch.stack(rows))


def test_query_text_caches_the_canonical_negatives_only():
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    _integrate(emap, 0)
    encoder = _Encoder()
    first = query_text(emap, encoder, "a red mug", negatives=["a table"])
    torch.testing.assert_close(emap.storage.negatives, encoder.encode(CANONICAL_NEGATIVES))
    second = query_text(emap, encoder, "a red mug", negatives=["a table"])
    np.testing.assert_array_equal(first.relevancy, second.relevancy)
    vectors = encoder.encode(["a red mug", *CANONICAL_NEGATIVES, "a table"])
    plain = _plain_query(emap, vectors[0], vectors[1:])
    np.testing.assert_array_equal(second.relevancy, plain.relevancy)
