"""Scoring the voxels of a `VoxelEmbeddingMap` against query vectors, with cached negatives.

Scores are cosines <q, m> / |m| of the stored running means (see voxel_map.py). LERF relevancy
needs each voxel's best score against the negative phrases; the canonical ones never change, so
`set_negatives` keeps that best score per voxel (rescored for the voxels that changed when it is
next read), and a query then reads the map once for its own vector instead of once more per
negative (the float16 product of a 1M-voxel map is ~12 ms per vector on a 2-core CPU).
"""

from __future__ import annotations

import torch

from dve_perception.errors import ConfigError
from dve_perception.mapping.fixed_point_codes import FixedPointCodes

__all__ = ["VoxelScoring"]

#: Rows scored per chunk: bounds the float32 temporaries of a query over a large map.
_SCORE_CHUNK = 262_144
#: Changed voxels are gathered and rescored while they are fewer than 1 in this many; beyond,
#: the whole map is scored in order (a gather copies each row, which costs more than a read).
_GATHER_LIMIT = 4
_NORM_EPS = 1e-12
#: Negative vectors closer than this (per coordinate) count as the cached ones: re-encoding the
#: same phrase may differ in the last bits on some devices.
_SAME_VECTOR_TOLERANCE = 1e-6


class VoxelScoring:
    """The scoring half of `VoxelEmbeddingMap` (which provides the storage it reads)."""

    # Provided by VoxelEmbeddingMap.
    device: torch.device
    negatives: torch.Tensor | None
    _size: int
    _features: torch.Tensor
    _norms: torch.Tensor
    _capacity: int
    _hardest: torch.Tensor
    _changed: torch.Tensor
    codes: FixedPointCodes | None

    def encode(self, directions: torch.Tensor) -> torch.Tensor:
        """Project embeddings into the stored feature space (`VoxelEmbeddingMap.encode`)."""
        raise NotImplementedError

    @property
    def norms(self) -> torch.Tensor:
        """(N,) norms of the stored means (`VoxelEmbeddingMap.norms`)."""
        raise NotImplementedError

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every voxel with each query.

        Args:
            queries: (Q, D) float32 unit vectors in embedding space.

        Returns:
            (Q, N) float32 cosines in [-1, 1], one contiguous row per query (reductions over
            queries, e.g. the hardest negative, then run across rows, which is ~30x faster on a
            CPU than across a 4-wide dimension); 0 for voxels whose mean vanished.
        """
        terms = self._query_terms(queries)
        out = torch.empty(queries.shape[0], self._size, device=self.device)
        for start in range(0, self._size, _SCORE_CHUNK):
            block = self._features[start : min(start + _SCORE_CHUNK, self._size)]
            out[:, start : start + block.shape[0]] = self._products(terms, block)
        return out.div_(self.norms.clamp_min(_NORM_EPS))

    def hardest_negative(self) -> torch.Tensor:
        """(N,) float32 best score of each voxel against `negatives` (needs them set).

        Voxels that changed since the last call are scored first (as `scores` scores them, so
        the values equal `scores(negatives).amax(0)` exactly).
        """
        if self.negatives is None:
            raise ConfigError("no negatives are cached: call set_negatives first")
        changed = self._changed[: self._size].nonzero().squeeze(1)
        if changed.numel() * _GATHER_LIMIT >= self._size:
            # Most voxels changed (a new cache, a load, a basis fit): reading the map in order
            # is cheaper than gathering the changed rows (a copy of each).
            self._hardest[: self._size] = self.scores(self.negatives).amax(dim=0)
            self._changed[: self._size] = False
        elif changed.numel():
            self._score_negatives(changed)
            self._changed[changed] = False
        return self._hardest[: self._size]

    def scores_and_hardest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`scores(queries)` and `hardest_negative()`, in one read of the map when it can.

        When most voxels changed since the cache was last read (the first query after
        `set_negatives`), the negatives are scored in the same pass as the queries, which costs
        about as much as scoring the queries alone; the cached values are the same either way.
        """
        if self.negatives is None:
            raise ConfigError("no negatives are cached: call set_negatives first")
        if int(self._changed[: self._size].sum()) * _GATHER_LIMIT < self._size:
            return self.scores(queries), self.hardest_negative()
        both = self.scores(torch.cat([queries, self.negatives]))
        q = queries.shape[0]
        self._hardest[: self._size] = both[q:].amax(dim=0)
        self._changed[: self._size] = False
        return both[:q], self._hardest[: self._size]

    def set_negatives(self, vectors: torch.Tensor | None) -> None:
        """Keep each voxel's best score against (K, D) unit `vectors`; None stops it.

        Nothing is scored here: `hardest_negative` scores the voxels that changed since it was
        last read (all of them the first time), so fusing a frame only flags its voxels. Costs
        5 B per voxel. Vectors within 1e-6 of the current ones change nothing.
        """
        if vectors is None:
            self.negatives = None
        elif self.negatives is None or not _same_rows(vectors, self.negatives):
            self.negatives = vectors.to(self.device, torch.float32).clone()
        else:
            return
        for name, array in self._new_negative_arrays(self._capacity).items():
            setattr(self, name, array)
        self._mark_changed(slice(0, self._size))

    def cached_negatives(self, negatives: torch.Tensor) -> torch.Tensor | None:
        """(K,) bool: the rows of `negatives` the cache stands for; None if it lacks one of its own.

        The cache can replace those rows only when every cached vector is among `negatives`.
        """
        if self.negatives is None or negatives.shape[0] == 0:
            return None
        close = _row_distances(negatives, self.negatives) <= _SAME_VECTOR_TOLERANCE  # (K, C)
        return close.any(dim=1) if bool(close.any(dim=0).all()) else None

    def _query_terms(self, queries: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(Q, D) unit queries -> what `_products` multiplies stored rows with.

        Projected one query at a time: a batched product may sum in another order, and a
        voxel's score must not depend on the other queries of the batch (the cache relies on it).
        """
        rows = [self.encode(query.unsqueeze(0)) for query in queries]
        codes = torch.cat(rows) if rows else self.encode(queries)  # (Q, F) float32
        if self.codes is not None:
            return self.codes.query_columns(codes)
        return (codes.to(torch.float16),)

    def _products(self, terms: tuple[torch.Tensor, ...], rows: torch.Tensor) -> torch.Tensor:
        """(Q, M) products of the queries behind `terms` with (M, W) stored rows (unnormalised).

        float16 rows: float16 products accumulate in float32 inside the kernel, but the result
        is rounded to float16 (~5e-4 relative): the price of a product that reads the features
        once; a float32 copy of each chunk would double the time on a CPU. pca_int rows: exact
        integer products combined in float32 (fixed_point_codes.py), within ~1e-5.
        """
        if self.codes is not None:
            return self.codes.scores(rows, *terms)
        return terms[0] @ rows.T

    def _mark_changed(self, slots: torch.Tensor | slice) -> None:
        """Flag voxels whose stored mean or norm changed (their negative score is stale)."""
        if self.negatives is not None:
            self._changed[slots] = True

    def _negative_arrays(self) -> tuple[torch.Tensor, ...]:
        """The per-voxel arrays of the cache (none while it is off), for compaction."""
        return () if self.negatives is None else (self._hardest, self._changed)

    def _new_negative_arrays(self, capacity: int) -> dict[str, torch.Tensor]:
        """Empty per-voxel cache arrays for `capacity` voxels (0 while the cache is off)."""
        rows = 0 if self.negatives is None else capacity
        return {
            "_hardest": torch.empty(rows, dtype=torch.float32, device=self.device),
            "_changed": torch.zeros(rows, dtype=torch.bool, device=self.device),
        }

    def _score_negatives(self, slots: torch.Tensor) -> None:
        """Compute the best negative score of the voxels at `slots`."""
        assert self.negatives is not None
        terms = self._query_terms(self.negatives)
        for start in range(0, slots.numel(), _SCORE_CHUNK):  # bounds the (K, chunk) temporary
            chunk = slots[start : start + _SCORE_CHUNK]
            best = self._products(terms, self._features[chunk]).amax(dim=0).to(torch.float32)
            # The largest of K float16 products over a positive norm: the same value as the
            # largest of `scores`' K quotients, since dividing by a positive number and
            # rounding both keep the order.
            self._hardest[chunk] = best.div_(self._norms[chunk].clamp_min(_NORM_EPS))


def _row_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, D), (C, D) -> (K, C) largest absolute coordinate difference of each pair of rows."""
    return (a.unsqueeze(1) - b.unsqueeze(0).to(a.device)).abs().amax(dim=2)


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two (K, D) sets of vectors are the same rows in the same order (to 1e-6)."""
    return a.shape == b.shape and bool(
        (a.to(b.device, torch.float32) - b).abs().max() <= _SAME_VECTOR_TOLERANCE
    )
