"""Text queries: phrases and negatives reach the map through one encoder call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.mapping import CANONICAL_NEGATIVES, EmbeddingMap
from dve_perception.mapping.text_query import query_text

DIM = 16


class FakeEncoder:
    """Maps each phrase to a fixed random unit vector and records the calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._vectors: dict[str, torch.Tensor] = {}

    def vector(self, text: str) -> torch.Tensor:
        if text not in self._vectors:
            seed = sum(map(ord, text))
            v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
            self._vectors[text] = v / v.norm()
        return self._vectors[text]

    def encode(self, texts):
        self.calls.append(list(texts))
        return torch.stack([self.vector(t) for t in texts])


def _map_with(encoder: FakeEncoder, left: str, right: str) -> EmbeddingMap:
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    embedding = torch.empty(DIM, 20, 40)
    embedding[:, :, :20] = encoder.vector(left)[:, None, None]
    embedding[:, :, 20:] = encoder.vector(right)[:, None, None]
    K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 9.5], [0.0, 0.0, 1.0]])
    emap.integrate(embedding, torch.full((20, 40), 1.012), K, np.eye(4))
    return emap


def test_query_text_encodes_the_query_and_all_negatives_in_one_call():
    encoder = FakeEncoder()
    emap = _map_with(encoder, "a red mug", "a table")
    result = query_text(emap, encoder, "a red mug", negatives=["a table", "object"])
    assert encoder.calls[-1] == ["a red mug", *CANONICAL_NEGATIVES, "a table"]
    assert result.score_name == "relevancy"
    assert result.clusters[0].centroid_m[0] < 0  # the mug is the left half of the image


def test_without_negatives_the_query_scores_by_cosine():
    encoder = FakeEncoder()
    emap = _map_with(encoder, "a red mug", "a table")
    result = query_text(emap, encoder, "a table", canonical_negatives=False)
    assert result.score_name == "cosine" and encoder.calls[-1] == ["a table"]
    assert result.clusters[0].centroid_m[0] > 0


@pytest.mark.parametrize(
    ("text", "negatives", "match"),
    [
        ("", (), "non-empty"),
        ("   ", (), "non-empty"),
        (None, (), "non-empty"),
        ("a mug", "table", "list of phrases"),
        ("object", (), "also listed as a negative"),
    ],
)
def test_malformed_requests_raise_clear_errors(text, negatives, match):
    encoder = FakeEncoder()
    emap = _map_with(encoder, "a", "b")
    with pytest.raises(InputError, match=match):
        query_text(emap, encoder, text, negatives=negatives)
