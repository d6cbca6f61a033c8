"""What the mapping node does for frames and service requests, without ROS.

Every request is validated here and answered with an outcome (success and a message for a
person), never an exception: a ROS service handler or subscription callback converts the
outcome into a response or a log line and the node keeps running. The map may be swapped by
a load while frames arrive; a failed load keeps the current map.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dve_perception.errors import DvePerceptionError, InputError
from dve_perception.frames import EmbeddingFrame
from dve_perception.mapping import EmbeddingMap, QueryResult, prepare_queries, query_text
from dve_perception.mapping.text_query import TextEncoder
from dve_perception.node_logic.map_paths import resolve_map_path
from dve_perception.node_logic.stats import Throttle
from dve_perception.settings.node_config import MappingNodeConfig

__all__ = ["FrameOutcome", "MapService", "QueryOutcome", "ServiceOutcome"]

_LOG = logging.getLogger(__name__)
#: More negatives than this are almost certainly a client bug (each costs one text encoding).
_MAX_NEGATIVES = 16


@dataclass(frozen=True)
class ServiceOutcome:
    """The answer to a save, load or clear request."""

    success: bool
    message: str
    path: Path | None = None
    voxel_count: int | None = None


@dataclass(frozen=True, eq=False)
class QueryOutcome:
    """The answer to a text query.

    Attributes:
        success: False when nothing was scored; `message` says why.
        message: a one-line summary for a person.
        result: the query result (per-voxel scores and clusters), None on failure.
        points_m: (M, 3) float32 voxel centres for the response cloud, None on failure.
        scores: (M,) float32 scores of those voxels (relevancy or cosine, as the result's).
    """

    success: bool
    message: str
    result: QueryResult | None = None
    points_m: np.ndarray | None = None
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class FrameOutcome:
    """What happened to one embedding frame.

    Attributes:
        ok: the frame was fused.
        reason: why it was dropped ("" when fused).
        should_log: whether the caller should log the drop now (repeats are throttled).
    """

    ok: bool
    reason: str = ""
    should_log: bool = False


class MapService:
    """Fuse frames, answer queries, save, load and clear one map.

    Args:
        emap: the map to start with.
        encoder: the text encoder for queries (same embedding space as the map).
        config: the mapping node's settings.
    """

    def __init__(self, emap: EmbeddingMap, encoder: TextEncoder, config: MappingNodeConfig) -> None:
        self._map = emap
        self._encoder = encoder
        self.config = config
        self._lock = threading.Lock()
        self._warn = Throttle(config.warn_period_s)
        self.fused = 0
        self.dropped: Counter[str] = Counter()
        self._basis: tuple[object, int] = (None, 0)  # the map cloud's colour basis, voxels

    @property
    def emap(self) -> EmbeddingMap:
        """The current map (a load replaces it)."""
        with self._lock:
            return self._map

    def integrate(
        self,
        frame: EmbeddingFrame,
        T_world_cam: np.ndarray | None,
        tf_error: str | None = None,
        *,
        assume_unit: bool = False,
    ) -> FrameOutcome:
        """Fuse a frame posed by `T_world_cam`, or count why it cannot be.

        Args:
            frame: the frame's embeddings, depth and K at one resolution.
            T_world_cam: (4, 4) pose of the frame's optical frame in the world frame, or None
                when the transform lookup failed.
            tf_error: the lookup's error message when `T_world_cam` is None.
            assume_unit: the embeddings are unit vectors by construction (the pipeline's own
                output), so the map skips normalising them (`EmbeddingMap.integrate`). Frames
                from other publishers are normalised, whatever the message promises.
        """
        if T_world_cam is None:
            return self._drop("no transform", tf_error or "transform lookup failed")
        try:
            self.emap.integrate(
                frame.embedding, frame.depth_m, frame.K, T_world_cam, assume_unit=assume_unit
            )
        except DvePerceptionError as err:
            return self._drop("invalid frame", str(err))
        self.fused += 1
        return FrameOutcome(ok=True)

    def query(self, text: str, negatives: list[str], top_k: int, threshold: float) -> QueryOutcome:
        """Answer a QueryText request (top_k 0 and threshold 0 mean the defaults)."""
        try:
            text, negatives, top_k, chosen = self._check_query(text, negatives, top_k, threshold)
        except InputError as err:
            return QueryOutcome(False, f"invalid request: {err}")
        emap = self.emap
        if len(emap) == 0:
            return QueryOutcome(False, "the map is empty: no frame has been fused yet")
        try:
            result = query_text(emap, self._encoder, text, negatives, top_k=top_k, threshold=chosen)
        except DvePerceptionError as err:
            return QueryOutcome(False, f"query failed: {err}")
        points, scores = self._cloud_rows(result)
        names = ", ".join(f"{c.score:.2f}" for c in result.clusters) or "none"
        message = (
            f"{len(result.clusters)} match(es) for {text!r} among {len(result.keys)} voxels "
            f"({result.score_name} >= {result.threshold:.2f}; best scores: {names})"
        )
        return QueryOutcome(True, message, result, points, scores)

    def save(self, path: str) -> ServiceOutcome:
        """Write the map atomically inside the map directory."""
        try:
            target = self._resolve(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = self.emap.save(target)
        except (DvePerceptionError, OSError) as err:
            return ServiceOutcome(False, f"map not saved: {err}")
        count = len(self.emap)
        return ServiceOutcome(True, f"saved {count} voxels to {written}", written, count)

    def load(self, path: str) -> ServiceOutcome:
        """Replace the map with a saved one; on any failure the current map stays."""
        try:
            source = self._resolve(path)
            loaded = EmbeddingMap.load(source, device=self.emap.device)
        except DvePerceptionError as err:
            return ServiceOutcome(False, f"map not loaded, current map kept: {err}")
        expected = self.config.map.embedding_dim
        if loaded.config.embedding_dim != expected:
            return ServiceOutcome(
                False,
                f"map not loaded, current map kept: {source} holds {loaded.config.embedding_dim}"
                f"-d embeddings but this node's network and text encoder use {expected}-d",
            )
        # Scored before the swap: the first query on the loaded map then answers as fast as
        # later ones, and queries on the current map go on meanwhile.
        prepare_queries(loaded, self._encoder)
        with self._lock:
            self._map = loaded
            self._basis = (None, 0)
        note = ""
        if loaded.voxel_size_m != self.config.map.voxel_size_m:
            note = f" (its voxel size {loaded.voxel_size_m} m replaces the configured one)"
        return ServiceOutcome(
            True, f"loaded {len(loaded)} voxels from {source}{note}", source, len(loaded)
        )

    def clear(self) -> ServiceOutcome:
        """Remove every voxel."""
        emap = self.emap
        count = len(emap)
        emap.clear()
        self._basis = (None, 0)
        return ServiceOutcome(True, f"cleared {count} voxels", voxel_count=0)

    def cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the map's voxel centres and PCA colours, at most `cloud_max_points` of them.

        The colour basis is kept from one call to the next, so a cloud republished every few
        seconds keeps its colours; it is refitted only when the map has more than doubled since
        the fit (early colours settle as the map fills), switched to PCA features, or was
        cleared or loaded.

        Returns:
            (M, 3) float32 points in the world frame and (M, 3) uint8 RGB.
        """
        emap = self.emap
        basis, fitted_on = self._basis
        if len(emap) > 2 * fitted_on:
            basis = None
        points, colors, used = emap.pca_cloud(basis)
        if used is not basis:
            self._basis = (used, len(points))
        keep = _even_subsample(len(points), self.config.cloud_max_points)
        return points[keep], colors[keep]

    def on_start(self) -> ServiceOutcome | None:
        """Load `load_map_on_start` if set."""
        if not self.config.load_map_on_start:
            return None
        return self.load(self.config.load_map_on_start)

    def on_shutdown(self) -> ServiceOutcome | None:
        """Save to `default_map_name` if `save_map_on_shutdown` is set and the map has voxels."""
        if not self.config.save_map_on_shutdown:
            return None
        if len(self.emap) == 0:
            return ServiceOutcome(True, "map is empty; nothing saved on shutdown")
        return self.save("")

    def stats(self) -> dict[str, int | float | str]:
        """Counters for diagnostics: the map's and the frames fused or dropped by reason."""
        drops = {f"dropped ({reason})": count for reason, count in sorted(self.dropped.items())}
        return {**self.emap.stats(), "fused": self.fused, **drops}

    def _drop(self, reason: str, detail: str) -> FrameOutcome:
        self.dropped[reason] += 1
        return FrameOutcome(False, f"{reason}: {detail}", should_log=self._warn.ready())

    def _resolve(self, path: str) -> Path:
        config = self.config
        return resolve_map_path(config.map_directory, path, config.default_map_name)

    def _check_query(
        self, text: object, negatives: object, top_k: object, threshold: object
    ) -> tuple[str, list[str], int, float | None]:
        limit = self.config.max_query_chars
        text = _phrase("text", text, limit)
        if isinstance(negatives, str) or not isinstance(negatives, (list, tuple)):
            raise InputError("negatives must be a list of phrases")
        if len(negatives) > _MAX_NEGATIVES:
            raise InputError(f"at most {_MAX_NEGATIVES} negatives, got {len(negatives)}")
        phrases = [_phrase("negative", n, limit) for n in negatives]
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise InputError(f"top_k must be an integer, got {top_k!r}")
        if not 0 <= top_k <= self.config.max_top_k:
            raise InputError(
                f"top_k must be 0 (default {self.config.default_top_k}) to "
                f"{self.config.max_top_k}, got {top_k}"
            )
        try:
            value = float(threshold)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError(f"threshold must be a number, got {threshold!r}") from None
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise InputError(f"threshold must be in (0, 1), or 0 for the default; got {value}")
        return text, phrases, top_k or self.config.default_top_k, value or None

    def _cloud_rows(self, result: QueryResult) -> tuple[np.ndarray, np.ndarray]:
        """The voxels of the response cloud: all, or the best-scoring `cloud_max_points`."""
        scores = result.scores
        limit = self.config.cloud_max_points
        if len(scores) <= limit:
            return result.points_m, scores
        # The caller wants to see where the phrase is: keep the highest scores, not a sample.
        best = torch.from_numpy(scores).topk(limit).indices.sort().values.numpy()
        return result.points_m[best], scores[best]


def _phrase(role: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise InputError(f"{role} must be a string, got {type(value).__name__}")
    phrase = value.strip()
    if not phrase:
        raise InputError(f"{role} is empty; say what to look for, e.g. 'a red mug'")
    if len(phrase) > limit:
        raise InputError(f"{role} has {len(phrase)} characters; at most {limit} are allowed")
    if any(ord(c) < 32 for c in phrase):
        raise InputError(f"{role} contains control characters")
    return phrase


def _even_subsample(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)
