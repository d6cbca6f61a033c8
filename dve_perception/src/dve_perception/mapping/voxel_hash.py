"""Integer voxel keys and a hash index from keys to storage slots, in plain torch.

A voxel index (ix, iy, iz) is packed into one int64 key (21 bits per axis), so the sparse map is
a set of int64s. `VoxelHashIndex` is an open-addressing hash table with linear probing whose
probes run as vectorised torch ops over all queried keys at once. It works unchanged on CPU and
CUDA tensors, which is why it is written here rather than taken from open3d: open3d's
`core.HashMap` is faster on a desktop CPU for large batches, but its aarch64 wheels (the Jetson)
have no CUDA, and the map must run on the Jetson's GPU without a second implementation.
"""

from __future__ import annotations

import torch

__all__ = [
    "KEY_AXIS_BITS",
    "MAX_VOXEL_INDEX",
    "VoxelHashIndex",
    "pack_voxel_keys",
    "unpack_voxel_keys",
    "voxel_centers_m",
]

#: Bits per axis in a packed key; 3 x 21 = 63 bits keeps keys non-negative int64.
KEY_AXIS_BITS = 21
_OFFSET = 1 << (KEY_AXIS_BITS - 1)
_AXIS_MASK = (1 << KEY_AXIS_BITS) - 1
#: Voxel indices must lie in [-MAX_VOXEL_INDEX, MAX_VOXEL_INDEX): +-52 km at 5 cm voxels.
MAX_VOXEL_INDEX = _OFFSET
#: Marks an empty bucket; packed keys are never negative.
_EMPTY = -1
#: Fibonacci hashing multiplier (2^64 / golden ratio) as a signed int64; int64 products wrap.
_HASH_MULTIPLIER = -7046029254386353131
#: The table doubles when more than this fraction of buckets is used; linear probing stays short.
_MAX_LOAD = 0.5


def pack_voxel_keys(voxels: torch.Tensor) -> torch.Tensor:
    """Pack integer voxel indices into int64 keys.

    Args:
        voxels: (M, 3) integer voxel indices, each in [-MAX_VOXEL_INDEX, MAX_VOXEL_INDEX).

    Returns:
        (M,) int64 keys, non-negative; the order of keys is lexicographic in (ix, iy, iz).
    """
    shifted = voxels.to(torch.int64) + _OFFSET
    return (shifted[:, 0] << (2 * KEY_AXIS_BITS)) | (shifted[:, 1] << KEY_AXIS_BITS) | shifted[:, 2]


def unpack_voxel_keys(keys: torch.Tensor) -> torch.Tensor:
    """Invert `pack_voxel_keys`: (M,) int64 keys -> (M, 3) int64 voxel indices."""
    ix = (keys >> (2 * KEY_AXIS_BITS)) & _AXIS_MASK
    iy = (keys >> KEY_AXIS_BITS) & _AXIS_MASK
    iz = keys & _AXIS_MASK
    return torch.stack([ix, iy, iz], dim=1) - _OFFSET


def voxel_centers_m(keys: torch.Tensor, voxel_size_m: float) -> torch.Tensor:
    """Return the (M, 3) float32 centres in metres of the voxels with these packed keys."""
    return (unpack_voxel_keys(keys).to(torch.float32) + 0.5) * voxel_size_m


class VoxelHashIndex:
    """Map unique int64 keys to int64 slots with an open-addressing table on one device.

    `find` and `insert` take whole batches; each probe step is a handful of torch ops over the
    keys still searching, so the Python loop runs as many times as the longest probe sequence
    (a few at the load factor kept here), not once per key.
    """

    def __init__(self, device: torch.device | str = "cpu", capacity: int = 1024) -> None:
        """Create an empty index with room for `capacity` keys before it grows."""
        self.device = torch.device(device)
        self._allocate(_bucket_count(capacity))
        self._size = 0

    def __len__(self) -> int:
        """Return the number of keys stored."""
        return self._size

    @property
    def bucket_count(self) -> int:
        """Return the number of buckets (memory: 16 bytes each)."""
        return self._keys.numel()

    def find(self, keys: torch.Tensor) -> torch.Tensor:
        """Look up keys.

        Args:
            keys: (M,) int64 keys on this index's device.

        Returns:
            (M,) int64 slots, -1 for keys that are not present.
        """
        result = torch.full_like(keys, -1)
        position = self._home(keys)
        pending = torch.arange(keys.shape[0], device=self.device)
        while pending.numel() > 0:
            probe = position[pending]
            stored = self._keys[probe]
            hit = stored == keys[pending]
            result[pending[hit]] = self._slots[probe[hit]]
            pending = pending[~hit & (stored != _EMPTY)]
            position[pending] = (position[pending] + 1) & self._mask
        return result

    def insert(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Insert keys that are unique and not yet present, with their slots.

        Args:
            keys: (M,) int64 keys, unique and absent from the index (the caller checks with
                `find`; inserting a present key would store it twice).
            slots: (M,) int64 slots to associate with the keys.
        """
        if keys.numel() == 0:
            return
        if (self._size + keys.numel()) > _MAX_LOAD * self._keys.numel():
            self._grow(self._size + keys.numel())
        self._insert_unchecked(keys, slots)
        self._size += keys.numel()

    def rebuild(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Replace the whole content, e.g. after voxels were evicted and storage compacted."""
        self._allocate(_bucket_count(keys.numel()))
        self._size = 0
        self.insert(keys, slots)

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (keys, slots) of every stored entry, in bucket order."""
        used = self._keys != _EMPTY
        return self._keys[used], self._slots[used]

    def _allocate(self, buckets: int) -> None:
        self._keys = torch.full((buckets,), _EMPTY, dtype=torch.int64, device=self.device)
        self._slots = torch.full((buckets,), -1, dtype=torch.int64, device=self.device)
        self._mask = buckets - 1
        self._shift = 64 - (buckets.bit_length() - 1)

    def _home(self, keys: torch.Tensor) -> torch.Tensor:
        # The high bits of the product mix all key bits; the arithmetic shift of a negative
        # product is harmless because the mask keeps only the low bits of the result.
        return ((keys * _HASH_MULTIPLIER) >> self._shift) & self._mask

    def _grow(self, needed: int) -> None:
        keys, slots = self.items()
        self._allocate(_bucket_count(needed))
        self._insert_unchecked(keys, slots)

    def _insert_unchecked(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        position = self._home(keys)
        pending = torch.arange(keys.shape[0], device=self.device)
        while pending.numel() > 0:
            probe = position[pending]
            free = self._keys[probe] == _EMPTY
            claim, claim_at = pending[free], probe[free]
            # Keys racing for one free bucket all write it; exactly one write survives, and
            # the read-back tells each key whether it won. Losers probe on.
            self._keys[claim_at] = keys[claim]
            won = self._keys[claim_at] == keys[claim]
            self._slots[claim_at[won]] = slots[claim[won]]
            placed = torch.zeros(keys.shape[0], dtype=torch.bool, device=self.device)
            placed[claim[won]] = True
            pending = pending[~placed[pending]]
            position[pending] = (position[pending] + 1) & self._mask


def _bucket_count(keys: int) -> int:
    """Return the power-of-two bucket count that holds `keys` below the maximum load."""
    needed = max(16, int(keys / _MAX_LOAD) + 1)
    return 1 << (needed - 1).bit_length()
