"""The torch hash index and key packing."""

from __future__ import annotations

import pytest
import torch

from dve_perception.mapping.voxel_hash import (
    MAX_VOXEL_INDEX,
    VoxelHashIndex,
    pack_voxel_keys,
    unpack_voxel_keys,
)


def test_pack_and_unpack_are_inverse_over_the_whole_index_range():
    corners = torch.tensor(
        [
            [-MAX_VOXEL_INDEX, -MAX_VOXEL_INDEX, -MAX_VOXEL_INDEX],
            [MAX_VOXEL_INDEX - 1] * 3,
            [0, 0, 0],
        ]
    )
    voxels = torch.cat([corners, torch.randint(-5000, 5000, (1000, 3))])
    keys = pack_voxel_keys(voxels)
    assert (keys >= 0).all()
    assert torch.equal(unpack_voxel_keys(keys), voxels)


def test_packed_keys_are_distinct_for_distinct_voxels():
    voxels = torch.cartesian_prod(*[torch.arange(-3, 3)] * 3)
    assert torch.unique(pack_voxel_keys(voxels)).numel() == voxels.shape[0]


def test_find_returns_inserted_slots_and_minus_one_for_absent_keys():
    index = VoxelHashIndex(capacity=4)  # forces several rehashes
    keys = torch.unique(pack_voxel_keys(torch.randint(-100, 100, (5000, 3))))
    slots = torch.randperm(keys.numel())
    for chunk in range(0, keys.numel(), 700):
        index.insert(keys[chunk : chunk + 700], slots[chunk : chunk + 700])
    assert len(index) == keys.numel()
    assert torch.equal(index.find(keys), slots)
    absent = pack_voxel_keys(torch.randint(200, 300, (500, 3)))
    assert (index.find(absent) == -1).all()


def test_colliding_keys_in_one_batch_all_get_buckets():
    index = VoxelHashIndex(capacity=16)
    keys = torch.arange(0, 16 * 1024, 1024, dtype=torch.int64)  # same low bits
    index.insert(keys, torch.arange(16))
    assert torch.equal(index.find(keys), torch.arange(16))


def test_rebuild_replaces_content():
    index = VoxelHashIndex()
    index.insert(torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2]))
    index.rebuild(torch.tensor([7, 9]), torch.tensor([0, 1]))
    assert index.find(torch.tensor([5, 6, 7, 9])).tolist() == [-1, -1, 0, 1]
    assert len(index) == 2


@pytest.mark.gpu
def test_index_gives_the_same_answers_on_cuda():
    keys = torch.unique(pack_voxel_keys(torch.randint(-100, 100, (5000, 3))))
    cpu, gpu = VoxelHashIndex("cpu"), VoxelHashIndex("cuda")
    cpu.insert(keys, torch.arange(keys.numel()))
    gpu.insert(keys.cuda(), torch.arange(keys.numel(), device="cuda"))
    probe = torch.cat([keys, keys + 1])
    assert torch.equal(gpu.find(probe.cuda()).cpu(), cpu.find(probe))
