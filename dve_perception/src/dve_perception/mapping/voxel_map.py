"""Sparse voxel storage of fused embeddings: keys, features, weights, recency and a memory cap.

The map knows voxels, not cameras (the integrator turns frames into per-voxel observations).
Each voxel holds the weighted running mean m of the unit embeddings observed in it, either in
full as float16 (`float16`) or as coefficients c = B^T m in an orthonormal basis B, stored as
float16 (`pca`) or as fixed-point integers (`pca_int`, fixed_point_codes.py).
Scores against a unit query q are cosines <q, m> / |m| = <B^T q, c> / |m|; |m| is kept per voxel
(with pca it is not |c|: the difference |m|^2 - |c|^2 is the energy the basis drops). Storage lives
in preallocated tensors on one device (CPU or CUDA) and grows geometrically up to `max_voxels`.

With `set_negatives`, each voxel also keeps its best score against a fixed set of negative
vectors (LERF's canonical phrases), recomputed for the voxels that changed when it is next
read, so a query that uses those negatives scores the map once instead of once per negative.
"""

from __future__ import annotations

import logging

import torch

from dve_perception.errors import ConfigError
from dve_perception.mapping.fixed_point_codes import FixedPointCodes
from dve_perception.mapping.float16_rounding import StochasticFloat16
from dve_perception.mapping.map_config import PCA_ENCODINGS, MapConfig
from dve_perception.mapping.voxel_encoding import VoxelEncoding, dropped_energy, row_norms
from dve_perception.mapping.voxel_hash import (
    VoxelHashIndex,
    pack_voxel_keys,
    unpack_voxel_keys,
    voxel_centers_m,
)
from dve_perception.mapping.voxel_scores import VoxelScoring
from dve_perception.mapping.workspace import Workspace

__all__ = ["VoxelEmbeddingMap"]

_LOG = logging.getLogger(__name__)
_NORM_EPS = 1e-12


