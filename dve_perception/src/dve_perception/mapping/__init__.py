"""Fuse dense embeddings into a sparse voxel map, query it with text embeddings, save and load it.

`EmbeddingMap` is the entry point; the modules below it are the storage (`voxel_map`), the
per-frame fusion (`integrator`), scoring and clustering (`query`) and persistence (`map_io`).
"""

from __future__ import annotations

from dve_perception.mapping.embedding_map import EmbeddingMap
from dve_perception.mapping.integrator import IntegrationStats
from dve_perception.mapping.map_config import MapConfig
from dve_perception.mapping.query import CANONICAL_NEGATIVES, QueryResult, VoxelCluster
from dve_perception.mapping.text_query import prepare_queries, query_text

__all__ = [
    "CANONICAL_NEGATIVES",
    "EmbeddingMap",
    "IntegrationStats",
    "MapConfig",
    "QueryResult",
    "VoxelCluster",
    "prepare_queries",
    "query_text",
]
