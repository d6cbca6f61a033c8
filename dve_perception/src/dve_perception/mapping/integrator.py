"""Turn one embedding frame with depth and pose into per-voxel observations and fuse them.

Per frame: keep pixels with finite depth in [min_depth_m, max_depth_m], positive confidence and a
non-zero embedding; back-project them with K, move them to the world with T_world_cam, and
assign each to its voxel. Within the frame a voxel's observation is the confidence-weighted mean
of its pixels' unit embeddings, renormalised, with weight = the mean confidence of those pixels
(each frame is one vote per voxel). The map then fuses that into its running mean.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dve_perception.camera import backproject_depth, check_intrinsics, check_pose, transform_points
from dve_perception.errors import InputError
from dve_perception.mapping.voxel_hash import MAX_VOXEL_INDEX, pack_voxel_keys
from dve_perception.mapping.voxel_map import VoxelEmbeddingMap
from dve_perception.mapping.voxel_sums import (
    column_means,
    group_by_voxel,
    sums_by_column,
    voxel_means,
)
from dve_perception.mapping.workspace import Workspace

__all__ = ["EmbeddingIntegrator", "IntegrationStats"]

_NORM_EPS = 1e-12
#: Pixels per block when transposing a channel-first embedding: a block stays in cache, which is
#: ~3x faster on a desktop CPU than one large strided copy.
_TRANSPOSE_BLOCK = 4096
#: Pixels per block when gathering and converting the used rows of a non-float32 embedding
#: (1.5 MB of float16 at D = 768, which stays in cache until it is converted).
_GATHER_BLOCK = 1024
#: Gather the used rows only when at most this fraction of the pixels is used: above it, one
#: streaming conversion of the whole frame was as fast or faster (gather + convert costs about
#: as much per row as the conversion alone; 1 thread, 120x160x768 float16).
_GATHER_MAX_FRACTION = 0.6
#: With `assume_unit`, this many used pixels (evenly spaced) are checked to have unit norm, and a
#: norm off by more than the tolerance is refused: it catches unnormalised input for ~10 us a
#: frame, while float16 rounding of a unit vector moves its norm by ~1e-3 at most.
_UNIT_CHECK_SAMPLES = 64
_UNIT_TOLERANCE = 1e-2


@dataclass(frozen=True)
class IntegrationStats:
    """What one `integrate` call did."""

    pixels_used: int
    pixels_invalid: int  # no depth, out of depth range, zero confidence or zero embedding
    voxels_observed: int
    voxels_new: int
    voxels_evicted: int
    #: Voxels whose summed embedding was not finite or vanished (e.g. a NaN pixel with
    #: assume_unit): not fused this frame.
    voxels_skipped: int = 0


class EmbeddingIntegrator:
    """Back-project and fuse embedding frames into a `VoxelEmbeddingMap`.

    Keeps a scratch buffer for the channel-last copy of the embedding between calls, so a
    stream of same-sized frames does not allocate (and page-fault) tens of MB per frame.
    """

    def __init__(self, voxel_map: VoxelEmbeddingMap) -> None:
        """Integrate into `voxel_map` (its config gives voxel size and depth limits)."""
        self.map = voxel_map
        self._workspace = Workspace(voxel_map.device)

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
        """Fuse one frame. All inputs are validated before the map is touched.

        Args:
            embedding: (D, h, w) float embeddings, normalised or not. Any memory layout; a
                channel-last tensor viewed as (D, h, w) (`hwc.permute(2, 0, 1)`) is read without
                a copy, which is the fast path on CPU.
            depth_m: (h, w) depth in metres along the optical axis; 0, NaN and inf are invalid.
            K: (3, 3) intrinsics at (h, w) (scale them when the embedding is downsampled).
            T_world_cam: (4, 4) rigid transform from the optical frame to the world frame.
            confidence: optional (h, w) weights in [0, 1]; pixels with 0 are ignored.
            assume_unit: the caller promises that every pixel with valid depth and confidence
                has a finite unit-norm embedding (e.g. the fused backend's L2-normalised float16
                output), so the per-pixel norm pass is skipped; a channel-first float32 frame
                without confidence is then summed in its own layout, with no transpose. Mark
                unusable pixels with depth 0 or confidence 0; a zero embedding adds nothing to
                its voxel's direction (but counts in its weight). Checked on an even sample of
                64 used pixels, where a norm other than 1 (or 0) is refused; a NaN elsewhere
                makes its voxel's sum non-finite, and such voxels are skipped (counted in
                `voxels_skipped`), not fused.

        Returns:
            Counts of what was used, skipped, created and evicted.

        Raises:
            InputError: wrong shapes, dimension or dtype, non-finite or non-rigid pose, bad K;
                with assume_unit, a sampled pixel whose norm is not 1 (+-1e-2).
        """
        embedding, depth_m, confidence = self._check_arrays(embedding, depth_m, confidence)
        K = check_intrinsics(K)
        T_world_cam = check_pose(T_world_cam)
        d, h, w = embedding.shape
        by_column = sums_by_column(embedding, confidence, assume_unit)
        if by_column:  # channel-first unit float32: summed in place, never transposed
            rows = embedding.reshape(d, h * w).T  # a view, for the unit-norm sample only
        else:
            rows = self._channels_last(embedding)  # (h * w, D), float32 unless a view
        pixels, columns, pixel_confidence, scale, rows = self._valid_pixels(
            rows, depth_m, confidence, assume_unit
        )
        p_world = transform_points(T_world_cam, backproject_depth(depth_m, K, pixels))
        voxels = torch.floor(p_world / self.map.config.voxel_size_m).to(torch.int64)
        in_range = ((voxels >= -MAX_VOXEL_INDEX) & (voxels < MAX_VOXEL_INDEX)).all(dim=1)
        if not bool(in_range.all()):
            pixels, voxels, columns = pixels[in_range], voxels[in_range], columns[in_range]
            pixel_confidence, scale = pixel_confidence[in_range], scale[in_range]
        if pixels.numel() == 0:
            self.map.frame_count += 1  # an empty frame still counts: recency is in frames
            return IntegrationStats(0, h * w, 0, 0, 0)
        groups = group_by_voxel(pack_voxel_keys(voxels), self.map)
        sums = self._workspace.get(
            "voxel_sums", (groups.keys.numel(), rows.shape[1]), torch.float32
        )
        if by_column:
            directions, weights, usable = column_means(
                self._workspace, embedding, pixels, groups, sums
            )
        else:
            directions, weights, usable = voxel_means(
                rows, columns, pixel_confidence, scale, groups, out=sums
            )
        keys, slots = groups.keys, groups.slots
        if not bool(usable.all()):  # NaN, inf or cancelling embeddings: skip those voxels
            keys, slots = keys[usable], slots[usable]
            directions, weights = directions[usable], weights[usable]
        camera = torch.as_tensor(T_world_cam[:3, 3], dtype=torch.float32, device=self.map.device)
        created, evicted = self.map.fuse(keys, directions, weights, camera, slots)
        return IntegrationStats(
            pixels_used=pixels.numel(),
            pixels_invalid=h * w - pixels.numel(),
            voxels_observed=keys.numel(),
            voxels_new=created,
            voxels_evicted=evicted,
            voxels_skipped=groups.keys.numel() - keys.numel(),
        )

    def _check_arrays(
        self,
        embedding: torch.Tensor | np.ndarray,
        depth_m: torch.Tensor | np.ndarray,
        confidence: torch.Tensor | np.ndarray | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        device = self.map.device
        embedding = _as_float_tensor("embedding", embedding, device)
        depth_m = _as_float_tensor("depth_m", depth_m, device)
        dim = self.map.config.embedding_dim
        if embedding.ndim != 3 or embedding.shape[0] != dim:
            raise InputError(
                f"embedding must have shape ({dim}, h, w), got {tuple(embedding.shape)}; "
                "pass one frame, channels first, of the map's embedding dimension"
            )
        if tuple(depth_m.shape) != tuple(embedding.shape[1:]):
            raise InputError(
                f"depth_m is {tuple(depth_m.shape)} but the embedding is "
                f"{tuple(embedding.shape[1:])}; resize depth (nearest) and scale K to the "
                "embedding resolution"
            )
        if confidence is not None:
            confidence = _as_float_tensor("confidence", confidence, device)
            if confidence.shape != depth_m.shape:
                raise InputError(
                    f"confidence is {tuple(confidence.shape)}, expected {tuple(depth_m.shape)}"
                )
        return embedding, depth_m, confidence

    def _valid_pixels(
        self,
        rows: torch.Tensor,
        depth_m: torch.Tensor,
        confidence: torch.Tensor | None,
        assume_unit: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Find the usable pixels and make float32 rows for them.

        Returns:
            The usable pixels' flat indices, their row indices into the returned rows, their
            confidences, confidence / embedding norm, and (N, D) float32 rows: `rows` itself
            when it is float32, else a converted copy (of the pixels with valid depth and
            confidence only, when they are few).
        """
        config = self.map.config
        depth = depth_m.reshape(-1)
        valid = (
            torch.isfinite(depth) & (depth >= config.min_depth_m) & (depth <= config.max_depth_m)
        )
        if confidence is not None:
            weight = confidence.reshape(-1)
            valid &= torch.isfinite(weight) & (weight > 0)
        pixels = valid.nonzero().squeeze(1)
        if assume_unit:
            _check_unit_sample(rows, pixels)
        columns = pixels
        if rows.dtype != torch.float32:
            # float16 -> float32 is exact, so converting only the rows that can be used (e.g.
            # when much of the frame is beyond max_depth_m) gives the same sums for less work.
            rows, columns = self._as_float32(rows, pixels)
        if not assume_unit:
            # The norm of every (kept) row is one pass (~1.5 ms over a 120x160x768 frame).
            norms = torch.linalg.vector_norm(rows, dim=1)[columns]
            usable = torch.isfinite(norms) & (norms > _NORM_EPS)
            if not bool(usable.all()):
                pixels, columns, norms = pixels[usable], columns[usable], norms[usable]
        if confidence is None:
            pixel_confidence = torch.ones(pixels.shape, dtype=torch.float32, device=rows.device)
        else:
            pixel_confidence = weight[pixels].to(torch.float32).clamp_max(1.0)
        scale = pixel_confidence if assume_unit else pixel_confidence / norms
        return pixels, columns, pixel_confidence, scale, rows

    def _as_float32(
        self, rows: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return float32 rows for `pixels` in a workspace buffer, and each pixel's row in it.

        Few used pixels: their rows only, gathered block by block so that the source-dtype block
        stays in cache until converted. Otherwise the whole frame, in one streaming conversion.
        """
        count, dim = pixels.numel(), rows.shape[1]
        if count > _GATHER_MAX_FRACTION * rows.shape[0]:
            out = self._workspace.get("channels_last", tuple(rows.shape), torch.float32)
            return out.copy_(rows), pixels
        out = self._workspace.get("channels_last", (count, dim), torch.float32)
        block = self._workspace.get("gather_block", (_GATHER_BLOCK, dim), rows.dtype)
        for start in range(0, count, _GATHER_BLOCK):
            stop = min(start + _GATHER_BLOCK, count)
            picked = torch.index_select(rows, 0, pixels[start:stop], out=block[: stop - start])
            out[start:stop].copy_(picked)
        return out, torch.arange(count, device=rows.device)

    def _channels_last(self, embedding: torch.Tensor) -> torch.Tensor:
        """Return the embedding as (h * w, D) rows, without a copy when possible.

        A channel-last view is returned as is, in any dtype (non-float32 rows are converted later,
        only for the usable pixels); otherwise a float32 copy, transposed block by block.
        """
        d, h, w = embedding.shape
        hwc = embedding.permute(1, 2, 0)
        if hwc.is_contiguous():
            return hwc.reshape(h * w, d)
        rows = self._workspace.get("channels_last", (h * w, d), torch.float32)
        flat = embedding.reshape(d, h * w)
        for start in range(0, h * w, _TRANSPOSE_BLOCK):
            stop = min(start + _TRANSPOSE_BLOCK, h * w)
            rows[start:stop].copy_(flat[:, start:stop].T)
        return rows


def _check_unit_sample(rows: torch.Tensor, pixels: torch.Tensor) -> None:
    """Raise InputError unless an even sample of the used pixels has unit (or zero) embeddings.

    Zero is allowed: `EmbeddingFrame` marks pixels where the network saw nothing that way.
    """
    if pixels.numel() == 0:
        return
    step = max(1, pixels.numel() // _UNIT_CHECK_SAMPLES)
    sample = rows[pixels[::step]].to(torch.float32)
    norms = torch.linalg.vector_norm(sample, dim=1)
    off = torch.where(norms == 0, torch.zeros_like(norms), (norms - 1.0).abs())
    worst = float(off.nan_to_num(nan=float("inf")).max())
    if worst > _UNIT_TOLERANCE:
        raise InputError(
            "integrate(assume_unit=True) needs unit-norm embeddings at every usable pixel, but "
            f"a sampled pixel has norm {1.0 + worst:.4g} (|norm - 1| = {worst:.3g} > "
            f"{_UNIT_TOLERANCE:g}); normalise the embedding or pass assume_unit=False"
        )


def _as_float_tensor(name: str, value: object, device: torch.device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise InputError(f"{name} must be a floating-point array, got dtype {value.dtype}")
        with warnings.catch_warnings():
            # Read-only arrays (e.g. memory-mapped frames) are fine: the map never writes to
            # its inputs, so the zero-copy view is safe and a copy would cost a frame's worth.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise InputError(
            f"{name} must be a floating-point tensor or array, got {type(value).__name__}"
        )
    return value.to(device)
