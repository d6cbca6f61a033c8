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
from dve_perception.mapping.workspace import Workspace

__all__ = ["EmbeddingIntegrator", "IntegrationStats"]

_NORM_EPS = 1e-12
#: Pixels per block when transposing a channel-first embedding: a block stays in cache, which is
#: ~3x faster on a desktop CPU than one large strided copy.
_TRANSPOSE_BLOCK = 4096


@dataclass(frozen=True)
class IntegrationStats:
    """What one `integrate` call did."""

    pixels_used: int
    pixels_invalid: int  # no depth, out of depth range, zero confidence or zero embedding
    voxels_observed: int
    voxels_new: int
    voxels_evicted: int


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

        Returns:
            Counts of what was used, skipped, created and evicted.

        Raises:
            InputError: wrong shapes, dimension or dtype, non-finite or non-rigid pose, bad K.
        """
        embedding, depth_m, confidence = self._check_arrays(embedding, depth_m, confidence)
        K = check_intrinsics(K)
        T_world_cam = check_pose(T_world_cam)
        rows = self._channels_last(embedding)  # (h * w, D)
        pixels, pixel_confidence, inverse_norm = self._valid_pixels(rows, depth_m, confidence)
        h, w = depth_m.shape
        p_world = transform_points(T_world_cam, backproject_depth(depth_m, K, pixels))
        voxels = torch.floor(p_world / self.map.config.voxel_size_m).to(torch.int64)
        in_range = ((voxels >= -MAX_VOXEL_INDEX) & (voxels < MAX_VOXEL_INDEX)).all(dim=1)
        pixels, voxels = pixels[in_range], voxels[in_range]
        pixel_confidence, inverse_norm = pixel_confidence[in_range], inverse_norm[in_range]
        if pixels.numel() == 0:
            self.map.frame_count += 1  # an empty frame still counts: recency is in frames
            return IntegrationStats(0, h * w, 0, 0, 0)
        keys, inverse = torch.unique(pack_voxel_keys(voxels), return_inverse=True)
        sums = self._workspace.get("voxel_sums", (keys.numel(), rows.shape[1]), torch.float32)
        directions, weights = _voxel_means(
            rows, pixels, pixel_confidence, inverse_norm, inverse, out=sums
        )
        camera = torch.as_tensor(T_world_cam[:3, 3], dtype=torch.float32, device=self.map.device)
        created, evicted = self.map.fuse(keys, directions, weights, camera)
        return IntegrationStats(
            pixels_used=pixels.numel(),
            pixels_invalid=h * w - pixels.numel(),
            voxels_observed=keys.numel(),
            voxels_new=created,
            voxels_evicted=evicted,
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
        self, rows: torch.Tensor, depth_m: torch.Tensor, confidence: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return usable pixels' flat indices, confidences and inverse embedding norms."""
        config = self.map.config
        depth = depth_m.reshape(-1)
        valid = (
            torch.isfinite(depth) & (depth >= config.min_depth_m) & (depth <= config.max_depth_m)
        )
        weight = torch.ones_like(depth) if confidence is None else confidence.reshape(-1)
        valid &= torch.isfinite(weight) & (weight > 0)
        norms = torch.linalg.vector_norm(rows, dim=1)
        valid &= torch.isfinite(norms) & (norms > _NORM_EPS)
        pixels = valid.nonzero().squeeze(1)
        return pixels, weight[pixels].clamp_max(1.0), 1.0 / norms[pixels]

    def _channels_last(self, embedding: torch.Tensor) -> torch.Tensor:
        """Return the embedding as (h * w, D) float32 rows, without a copy when possible."""
        d, h, w = embedding.shape
        hwc = embedding.permute(1, 2, 0)
        if hwc.is_contiguous() and embedding.dtype == torch.float32:
            return hwc.reshape(h * w, d)
        rows = self._workspace.get("channels_last", (h * w, d), torch.float32)
        flat = embedding.reshape(d, h * w)
        for start in range(0, h * w, _TRANSPOSE_BLOCK):
            stop = min(start + _TRANSPOSE_BLOCK, h * w)
            rows[start:stop].copy_(flat[:, start:stop].T)
        return rows


def _voxel_means(
    rows: torch.Tensor,
    pixels: torch.Tensor,
    confidence: torch.Tensor,
    inverse_norm: torch.Tensor,
    inverse: torch.Tensor,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (U, D) unit mean directions (in `out`) and (U,) mean confidences per voxel.

    Args:
        rows: (h * w, D) float32 embeddings, one row per pixel.
        pixels: (P,) int64 used pixel indices into rows.
        confidence: (P,) float32 pixel confidences in (0, 1].
        inverse_norm: (P,) float32 1 / |embedding| of each used pixel.
        inverse: (P,) int64 voxel index in [0, U) of each used pixel.
        out: (U, D) float32 buffer for the result (reused across frames: no page faults).
    """
    count = int(inverse.max()) + 1
    # A sparse (U, h*w) matrix with one weighted entry per used pixel sums each voxel's unit
    # embeddings in one sparse-dense product that reads only the used rows, on CPU and CUDA.
    order = torch.argsort(inverse, stable=True)
    pixels_per_voxel = torch.bincount(inverse, minlength=count)
    crow = torch.zeros(count + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(pixels_per_voxel, 0)
    values = (confidence * inverse_norm)[order]
    with warnings.catch_warnings():
        # torch warns once that sparse CSR is "beta"; the CSR x dense product used here has been
        # stable since torch 1.13 and is covered by our tests.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support", category=UserWarning)
        assignment = torch.sparse_csr_tensor(
            crow, pixels[order], values, size=(count, rows.shape[0]), check_invariants=False
        )
        # beta=0 ignores out's old content (even NaN), so an uninitialised buffer is fine.
        sums = torch.addmm(out, assignment, rows, beta=0, out=out)  # (U, D)
    directions = sums.div_(torch.linalg.vector_norm(sums, dim=1, keepdim=True).clamp_min(_NORM_EPS))
    mean_confidence = torch.bincount(inverse, weights=confidence, minlength=count)
    return directions, mean_confidence / pixels_per_voxel


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
