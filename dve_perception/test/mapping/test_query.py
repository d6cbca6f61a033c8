"""Scores, relevancy, thresholds and clusters of a query."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.mapping import EmbeddingMap
from dve_perception.mapping.query import (
    cluster_voxels,
    connected_components,
    default_threshold,
    relevancy,
)
from dve_perception.mapping.voxel_hash import pack_voxel_keys
from dve_perception.perception.visualization import heat_colors

DIM = 16


def _same_partition(labels: torch.Tensor, expected: list[int]) -> bool:
    pairs = set(zip(labels.tolist(), expected, strict=True))
    return len(pairs) == len(set(labels.tolist())) == len(set(expected))


def test_connected_components_use_the_26_neighbourhood():
    voxels = torch.tensor(
        [
            [0, 0, 0],
            [1, 1, 1],  # corner neighbour of the first: same component
            [2, 2, 2],
            [5, 0, 0],  # gap of more than one voxel: separate
            [5, 1, 0],
            [-3, -3, -3],
        ]
    )
    labels = connected_components(voxels)
    assert _same_partition(labels, [0, 0, 0, 1, 1, 2])


def test_a_long_snake_is_one_component():
    steps = torch.arange(400)
    snake = torch.stack([steps, (steps // 7) % 2, torch.zeros_like(steps)], dim=1)
    shuffled = snake[torch.randperm(400, generator=torch.Generator().manual_seed(0))]
    assert connected_components(shuffled).unique().numel() == 1


def test_clusters_are_ranked_by_their_best_voxel_and_describe_their_box():
    voxels = torch.tensor([[0, 0, 0], [0, 0, 1], [10, 0, 0], [20, 0, 0]])
    scores = torch.tensor([0.6, 0.7, 0.9, 0.1])
    clusters = cluster_voxels(
        pack_voxel_keys(voxels), scores, threshold=0.5, voxel_size_m=0.1, top_k=5
    )
    assert [c.voxel_count for c in clusters] == [1, 2]
    assert clusters[0].score == pytest.approx(0.9)
    second = clusters[1]
    np.testing.assert_allclose(second.centroid_m, [0.05, 0.05, 0.1])
    np.testing.assert_allclose(second.box_min_m, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(second.box_max_m, [0.1, 0.1, 0.2])
    assert second.mean_score == pytest.approx(0.65)
    assert sorted(second.voxel_ids.tolist()) == [0, 1]


def test_small_clusters_can_be_dropped_and_top_k_limits_the_answer():
    keys = pack_voxel_keys(torch.tensor([[0, 0, 0], [0, 0, 1], [10, 0, 0]]))
    scores = torch.tensor([0.6, 0.7, 0.9])
    assert [c.voxel_count for c in cluster_voxels(keys, scores, 0.5, 0.1, 5, min_voxels=2)] == [2]
    assert len(cluster_voxels(keys, scores, 0.5, 0.1, top_k=1)) == 1


def test_relevancy_exceeds_one_half_exactly_when_the_query_beats_every_negative():
    cosine = torch.tensor([0.30, 0.25, 0.20])
    negatives = torch.tensor([[0.20, 0.22], [0.26, 0.10], [0.15, 0.10]]).T  # (K, N)
    result = relevancy(cosine, negatives)
    assert (result > 0.5).tolist() == [True, False, True]
    expected = torch.sigmoid(torch.tensor(0.30 - 0.22))
    assert result[0].item() == pytest.approx(expected.item())


def test_default_threshold_is_half_way_between_median_and_best_for_cosine():
    scores = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.8])
    assert default_threshold(scores, "cosine") == pytest.approx(0.5)
    assert default_threshold(scores, "relevancy") == 0.5


def _two_object_map() -> tuple[EmbeddingMap, torch.Tensor]:
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    prototypes = torch.nn.functional.normalize(torch.randn(2, DIM), dim=1)
    embedding = torch.empty(DIM, 20, 40)
    embedding[:, :, :20] = prototypes[0, :, None, None]
    embedding[:, :, 20:] = prototypes[1, :, None, None]
    K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 9.5], [0.0, 0.0, 1.0]])
    emap.integrate(embedding, torch.full((20, 40), 1.012), K, np.eye(4))
    return emap, prototypes


def test_query_finds_the_half_of_the_plane_that_matches():
    emap, prototypes = _two_object_map()
    result = emap.query(prototypes[1], top_k=3)
    assert result.score_name == "cosine" and result.relevancy is None
    best = result.clusters[0]
    assert best.score == pytest.approx(1.0, abs=1e-3)
    assert best.centroid_m[0] > 0.0  # the right half of the image is +x in the optical frame
    assert result.cosine.shape == (len(emap),)
    np.testing.assert_array_equal(result.points_m, emap.points())


def test_query_with_negatives_uses_relevancy():
    emap, prototypes = _two_object_map()
    result = emap.query(prototypes[0], negatives=prototypes[1:])
    assert result.score_name == "relevancy" and result.threshold == 0.5
    assert np.array_equal(result.scores, result.relevancy)
    assert result.clusters[0].centroid_m[0] < 0.0


@pytest.mark.parametrize(
    ("query", "negatives", "top_k", "match"),
    [
        (np.zeros(DIM), (), 5, "non-zero"),
        (np.full(DIM, np.nan), (), 5, "finite"),
        (np.ones(DIM + 1), (), 5, "shape"),
        (np.ones((2, DIM)), (), 5, "shape"),
        (np.ones(DIM), np.ones((2, DIM + 1)), 5, "negatives must have shape"),
        (np.ones(DIM), (), -1, "top_k"),
        ("a red mug", (), 5, "float array"),
    ],
)
def test_bad_queries_raise_clear_errors(query, negatives, top_k, match):
    emap, _ = _two_object_map()
    with pytest.raises(InputError, match=match):
        emap.query(query, negatives=negatives, top_k=top_k)


def test_query_on_an_empty_map_returns_no_clusters():
    result = EmbeddingMap(0.05, embedding_dim=DIM).query(np.ones(DIM))
    assert result.clusters == () and result.cosine.shape == (0,)


def test_heat_colors_run_from_blue_to_red():
    colors = heat_colors(np.array([0.0, 0.5, 1.0, np.nan]))
    assert colors[0].tolist() == [0, 0, 255] and colors[2].tolist() == [255, 0, 0]
    assert colors[1].tolist() == [0, 255, 0] and colors[3].tolist() == [128, 128, 128]


def test_map_colors_are_aligned_with_points():
    emap, prototypes = _two_object_map()
    pca = emap.colors("pca")
    heat = emap.colors("heat", emap.query(prototypes[0]))
    assert pca.shape == heat.shape == (len(emap), 3) and pca.dtype == np.uint8
    with pytest.raises(InputError, match="heat"):
        emap.colors("heat")
    with pytest.raises(InputError, match="mode"):
        emap.colors("rainbow")


def test_pca_colours_are_the_same_when_computed_in_chunks(monkeypatch):
    import dve_perception.mapping.embedding_map as embedding_map

    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 9.5], [0.0, 0.0, 1.0]])
    embedding = torch.randn(DIM, 20, 40, generator=torch.Generator().manual_seed(0))
    emap.integrate(embedding, torch.full((20, 40), 1.012), K, np.eye(4))
    whole = emap.colors("pca")
    monkeypatch.setattr(embedding_map, "_COLOR_CHUNK", 7)
    chunked = emap.colors("pca")
    # Chunked float32 products may round differently by an ulp, so allow one colour level.
    assert chunked.shape == whole.shape
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1
