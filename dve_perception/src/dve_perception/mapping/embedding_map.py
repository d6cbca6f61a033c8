"""`EmbeddingMap`: the one object nodes and replay use to fuse frames, query, show and persist.

It composes the storage (`VoxelEmbeddingMap`), the integrator, the query functions and map_io,
like nvblox's `Mapper`. Every public method takes a lock, so a ROS service thread may query or
save while another thread integrates; a call that raises leaves the map as it was.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dve_perception.errors import ConfigError, InputError, MapFileError
from dve_perception.mapping import map_io
from dve_perception.mapping.integrator import EmbeddingIntegrator, IntegrationStats
from dve_perception.mapping.map_config import MapConfig
from dve_perception.mapping.query import (
    DEFAULT_RELEVANCY_TEMPERATURE,
    QueryResult,
    cluster_voxels,
    default_threshold,
    relevancy,
)
from dve_perception.mapping.voxel_map import VoxelEmbeddingMap

if TYPE_CHECKING:
    from dve_perception.perception.visualization import PcaBasis

__all__ = ["EmbeddingMap"]

_NORM_EPS = 1e-12
COLOR_MODES = ("pca", "heat")
#: Voxels used to fit the PCA colours, and voxels coloured per chunk (bounds float32 copies).
_PCA_COLOR_SAMPLES = 20_000
_COLOR_CHUNK = 65_536


class EmbeddingMap:
    """A sparse voxel map of fused CLIP-aligned embeddings that answers text queries.

    Example:
        >>> emap = EmbeddingMap(voxel_size_m=0.05, max_voxels=500_000)
        >>> emap.integrate(embedding, depth_m, K, T_world_cam)  # doctest: +SKIP
        >>> result = emap.query(text_vector, negatives=negative_vectors)  # doctest: +SKIP
        >>> result.clusters[0].centroid_m  # doctest: +SKIP
    """

    def __init__(
        self,
        voxel_size_m: float = 0.05,
        *,
        config: MapConfig | None = None,
        device: torch.device | str = "cpu",
        **settings: object,
    ) -> None:
        """Create an empty map.

        Args:
            voxel_size_m: voxel edge in metres (ignored when `config` is given).
            config: all settings at once; otherwise built from voxel_size_m and `settings`.
            device: where voxels live and fusion and queries run ("cpu", "cuda").
            **settings: any other `MapConfig` field, e.g. max_voxels=200_000,
                feature_encoding="pca".

        Raises:
            ConfigError: a setting is out of range.
        """
        if config is None:
            config = MapConfig(voxel_size_m=voxel_size_m, **settings)  # type: ignore[arg-type]
        self._lock = threading.RLock()
        self._storage = VoxelEmbeddingMap(config, device)
        self._integrator = EmbeddingIntegrator(self._storage)

    @property
    def config(self) -> MapConfig:
        """The map's settings."""
        return self._storage.config

    @property
    def voxel_size_m(self) -> float:
        """Voxel edge length in metres."""
        return self.config.voxel_size_m

    @property
    def device(self) -> torch.device:
        """Device of the voxel storage."""
        return self._storage.device

    @property
    def storage(self) -> VoxelEmbeddingMap:
        """The underlying storage (read-only use: benchmarks, tests, advanced queries)."""
        return self._storage

    def __len__(self) -> int:
        """Return the number of voxels."""
        return len(self._storage)

    def stats(self) -> dict[str, float | int | str]:
        """Return counters for diagnostics: voxels, frames, evictions, bytes per voxel."""
        with self._lock:
            storage = self._storage
            return {
                "voxels": len(storage),
                "frames": storage.frame_count,
                "evicted": storage.evicted_count,
                "feature_encoding": storage.encoding,
                "bytes_per_voxel": round(storage.bytes_per_voxel(), 1),
            }

    def integrate(
        self,
        embedding: torch.Tensor | np.ndarray,
        depth_m: torch.Tensor | np.ndarray,
        K: np.ndarray | torch.Tensor,
        T_world_cam: np.ndarray | torch.Tensor,
        confidence: torch.Tensor | np.ndarray | None = None,
        *,
        assume_unit: bool = False,
    ) -> IntegrationStats:
        """Fuse one frame; see `EmbeddingIntegrator.integrate` for the argument contract.

        `assume_unit=True` skips the per-pixel norm for embeddings that are already unit length
        (the fused backend's normalised float16 output); it is checked on a sample only.
        """
        with self._lock:
            return self._integrator.integrate(
                embedding, depth_m, K, T_world_cam, confidence, assume_unit=assume_unit
            )

    def query(
        self,
        text_embedding: torch.Tensor | np.ndarray,
        negatives: torch.Tensor | np.ndarray | Sequence[np.ndarray] = (),
        top_k: int = 5,
        threshold: float | None = None,
        *,
        min_cluster_voxels: int = 1,
        temperature: float = DEFAULT_RELEVANCY_TEMPERATURE,
    ) -> QueryResult:
        """Score every voxel against a text embedding and return the best matching clusters.

        Args:
            text_embedding: (D,) query embedding (normalised here).
            negatives: (K, D) embeddings of negative phrases, e.g. the encoded
                `CANONICAL_NEGATIVES` plus the user's; with K >= 1 clusters use relevancy.
            top_k: number of clusters to return.
            threshold: minimum voxel score in a cluster; None picks `default_threshold`.
            min_cluster_voxels: ignore clusters with fewer voxels.
            temperature: relevancy softmax temperature.

        Raises:
            InputError: wrong dimension, zero or non-finite vectors, top_k < 0.
        """
        dim = self.config.embedding_dim
        query = _unit_rows("text_embedding", text_embedding, dim, self.device, single=True)
        negative = _unit_rows("negatives", negatives, dim, self.device, single=False)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise InputError(f"top_k must be a non-negative integer, got {top_k!r}")
        with self._lock:
            storage = self._storage
            cached = storage.cached_negatives(negative)  # (K,) bool or None
            rest = negative if cached is None else negative[~cached]
            if cached is None:
                all_scores = storage.scores(torch.cat([query, rest]))  # (1 + K, N)
            else:  # one row, the best of the cached negatives, stands for them
                all_scores, hardest = storage.scores_and_hardest(torch.cat([query, rest]))
                all_scores = torch.cat([all_scores, hardest.unsqueeze(0)])
            cosine, negative_scores = all_scores[0], all_scores[1:]
            relevance = relevancy(cosine, negative_scores, temperature) if len(negative) else None
            used, name = (relevance, "relevancy") if relevance is not None else (cosine, "cosine")
            if threshold is None:
                threshold = default_threshold(used, name) if len(storage) else 0.0
            clusters = cluster_voxels(
                storage.keys, used, threshold, self.voxel_size_m, top_k, min_cluster_voxels
            )
            return QueryResult(
                keys=storage.keys.cpu().numpy().copy(),
                voxel_size_m=self.voxel_size_m,
                cosine=cosine.cpu().numpy(),
                relevancy=None if relevance is None else relevance.cpu().numpy(),
                score_name=name,
                threshold=float(threshold),
                clusters=clusters,
            )

    def cache_negatives(self, negatives: torch.Tensor | np.ndarray | None) -> None:
        """Keep each voxel's best score against these negatives current, for faster queries.

        A later `query` whose negatives include all of these (e.g. LERF's canonical phrases,
        which `query_text` caches) reads the map once for the query and once per other negative,
        instead of once per negative too: ~5x fewer reads with only the 4 canonical ones. A
        query rescores only the voxels that changed since the previous one (all of them the
        first time); fusion just flags them. Costs 5 B per voxel; the same vectors again change
        nothing; None stops it. `clear` drops the cache; a loaded map starts without one.

        Args:
            negatives: (K, D) embeddings (normalised here), K >= 1; or None.

        Raises:
            InputError: wrong dimension, no rows, zero or non-finite vectors.
        """
        vectors = None
        if negatives is not None:
            dim = self.config.embedding_dim
            vectors = _unit_rows("negatives", negatives, dim, self.device, single=False)
            if vectors.shape[0] == 0:
                raise InputError("cache_negatives needs at least one vector (None stops caching)")
        with self._lock:
            self._storage.set_negatives(vectors)

    def refresh_negatives(self) -> None:
        """Score the voxels changed since the last query against the cached negatives, now.

        The next `query` then finds nothing to rescore. Does nothing without `cache_negatives`.
        """
        with self._lock:
            if self._storage.negatives is not None:
                self._storage.hardest_negative()

    def points(self) -> np.ndarray:
        """Return (N, 3) float32 voxel centres in metres, world frame."""
        with self._lock:
            return self._storage.voxel_centers().cpu().numpy()

    def colors(
        self,
        mode: str = "pca",
        result: QueryResult | None = None,
        basis: PcaBasis | None = None,
    ) -> np.ndarray:
        """Colour voxels for display or PLY export, aligned with `points()`.

        Args:
            mode: "pca" (first three principal components of the voxel features as RGB, so
                similar embeddings look alike) or "heat" (the scores of `result`, blue to red).
            result: the query to show with mode "heat"; must come from this map's current state.
            basis: with mode "pca", a basis from `fit_color_basis` to reuse, so colours stay the
                same from one call to the next (e.g. a cloud republished while the map grows);
                None fits one on the current voxels.

        Returns:
            (N, 3) uint8 RGB.

        Raises:
            InputError: an unknown mode, a "heat" result of another map state, or a basis
                fitted on features of another size (e.g. before the map switched to PCA).
        """
        from dve_perception.perception.visualization import heat_colors, pca_colors

        if mode not in COLOR_MODES:
            raise InputError(f"mode must be one of {COLOR_MODES}, got {mode!r}")
        with self._lock:
            n = len(self._storage)
            if mode == "heat":
                if result is None or result.scores.shape[0] != n:
                    raise InputError(
                        "mode 'heat' needs the QueryResult of a query on this map in its current "
                        f"state ({n} voxels)"
                    )
                return heat_colors(result.scores)
            if n < 3:
                return np.full((n, 3), 128, dtype=np.uint8)
            basis = basis if basis is not None else self.fit_color_basis()
            storage = self._storage
            # Colour in chunks: a float32 copy of a million 768-d voxels would take 3 GB at once.
            chunks = [
                pca_colors(_as_image(storage.decode(storage.features[i : i + _COLOR_CHUNK])), basis)
                for i in range(0, n, _COLOR_CHUNK)
            ]
            return np.concatenate([chunk[:, 0, :] for chunk in chunks])

    def pca_cloud(
        self, basis: PcaBasis | None = None
    ) -> tuple[np.ndarray, np.ndarray, PcaBasis | None]:
        """Return voxel centres and PCA colours of one consistent map state, and the basis.

        `points()` and `colors()` called one after the other may see different maps when
        another thread integrates in between; this takes both under the map's lock.

        Args:
            basis: the basis to colour with; None, or one fitted on features of another width
                (the map switched to PCA storage since), is replaced by a fresh fit.

        Returns:
            (N, 3) float32 points, (N, 3) uint8 RGB, and the basis used (None below 3 voxels).
        """
        with self._lock:
            points = self.points()
            if len(points) < 3:
                return points, self.colors("pca"), None
            width = self._storage.feature_dim
            if basis is None or basis.mean.shape[0] != width:
                basis = self.fit_color_basis()
            return points, self.colors("pca", basis=basis), basis

    def fit_color_basis(self) -> PcaBasis:
        """Fit the PCA colour basis of `colors("pca")` on an even sample of the voxels.

        Raises:
            InputError: fewer than 3 voxels.
        """
        from dve_perception.perception.visualization import fit_pca

        with self._lock:
            n = len(self._storage)
            if n < 3:
                raise InputError(f"a colour basis needs at least 3 voxels, the map has {n}")
            storage = self._storage
            return fit_pca(
                _as_image(storage.decode(storage.features[:: max(1, n // _PCA_COLOR_SAMPLES)]))
            )

    def save_ply(
        self, path: str | os.PathLike, mode: str = "pca", result: QueryResult | None = None
    ) -> Path:
        """Write the voxel centres as a binary PLY coloured by `colors(mode, result)`.

        With a query result, its per-voxel scores are stored as a `score` property as well.
        """
        from dve_perception.ply import write_ply

        with self._lock:
            points, colors = self.points(), self.colors(mode, result)
            scalars = {"score": result.scores} if result is not None else None
            return write_ply(path, points, colors, scalars)

    def clear(self) -> None:
        """Remove every voxel (settings are kept)."""
        with self._lock:
            self._storage.clear()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map atomically (see docs/map_format.md); the previous file survives a crash."""
        with self._lock:
            storage = self._storage
            snapshot = map_io.MapSnapshot(
                voxel_size_m=self.voxel_size_m,
                embedding_dim=self.config.embedding_dim,
                feature_encoding=storage.encoding,
                voxels=storage.voxels.to(torch.int32).cpu().numpy(),
                features=storage.features.cpu().numpy(),
                weights=storage.weights.cpu().numpy(),
                last_seen=storage.last_seen.cpu().numpy(),
                basis=None if storage.basis is None else storage.basis.cpu().numpy(),
                frame_count=storage.frame_count,
                evicted_count=storage.evicted_count,
                settings=self.config.to_dict(),
                norms=None if storage.basis is None else storage.norms.cpu().numpy(),
                pca_head_dim=None if storage.codes is None else storage.codes.head,
            )
            return map_io.save_map(path, snapshot)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> EmbeddingMap:
        """Read a map written by `save`.

        Raises:
            MapFileError: missing, truncated, corrupted, foreign or newer-version file.
        """
        snapshot = map_io.load_map(path)
        try:
            config = MapConfig.from_dict(dict(snapshot.settings))
        except Exception as err:  # a ConfigError from settings that fail today's checks
            raise MapFileError(f"{path}: invalid map settings: {err}") from err
        if config.voxel_size_m != snapshot.voxel_size_m:
            raise MapFileError(f"{path}: voxel size in settings and header disagree")
        if len(snapshot.voxels) > config.max_voxels:
            raise MapFileError(f"{path}: {len(snapshot.voxels)} voxels exceed max_voxels")
        stored = "float16" if snapshot.basis is None else config.feature_encoding
        if stored != snapshot.feature_encoding:
            raise MapFileError(
                f"{path}: settings say {config.feature_encoding!r}, the header "
                f"{snapshot.feature_encoding!r}"
            )
        if snapshot.pca_head_dim not in (None, config.pca_head_dim):
            raise MapFileError(f"{path}: pca_head_dim in settings and header disagree")
        emap = cls(config=config, device=device)
        try:
            emap._storage.load_state(
                torch.from_numpy(snapshot.voxels).to(torch.int64),
                torch.from_numpy(snapshot.features),
                torch.from_numpy(snapshot.weights),
                torch.from_numpy(snapshot.last_seen),
                None if snapshot.basis is None else torch.from_numpy(snapshot.basis),
                None if snapshot.norms is None else torch.from_numpy(snapshot.norms),
            )
        except ConfigError as err:
            raise MapFileError(f"{path}: {err}") from err
        emap._storage.frame_count = snapshot.frame_count
        emap._storage.evicted_count = snapshot.evicted_count
        return emap


def _as_image(values: torch.Tensor) -> torch.Tensor:
    """(M, F) float32 voxel values -> (F, M, 1), the layout visualization expects."""
    return values.T.unsqueeze(-1)


def _unit_rows(
    name: str, value: object, dim: int, device: torch.device, *, single: bool
) -> torch.Tensor:
    """Validate query vectors and return them as unit (K, dim) float32 rows on `device`."""
    if isinstance(value, (list, tuple)):
        value = np.stack([np.asarray(v) for v in value]) if len(value) else np.zeros((0, dim))
    if isinstance(value, np.ndarray):
        value = torch.tensor(value, dtype=torch.float32)  # a copy: query vectors are small
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise InputError(f"{name} must be a float array or tensor, got {type(value).__name__}")
    rows = value.detach().to(device, torch.float32)
    rows = rows.reshape(1, -1) if single and rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[1] != dim or (single and rows.shape[0] != 1):
        expected = f"({dim},)" if single else f"(K, {dim})"
        raise InputError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    if not bool(torch.isfinite(rows).all()) or bool((norms <= _NORM_EPS).any()):
        raise InputError(f"{name} must be finite and non-zero (got a zero or NaN vector)")
    return rows / norms
