"""Score a voxel map against a text embedding and group the best voxels into objects.

Two scores per voxel: the cosine with the query, and a LERF-style relevancy (Kerr et al., ICCV
2023): for each negative phrase, the softmax probability that the voxel matches the query rather
than that negative, minimised over negatives. Relevancy > 0.5 means the query beats every
negative; canonical negatives ("object", "things", "stuff", "texture") make generic surfaces score
low. Matches are connected components (26-neighbourhood) of voxels above a threshold, ranked by
their best voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from dve_perception.mapping.voxel_hash import (
    VoxelHashIndex,
    pack_voxel_keys,
    unpack_voxel_keys,
    voxel_centers_m,
)

__all__ = [
    "CANONICAL_NEGATIVES",
    "QueryResult",
    "VoxelCluster",
    "cluster_voxels",
    "connected_components",
    "relevancy",
]

#: LERF's canonical negative phrases.
CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
#: LERF takes the softmax of raw cosines (temperature 1); the ranking and the 0.5 boundary do not
#: depend on it, only how sharp the heat map looks.
DEFAULT_RELEVANCY_TEMPERATURE = 1.0
#: The 13 neighbour offsets with a positive first non-zero component: with the reverse
#: direction implied, they give each 26-neighbourhood edge exactly once.
_HALF_NEIGHBOURHOOD = torch.tensor(
    [
        (dx, dy, dz)
        for dx in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dz in (-1, 0, 1)
        if (dx, dy, dz) > (0, 0, 0)
    ],
    dtype=torch.int64,
)


@dataclass(frozen=True)
class VoxelCluster:
    """One match: a connected group of voxels above the threshold (world frame, metres)."""

    centroid_m: np.ndarray  # (3,) mean of the voxel centres
    box_min_m: np.ndarray  # (3,) axis-aligned bounds of the voxels (outer faces)
    box_max_m: np.ndarray  # (3,)
    score: float  # best voxel score in the cluster
    mean_score: float
    voxel_count: int
    voxel_ids: np.ndarray  # (voxel_count,) int64 rows of the map arrays that form the cluster

    @property
    def box_size_m(self) -> np.ndarray:
        """(3,) extents of the bounding box."""
        return self.box_max_m - self.box_min_m


@dataclass(frozen=True, eq=False)
class QueryResult:
    """Per-voxel scores and the ranked matches of one query.

    `scores` is what the threshold and the clusters use: `relevancy` when negatives were
    given, otherwise `cosine`. Per-voxel arrays are aligned with `points_m`, the map's voxel
    centres at query time (decoded from `keys` on first use: a million voxels take ~30 ms, which
    a caller that only wants the clusters should not pay).
    """

    keys: np.ndarray  # (N,) int64 packed voxel keys of the map at query time
    voxel_size_m: float
    cosine: np.ndarray  # (N,) float32
    relevancy: np.ndarray | None  # (N,) float32 in (0, 1), None without negatives
    score_name: str  # "relevancy" or "cosine"
    threshold: float
    clusters: tuple[VoxelCluster, ...]

    @property
    def scores(self) -> np.ndarray:
        """(N,) the per-voxel score used for the threshold and clusters."""
        return self.relevancy if self.relevancy is not None else self.cosine

    @cached_property
    def points_m(self) -> np.ndarray:
        """(N, 3) float32 voxel centres in metres, world frame."""
        return voxel_centers_m(torch.from_numpy(self.keys), self.voxel_size_m).numpy()


def relevancy(
    cosine: torch.Tensor,
    negative_cosines: torch.Tensor,
    temperature: float = DEFAULT_RELEVANCY_TEMPERATURE,
) -> torch.Tensor:
    """LERF relevancy of each voxel.

    Args:
        cosine: (N,) cosines with the query.
        negative_cosines: (K, N) cosines with K >= 1 negative phrases, one row per phrase.
        temperature: softmax temperature on the cosines.

    Returns:
        (N,) min over negatives of exp(s_q / t) / (exp(s_q / t) + exp(s_neg / t)), in (0, 1).
    """
    # Each pairwise softmax is sigmoid((s_q - s_neg) / t), which is monotonic in s_neg, so the
    # minimum over negatives is the one against the best-matching negative: one pass, no (N, K).
    hardest = negative_cosines.amax(dim=0)
    return torch.sigmoid((cosine - hardest) / temperature)


def default_threshold(scores: torch.Tensor, score_name: str) -> float:
    """Pick a threshold when the caller gave none.

    Relevancy: 0.5 (the query beats every negative). Cosine has no absolute scale across
    models and phrases, so take the midpoint between the median voxel and the best voxel: a
    match must stand out from the typical surface by half of the best contrast.
    """
    if score_name == "relevancy":
        return 0.5
    best = float(scores.max())
    return 0.5 * (best + float(scores.median()))


def connected_components(voxels: torch.Tensor) -> torch.Tensor:
    """Label the 26-connected components of a set of voxels.

    Args:
        voxels: (M, 3) int64 unique voxel indices.

    Returns:
        (M,) int64 component labels in [0, C), numbered by first appearance of the smallest member.
    """
    m = voxels.shape[0]
    device = voxels.device
    if m == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    index = VoxelHashIndex(device, capacity=m)
    index.insert(pack_voxel_keys(voxels), torch.arange(m, device=device))
    offsets = _HALF_NEIGHBOURHOOD.to(device)
    neighbours = index.find(pack_voxel_keys((voxels.unsqueeze(1) + offsets).reshape(-1, 3)))
    src = torch.arange(m, device=device).repeat_interleave(offsets.shape[0])
    found = neighbours >= 0
    src, dst = src[found], neighbours[found]
    labels = torch.arange(m, device=device)
    while True:
        # Hook each edge's larger label (and its root) onto the smaller, then jump pointers until
        # every voxel points at a root; repeats until no edge joins two labels.
        low = torch.minimum(labels[src], labels[dst])
        updated = labels.clone()
        for ends in (src, dst, labels[src], labels[dst]):
            updated.scatter_reduce_(0, ends, low, reduce="amin")
        while not torch.equal(updated[updated], updated):
            updated = updated[updated]
        if torch.equal(updated, labels):
            break
        labels = updated
    return torch.unique(labels, return_inverse=True)[1]


def cluster_voxels(
    keys: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
    voxel_size_m: float,
    top_k: int,
    min_voxels: int = 1,
) -> tuple[VoxelCluster, ...]:
    """Group voxels scoring at least `threshold` into connected clusters and rank them.

    Args:
        keys: (N,) int64 packed voxel keys of the whole map.
        scores: (N,) float32 per-voxel scores.
        threshold: minimum score of a voxel in a cluster.
        voxel_size_m: voxel edge in metres.
        top_k: number of clusters to return, best first (by best voxel score).
        min_voxels: drop clusters smaller than this (isolated noisy voxels).

    Returns:
        Up to top_k clusters, best first.
    """
    selected = (scores >= threshold).nonzero().squeeze(1)
    if selected.numel() == 0 or top_k < 1:
        return ()
    voxels = unpack_voxel_keys(keys[selected])  # only the selected ones: cheap on big maps
    labels = connected_components(voxels)
    count = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=count)
    best = torch.full((count,), -torch.inf, device=scores.device)
    best.scatter_reduce_(0, labels, scores[selected], reduce="amax")
    order = [c for c in best.argsort(descending=True).tolist() if sizes[c] >= min_voxels]
    clusters = []
    for component in order[:top_k]:
        in_cluster = labels == component
        members = selected[in_cluster]
        cluster_voxels_ = voxels[in_cluster].to(torch.float64)
        member_scores = scores[members]
        clusters.append(
            VoxelCluster(
                centroid_m=((cluster_voxels_ + 0.5).mean(0) * voxel_size_m).cpu().numpy(),
                box_min_m=(cluster_voxels_.min(0).values * voxel_size_m).cpu().numpy(),
                box_max_m=((cluster_voxels_.max(0).values + 1) * voxel_size_m).cpu().numpy(),
                score=float(member_scores.max()),
                mean_score=float(member_scores.mean()),
                voxel_count=int(members.numel()),
                voxel_ids=members.cpu().numpy(),
            )
        )
    return tuple(clusters)
