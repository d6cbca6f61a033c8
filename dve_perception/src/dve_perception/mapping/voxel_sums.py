"""Group a frame's used pixels by voxel and sum their embeddings per voxel.

Two ways to sum, chosen by `EmbeddingIntegrator`: `voxel_means` multiplies a sparse (voxels x
pixels) matrix with the pixel rows (channel-last input, any per-pixel weight), and
`column_means` adds the pixel columns of a channel-first frame into per-voxel columns (unit
input without weights), which spares the transpose of the whole frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from dve_perception.mapping.voxel_map import VoxelEmbeddingMap
from dve_perception.mapping.workspace import Workspace

__all__ = ["VoxelGroups", "column_means", "group_by_voxel", "sums_by_column", "voxel_means"]

_NORM_EPS = 1e-12


@dataclass(frozen=True)
class VoxelGroups:
    """The used pixels grouped by voxel, voxels already in the map first (see `group_by_voxel`)."""

    keys: torch.Tensor  # (U,) int64 packed keys: existing voxels, then new ones, each ascending
    slots: torch.Tensor  # (U,) int64 storage slots of the keys, -1 for new voxels
    order: torch.Tensor  # (P,) int64 positions into the used pixels, grouped voxel by voxel
    crow: torch.Tensor  # (U + 1,) int64 where each voxel's group starts in `order`
    counts: torch.Tensor  # (U,) int64 pixels per voxel


def group_by_voxel(packed: torch.Tensor, voxel_map: VoxelEmbeddingMap) -> VoxelGroups:
    """Sort the used pixels by voxel key once, look the keys up, and put new voxels last.

    One stable sort gives the unique keys, the per-voxel pixel groups (ascending pixel order in
    each, as before) and the CSR row pointers. With existing voxels first, `fuse` updates and
    appends contiguous slices of the frame's voxel means instead of copying ~7k x 768 rows.
    """
    sorted_keys, order = torch.sort(packed, stable=True)
    p = packed.numel()
    starts = torch.ones(p, dtype=torch.bool, device=packed.device)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first = starts.nonzero().squeeze(1)  # (U,) where each voxel's group starts
    keys = sorted_keys[first]
    counts = torch.diff(first, append=first.new_tensor([p]))
    slots = voxel_map.find(keys)
    new = slots < 0
    created = int(new.sum())
    if 0 < created < keys.numel() and not bool(new[keys.numel() - created :].all()):
        voxel_order = torch.argsort(new.to(torch.uint8), stable=True)  # existing, then new
        keys, slots, counts = keys[voxel_order], slots[voxel_order], counts[voxel_order]
        position = torch.empty_like(voxel_order)
        position[voxel_order] = torch.arange(keys.numel(), device=packed.device)
        crow = _row_pointers(counts)
        group = torch.cumsum(starts, 0) - 1  # (P,) voxel (in key order) of each sorted pixel
        rank = torch.arange(p, device=packed.device) - first[group]  # position within its group
        regrouped = torch.empty_like(order)
        regrouped[crow[position[group]] + rank] = order
        order = regrouped
    else:
        crow = _row_pointers(counts)
    return VoxelGroups(keys=keys, slots=slots, order=order, crow=crow, counts=counts)


def _row_pointers(counts: torch.Tensor) -> torch.Tensor:
    crow = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


def voxel_means(
    rows: torch.Tensor,
    columns: torch.Tensor,
    confidence: torch.Tensor,
    scale: torch.Tensor,
    groups: VoxelGroups,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (U, D) unit mean directions (in `out`), (U,) mean confidences and usable flags.

    Args:
        rows: (N, D) float32 embeddings: one row per pixel, or per pixel with valid depth.
        columns: (P,) int64 row of each used pixel in rows.
        confidence: (P,) float32 pixel confidences in (0, 1].
        scale: (P,) float32 confidence / |embedding| of each used pixel.
        groups: the pixels grouped by voxel, in the order of the returned rows.
        out: (U, D) float32 buffer for the result (reused across frames: no page faults).
    """
    count = groups.keys.numel()
    # A sparse (U, N) matrix with one weighted entry per used pixel sums each voxel's unit
    # embeddings in one sparse-dense product that reads only the used rows, on CPU and CUDA.
    with warnings.catch_warnings():
        # torch warns once that sparse CSR is "beta"; the CSR x dense product used here has been
        # stable since torch 1.13 and is covered by our tests.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support", category=UserWarning)
        assignment = torch.sparse_csr_tensor(
            groups.crow,
            columns[groups.order],
            scale[groups.order],
            size=(count, rows.shape[0]),
            check_invariants=False,
        )
        # beta=0 ignores out's old content (even NaN), so an uninitialised buffer is fine.
        sums = torch.addmm(out, assignment, rows, beta=0, out=out)  # (U, D)
    directions, usable = _normalise_sums(sums)
    voxel = torch.repeat_interleave(torch.arange(count, device=rows.device), groups.counts)
    confidence_sums = torch.zeros(count, dtype=torch.float32, device=rows.device)
    confidence_sums.index_add_(0, voxel, confidence[groups.order])
    return directions, confidence_sums / groups.counts, usable


def _normalise_sums(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise (U, D) voxel sums in place; also return (U,) bool: finite and not vanished.

    A NaN or inf in any pixel of a voxel makes its sum's norm non-finite (possible with
    assume_unit, which trusts the input), and opposite embeddings can cancel: such voxels are
    not fused. The norms are needed anyway, so the check costs nothing extra.
    """
    norms = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
    usable = torch.isfinite(norms[:, 0]) & (norms[:, 0] > _NORM_EPS)
    return sums.div_(norms.clamp_min_(_NORM_EPS)), usable


def sums_by_column(
    embedding: torch.Tensor, confidence: torch.Tensor | None, assume_unit: bool
) -> bool:
    """Whether `column_means` applies: unit, unweighted, float32 and channel-first in memory.

    Only then is each pixel's weight 1, so the sums need no per-pixel scaling pass.
    """
    return (
        assume_unit
        and confidence is None
        and embedding.dtype == torch.float32
        and embedding.is_contiguous()
    )


def column_means(
    workspace: Workspace,
    embedding: torch.Tensor,
    pixels: torch.Tensor,
    groups: VoxelGroups,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`voxel_means` for a channel-first float32 unit embedding without confidence.

    Each voxel's sum is an `index_add_` of the frame's pixel columns along the contiguous
    pixel axis, so the (D, h * w) frame is read once in its own layout instead of being
    transposed first (the transpose cost ~12 ms of a 120x160x768 frame and ~500 ms of a
    480x640 one on a 2-core CPU). Pixels that are not used add into one spare column.
    """
    d, h, w = embedding.shape
    count = groups.keys.numel()
    target = workspace.get("column_target", (h * w,), torch.int64).fill_(count)
    voxel = torch.repeat_interleave(torch.arange(count, device=pixels.device), groups.counts)
    target[pixels[groups.order]] = voxel
    sums_t = workspace.get("column_sums", (d, count + 1), torch.float32).zero_()
    sums_t.index_add_(1, target, embedding.reshape(d, h * w))
    directions, usable = _normalise_sums(out.copy_(sums_t[:, :count].T))
    return directions, torch.ones(count, dtype=torch.float32, device=out.device), usable