class VoxelEmbeddingMap(VoxelEncoding, VoxelScoring):
    """Voxel keys -> (feature, weight, norm, last_seen), with budgeted eviction."""

    def __init__(self, config: MapConfig, device: torch.device | str = "cpu") -> None:
        """Create an empty map with `config` on `device`."""
        self.config = config
        self.device = torch.device(device)
        self.clear()

    def __len__(self) -> int:
        """Return the number of voxels."""
        return self._size

    @property
    def keys(self) -> torch.Tensor:
        """(N,) int64 packed voxel keys (a view; do not modify)."""
        return self._keys[: self._size]

    @property
    def voxels(self) -> torch.Tensor:
        """(N, 3) int64 integer voxel indices."""
        return unpack_voxel_keys(self.keys)

    @property
    def features(self) -> torch.Tensor:
        """(N, F) float16 running means or coefficients, or (N, W) int8 rows of `pca_int`.

        A view; do not modify. `decode` turns rows of any encoding into float32 values.
        """
        return self._features[: self._size]

    @property
    def weights(self) -> torch.Tensor:
        """(N,) float32 fused weights (a view)."""
        return self._weights[: self._size]

    @property
    def last_seen(self) -> torch.Tensor:
        """(N,) int64 index of the frame that last observed each voxel (a view)."""
        return self._last_seen[: self._size]

    def voxel_centers(self) -> torch.Tensor:
        """(N, 3) float32 voxel centres in metres, world frame."""
        return voxel_centers_m(self.keys, self.config.voxel_size_m)

    def bytes_per_voxel(self) -> float:
        """Return the storage per voxel: feature, weight, norm, recency, key and hash buckets.

        Plus 5 B (score and changed flag) while `set_negatives` is active.
        """
        row = self._features.shape[1] * self._features.element_size()
        per_row = row + 4 + 4 + 8 + 8 + (0 if self.negatives is None else 5)
        hash_bytes = 16 * self._index.bucket_count / max(1, self._size)
        return per_row + hash_bytes

    def fuse(
        self,
        keys: torch.Tensor,
        directions: torch.Tensor,
        weights: torch.Tensor,
        camera_position_m: torch.Tensor,
        slots: torch.Tensor | None = None,
    ) -> tuple[int, int]:
        """Fuse one frame's per-voxel observations; return (voxels created, voxels evicted).

        Existing voxels move toward the observation by weight / (fused weight + weight), and the
        fused weight is capped at `weight_cap`, so old content fades once a voxel is well known.
        When new voxels do not fit in `max_voxels`, the least recently observed voxels are
        evicted (farthest from the camera first among equally old ones); if the frame alone has
        more new voxels than the budget, only the nearest are admitted.

        Args:
            keys: (U,) int64 unique packed voxel keys observed in this frame.
            directions: (U, D) float32 unit embeddings, one per key (the frame's voxel means).
            weights: (U,) float32 observation weights in (0, 1].
            camera_position_m: (3,) float32 camera centre in the world frame.
            slots: `find(keys)` on the map as it is now, when the caller already has it. Keys
                already in the map listed before new ones (the integrator's order) are fused
                without copying rows.
        """
        codes = self.encode(directions)
        residual = self._residual_of(directions, codes)
        slots = self._index.find(keys) if slots is None else slots
        new = slots < 0
        created = int(new.sum())
        removed = 0
        budget = self.config.max_voxels
        if self._size + created > budget:
            removed += self._evict_for(created, camera_position_m, slots[~new])
            slots = self._index.find(keys)  # eviction compacted storage and moved slots
            new = slots < 0
            created = int(new.sum())
            room = budget - self._size
            if created > room:
                admitted = self._nearest_new(keys, new, room, camera_position_m)
                removed += created - room
                keys, codes, weights = keys[admitted], codes[admitted], weights[admitted]
                residual = residual[admitted]
                slots, new, created = slots[admitted], new[admitted], room
        existing = keys.numel() - created
        if created == 0:  # the common case once a place is mapped: no row copies
            self._update_existing(slots, codes, weights, residual)
        elif not bool(new[:existing].any()):  # existing first, then new: slices, no row copies
            old, fresh = slice(None, existing), slice(existing, None)
            self._update_existing(slots[old], codes[old], weights[old], residual[old])
            self._append(keys[fresh], codes[fresh], weights[fresh], residual[fresh])
        else:
            old = (~new).nonzero().squeeze(1)
            self._update_existing(slots[old], codes[old], weights[old], residual[old])
            fresh = new.nonzero().squeeze(1)
            self._append(keys[fresh], codes[fresh], weights[fresh], residual[fresh])
        self.evicted_count += removed
        self.frame_count += 1
        if self.config.feature_encoding in PCA_ENCODINGS and self.basis is None:
            if self._size >= self.config.pca_fit_voxels:
                self.fit_basis()
        return created, removed

    def find(self, keys: torch.Tensor) -> torch.Tensor:
        """Return the (M,) int64 storage slots of (M,) packed keys, -1 where not in the map."""
        return self._index.find(keys)

    @property
    def norms(self) -> torch.Tensor:
        """(N,) float32 norm of each voxel's stored mean (<= 1; lower when views disagree)."""
        return self._norms[: self._size]

    def remove(self, keep: torch.Tensor) -> int:
        """Keep only voxels where `keep` (N,) bool is True, compacting storage; return removed."""
        kept = keep.nonzero().squeeze(1)
        n = kept.numel()
        arrays = (self._keys, self._features, self._weights, self._norms, self._last_seen)
        for array in (*arrays, *self._negative_arrays()):
            array[:n] = array[kept]
        removed = self._size - n
        self._size = n
        self._index.rebuild(self.keys, torch.arange(n, device=self.device))
        return removed

    def clear(self) -> None:
        """Remove every voxel, the basis and the cached negatives; counters restart."""
        self.frame_count = 0
        self.evicted_count = 0
        self.basis: torch.Tensor | None = None  # (D, k) float32 once a PCA basis is fitted
        self.codes: FixedPointCodes | None = None  # with the basis of a pca_int map
        self.negatives: torch.Tensor | None = None  # (K, D) float32 while set_negatives is on
        self._rounding = StochasticFloat16(self.device)
        self._index = VoxelHashIndex(self.device)
        self._workspace = Workspace(self.device)
        self._size = 0
        self._resize(0, *self._row_format())  # empty: copies nothing, sets every array

    def load_state(
        self,
        voxels: torch.Tensor,
        features: torch.Tensor,
        weights: torch.Tensor,
        last_seen: torch.Tensor,
        basis: torch.Tensor | None,
        norms: torch.Tensor | None = None,
    ) -> None:
        """Replace the content with validated arrays (from a map file).

        `features` are rows as `features` returns them: (N, F) float16, or (N, W) int8 for a
        pca_int map (with its basis). `norms` (N,) float32 |m| belongs to a pca map; None
        (files of format 1) means the norms of the coefficients, as those maps scored. float16
        maps recompute them.

        Raises:
            ConfigError: rows of another encoding or size than this map's settings give.
        """
        n = voxels.shape[0]
        width, dtype = self._row_format(basis)
        right_type = features.dtype == dtype or (
            dtype != torch.int8 and features.is_floating_point()
        )
        if not right_type or tuple(features.shape[1:]) != (width,):
            raise ConfigError(
                f"this map's settings store {dtype} rows of {width} values, got "
                f"{features.dtype} rows of {tuple(features.shape[1:])}"
            )
        self._set_basis(None if basis is None else basis.to(self.device, torch.float32))
        self._size = 0
        self._resize(n, width, dtype)
        self._size = n
        self._keys[:n] = pack_voxel_keys(voxels.to(self.device))
        self._features[:n] = features.to(self.device)
        self._weights[:n] = weights.to(self.device)
        self._last_seen[:n] = last_seen.to(self.device)
        if norms is None or self.basis is None:
            self._norms[:n] = row_norms(self.decode(self._features[:n]))
        else:
            self._norms[:n] = norms.to(self.device)
        self._index.rebuild(self.keys, torch.arange(n, device=self.device))
        self._mark_changed(slice(0, n))

    def _evict_for(
        self, incoming: int, camera_position_m: torch.Tensor, protected: torch.Tensor
    ) -> int:
        """Evict old voxels so `incoming` new ones fit with some slack; return how many."""
        budget = self.config.max_voxels
        slack = int(self.config.eviction_fraction * budget)
        target = max(0, budget - min(incoming, budget) - slack)
        if self._size <= target:
            return 0
        recency = self.last_seen.clone()
        recency[protected] = self.frame_count  # observed again in the frame being fused
        distance = (self.voxel_centers() - camera_position_m).norm(dim=1)
        order = distance.argsort()  # nearest first
        order = order[recency[order].argsort(descending=True, stable=True)]
        keep = torch.zeros(self._size, dtype=torch.bool, device=self.device)
        keep[order[:target]] = True
        return self.remove(keep)

    def _nearest_new(
        self, keys: torch.Tensor, new: torch.Tensor, room: int, camera_position_m: torch.Tensor
    ) -> torch.Tensor:
        """Return a (U,) bool mask: every existing entry plus the `room` nearest new ones."""
        new_at = new.nonzero().squeeze(1)
        centres = voxel_centers_m(keys[new_at], self.config.voxel_size_m)
        nearest = new_at[(centres - camera_position_m).norm(dim=1).argsort()[:room]]
        admitted = ~new
        admitted[nearest] = True
        return admitted

    def _update_existing(
        self,
        slots: torch.Tensor,
        codes: torch.Tensor,
        weights: torch.Tensor,
        residual: torch.Tensor,
    ) -> None:
        old_weight = self._weights.index_select(0, slots)
        width, dtype = self._features.shape[1], self._features.dtype
        stored = self._workspace.get("rows_stored", (slots.numel(), width), dtype)
        mean = self._workspace.get("rows_float32", (slots.numel(), self.feature_dim), torch.float32)
        self.decode(torch.index_select(self._features, 0, slots, out=stored), out=mean)
        # m <- m + (x - m) * w / (W + w): the weighted running mean, in place (lerp) because the
        # temporaries of the spelled-out formula cost more than the arithmetic on a CPU.
        step = weights / (old_weight + weights)
        energy = None
        if self.basis is not None:
            # The residual r = m - B c moves like the mean, r <- (1 - a) r + a r_x, but only its
            # energy is known: the cross term 2 a (1 - a) <r, r_x> is taken as 0 (independent
            # residuals, e.g. pixel noise); exact for the first observation and at fit time.
            old = dropped_energy(self._norms.index_select(0, slots), mean)
            energy = old.mul_((1 - step).square_()).add_(residual * step.square())
        mean.lerp_(codes, step.unsqueeze(1))
        self._store(stored, mean)
        self._features.index_copy_(0, slots, stored)
        # Norms of the stored rows, not of the float32 mean, so that a reloaded map (which
        # recomputes them) scores bit-identically; `mean` is reused as the buffer.
        self._norms.index_copy_(0, slots, row_norms(self.decode(stored, out=mean), energy))
        self._weights.index_copy_(
            0, slots, (old_weight + weights).clamp_max(self.config.weight_cap)
        )
        self._last_seen[slots] = self.frame_count
        self._mark_changed(slots)

    def _append(
        self, keys: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor, residual: torch.Tensor
    ) -> None:
        m = keys.numel()
        if m == 0:
            return
        if self._size + m > self._capacity:
            grown = max(self._size + m, int(1.5 * self._capacity), 1024)
            self._resize(min(grown, self.config.max_voxels), *self._row_format())
        start, end = self._size, self._size + m
        self._keys[start:end] = keys
        stored = self._features[start:end]
        if self.codes is None:
            stored.copy_(codes)  # rounds to float16 in place, no temporary
        else:
            self.codes.encode(codes, stored)
        # Norms as `row_norms` computes them, in a reused float32 buffer (no page faults).
        rows = self._workspace.get("rows_float32", (m, self.feature_dim), torch.float32)
        energy = None if self.basis is None else residual
        self._norms[start:end] = row_norms(self.decode(stored, out=rows), energy)
        self._weights[start:end] = weights.clamp_max(self.config.weight_cap)
        self._last_seen[start:end] = self.frame_count
        self._index.insert(keys, torch.arange(start, end, device=self.device))
        self._size = end
        self._mark_changed(slice(start, end))

    def _resize(self, capacity: int, width: int, dtype: torch.dtype) -> None:
        """Reallocate storage for `capacity` voxels, keeping the current rows.

        Features are kept only when their format is unchanged (fit_basis writes the new ones).
        """
        n = self._size
        same_rows = (
            (width, dtype) == (self._features.shape[1], self._features.dtype) if n else False
        )
        arrays = {
            "_keys": torch.empty(capacity, dtype=torch.int64, device=self.device),
            "_features": torch.empty(capacity, width, dtype=dtype, device=self.device),
            "_weights": torch.empty(capacity, dtype=torch.float32, device=self.device),
            "_norms": torch.empty(capacity, dtype=torch.float32, device=self.device),
            "_last_seen": torch.empty(capacity, dtype=torch.int64, device=self.device),
        }
        arrays.update(self._new_negative_arrays(capacity))
        for name, array in arrays.items():
            if n and (name != "_features" or same_rows):
                array[:n] = getattr(self, name)[:n]
            setattr(self, name, array)
        self._capacity = capacity
