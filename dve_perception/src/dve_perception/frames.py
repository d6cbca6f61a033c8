"""The value objects that carry one RGB-D frame, and its embedding, between the pipeline stages.

`RGBDFrame` is what sources (bag, folder) and the ROS adapters build from outside data: colour
and depth registered to it, in metres, with the intrinsics at that resolution. `EmbeddingFrame`
is what the perception stage hands to the map: unit embeddings at the network's output
resolution, with depth resampled and intrinsics rescaled to that same resolution, so the map
never needs to know about the network's input or output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dve_perception.camera import check_intrinsics, check_pose
from dve_perception.errors import InputError

__all__ = [
    "EmbeddingFrame",
    "RGBDFrame",
    "resample_frame",
    "sample_depth_at_centres",
    "scale_intrinsics",
    "to_embedding_frame",
]


@dataclass(frozen=True, eq=False)
class RGBDFrame:
    """One registered colour/depth pair.

    Attributes:
        rgb: (H, W, 3) uint8 in RGB order.
        depth_m: (H, W) float32 depth along the optical axis in metres; 0 marks invalid pixels
            (NaN, inf and negative values are replaced by 0 on construction).
        K: (3, 3) float64 intrinsics of the colour camera at (H, W).
        stamp_ns: acquisition time in nanoseconds (the colour image's header stamp).
        frame_id: the camera's optical frame (e.g. "camera_color_optical_frame").
        T_world_cam: (4, 4) float64 pose of the optical frame in the world, or None when the
            source has none (then the frame cannot be mapped).
    """

    rgb: np.ndarray
    depth_m: np.ndarray
    K: np.ndarray
    stamp_ns: int
    frame_id: str = ""
    T_world_cam: np.ndarray | None = None

    def __post_init__(self) -> None:
        rgb = np.asarray(self.rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
            raise InputError(
                f"rgb must be a non-empty (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}"
            )
        depth = np.asarray(self.depth_m)
        if depth.dtype != np.float32 or depth.ndim != 2:
            raise InputError(
                f"depth_m must be (H, W) float32 metres, got {depth.dtype} {depth.shape}"
            )
        if depth.shape != rgb.shape[:2]:
            raise InputError(
                f"depth image is {depth.shape[0]}x{depth.shape[1]} but the colour image is "
                f"{rgb.shape[0]}x{rgb.shape[1]}; register depth to colour first "
                "(e.g. depth_image_proc/register)"
            )
        invalid = ~np.isfinite(depth) | (depth < 0)
        if invalid.any():
            depth = np.where(invalid, np.float32(0.0), depth)
        if isinstance(self.stamp_ns, bool) or not isinstance(self.stamp_ns, (int, np.integer)):
            raise InputError(f"stamp_ns must be an integer, got {self.stamp_ns!r}")
        object.__setattr__(self, "rgb", rgb)
        object.__setattr__(self, "depth_m", depth)
        object.__setattr__(self, "K", check_intrinsics(self.K))
        object.__setattr__(self, "stamp_ns", int(self.stamp_ns))
        if self.T_world_cam is not None:
            object.__setattr__(self, "T_world_cam", check_pose(self.T_world_cam))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


@dataclass(frozen=True, eq=False)
class EmbeddingFrame:
    """Unit embeddings with depth and intrinsics at the same (h, w) resolution.

    Attributes:
        embedding: (D, h, w) float tensor, unit norm over D (zero where the network saw nothing
            is allowed; the map skips zero vectors).
        depth_m: (h, w) float32 tensor in metres on the embedding's device, 0 = invalid.
        K: (3, 3) float64 intrinsics at (h, w).
        stamp_ns: the source frame's stamp.
        frame_id: the source frame's optical frame.
        T_world_cam: the source frame's pose, or None.
    """

    embedding: torch.Tensor
    depth_m: torch.Tensor
    K: np.ndarray
    stamp_ns: int
    frame_id: str = ""
    T_world_cam: np.ndarray | None = None

    def __post_init__(self) -> None:
        emb, depth = self.embedding, self.depth_m
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3:
            raise InputError(f"embedding must be a (D, h, w) tensor, got {_describe(emb)}")
        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != tuple(emb.shape[1:]):
            raise InputError(
                f"depth_m must be a tensor of shape {tuple(emb.shape[1:])} (the embedding's h, w), "
                f"got {_describe(depth)}"
            )
        object.__setattr__(self, "K", check_intrinsics(self.K))


def scale_intrinsics(K: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Return the intrinsics of an image resized by (scale_x, scale_y).

    Pixel centres sit at integer coordinates (OpenCV/ROS), and a resize maps pixel-centre grids
    onto each other, so a coordinate u becomes (u + 0.5) * s - 0.5: fx' = fx * s and
    cx' = (cx + 0.5) * s - 0.5 (the same along y). Scaling cx by s alone would shift every
    back-projected point by half an output pixel.

    Args:
        K: (3, 3) intrinsics at the original size.
        scale_x: new width / old width.
        scale_y: new height / old height.

    Returns:
        (3, 3) float64 intrinsics at the new size.
    """
    K = check_intrinsics(K)
    if not (scale_x > 0 and scale_y > 0 and np.isfinite(scale_x) and np.isfinite(scale_y)):
        raise InputError(f"scales must be positive and finite, got {scale_x}, {scale_y}")
    out = K.copy()
    out[0, 0] *= scale_x
    out[0, 1] *= scale_x
    out[0, 2] = (K[0, 2] + 0.5) * scale_x - 0.5
    out[1, 1] *= scale_y
    out[1, 2] = (K[1, 2] + 0.5) * scale_y - 0.5
    return out


def sample_depth_at_centres(depth_m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample depth to `size` by taking, for each output pixel, the source pixel at its centre.

    Nearest sampling keeps invalid pixels invalid and never averages across depth edges. Taking
    the pixel under the output pixel's centre (not its top-left corner) is what makes the
    result consistent with `scale_intrinsics`: output pixel i covers source coordinates
    [i / s, (i + 1) / s), whose centre is (i + 0.5) / s.

    Args:
        depth_m: (H, W) depth tensor.
        size: output (h, w).

    Returns:
        (h, w) tensor of the same dtype and device.
    """
    if not isinstance(depth_m, torch.Tensor) or depth_m.ndim != 2:
        raise InputError(f"depth_m must be an (H, W) tensor, got {_describe(depth_m)}")
    (src_h, src_w), (h, w) = depth_m.shape, size
    rows = _centre_indices(src_h, h, depth_m.device)
    cols = _centre_indices(src_w, w, depth_m.device)
    return depth_m.index_select(0, rows).index_select(1, cols)


def to_embedding_frame(frame: RGBDFrame, embedding: torch.Tensor) -> EmbeddingFrame:
    """Pair a network output with its frame's depth and intrinsics at the output resolution.

    The network resizes its input to a fixed size without keeping the aspect ratio and its
    output covers the whole image, so output pixel (i, j) of an (h, w) output sees the original
    image scaled by (w / W, h / H) along x and y.

    Args:
        frame: the frame the embedding was computed from.
        embedding: (D, h, w) tensor, unit-normalised over D.

    Returns:
        The embedding frame, with depth on the embedding's device.
    """
    if not isinstance(embedding, torch.Tensor) or embedding.ndim != 3:
        raise InputError(f"embedding must be a (D, h, w) tensor, got {_describe(embedding)}")
    (H, W), (h, w) = frame.size, tuple(embedding.shape[1:])
    depth = torch.from_numpy(frame.depth_m).to(embedding.device)
    return EmbeddingFrame(
        embedding=embedding,
        depth_m=sample_depth_at_centres(depth, (h, w)),
        K=scale_intrinsics(frame.K, w / W, h / H),
        stamp_ns=frame.stamp_ns,
        frame_id=frame.frame_id,
        T_world_cam=frame.T_world_cam,
    )


def resample_frame(frame: EmbeddingFrame, embedding: torch.Tensor) -> EmbeddingFrame:
    """Pair another embedding of the same view, e.g. a downsampled one, with depth and K.

    Args:
        frame: the frame the embedding was derived from.
        embedding: (D, h', w') embedding covering the same image as `frame.embedding`.

    Returns:
        The frame with `embedding`, depth sampled at its pixel centres and K scaled to (h', w').
    """
    if not isinstance(embedding, torch.Tensor) or embedding.ndim != 3:
        raise InputError(f"embedding must be a (D, h, w) tensor, got {_describe(embedding)}")
    (h, w), (new_h, new_w) = frame.embedding.shape[1:], embedding.shape[1:]
    return EmbeddingFrame(
        embedding=embedding,
        depth_m=sample_depth_at_centres(frame.depth_m.to(embedding.device), (new_h, new_w)),
        K=scale_intrinsics(frame.K, new_w / w, new_h / h),
        stamp_ns=frame.stamp_ns,
        frame_id=frame.frame_id,
        T_world_cam=frame.T_world_cam,
    )


def _centre_indices(src: int, dst: int, device: torch.device) -> torch.Tensor:
    index = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return torch.from_numpy(np.clip(index, 0, src - 1)).to(device)


def _describe(value: object) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return type(value).__name__
