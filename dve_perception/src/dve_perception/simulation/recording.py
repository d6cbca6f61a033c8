"""Synthetic recordings: rendered RGB-D frames whose colours encode labels, and label oracles.

`render_frames` turns a camera trajectory through a `SyntheticScene` into `RGBDFrame`s whose
colour image paints every surface with its label's palette colour. `LabelColorEmbedder` reads
those colours back and emits the scene's label prototypes at a reduced output resolution, as the
reduced-res network does, so replay, the map and queries can be checked end to end against exact
ground truth without the network. `LabelTextEncoder` answers text queries for label names with
the same prototypes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from dve_perception.errors import InputError
from dve_perception.frames import EmbeddingFrame, RGBDFrame, to_embedding_frame
from dve_perception.perception.visualization import label_colors, label_palette
from dve_perception.simulation.synthetic_scene import SyntheticScene, render

__all__ = ["LabelColorEmbedder", "LabelTextEncoder", "render_frames"]

#: Share of the mean prototype direction in the vector of a phrase that names no label.
_GENERIC_WEIGHT = 0.5


def render_frames(
    scene: SyntheticScene,
    K: np.ndarray,
    poses: Sequence[np.ndarray],
    height: int,
    width: int,
    *,
    start_stamp_ns: int = 1_000_000_000,
    period_ns: int = 100_000_000,
    frame_id: str = "camera_color_optical_frame",
) -> list[RGBDFrame]:
    """Render one posed frame per pose; colour = label palette colour, black where nothing is hit.

    Args:
        scene: the scene.
        K: (3, 3) intrinsics at (height, width).
        poses: T_world_cam per frame.
        height: image height.
        width: image width.
        start_stamp_ns: stamp of the first frame.
        period_ns: time between frames.
        frame_id: the optical frame name written into each frame.
    """
    frames = []
    for i, T_world_cam in enumerate(poses):
        view = render(scene, K, T_world_cam, height, width)
        frames.append(
            RGBDFrame(
                rgb=label_colors(view.labels, len(scene.label_names)),
                depth_m=view.depth_m,
                K=view.K,
                stamp_ns=start_stamp_ns + i * period_ns,
                frame_id=frame_id,
                T_world_cam=view.T_world_cam,
            )
        )
    return frames


class LabelColorEmbedder:
    """Turn label-coloured frames into prototype embeddings at 1/`output_stride` resolution.

    Output pixel (i, j) takes the label under its centre, like `frames.sample_depth_at_centres`,
    and gets that label's unit prototype; unknown colours (black background) give zero vectors,
    which the map ignores.

    Args:
        scene: the scene whose palette and prototypes to use.
        output_stride: input pixels per output pixel (4 mimics the reduced-res network).
    """

    def __init__(self, scene: SyntheticScene, output_stride: int = 4) -> None:
        if not isinstance(output_stride, int) or output_stride < 1:
            raise InputError(f"output_stride must be a positive integer, got {output_stride!r}")
        self.scene = scene
        self.output_stride = output_stride
        palette = label_palette(len(scene.label_names)).astype(np.int64)
        self._codes = palette[:, 0] << 16 | palette[:, 1] << 8 | palette[:, 2]
        self._prototypes = torch.from_numpy(np.array(scene.prototypes))

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """Return the (H, W) int64 label image of a label-coloured frame; -1 for other colours."""
        rgb = rgb.astype(np.int64)
        codes = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
        order = np.argsort(self._codes)
        pos = np.clip(np.searchsorted(self._codes, codes, sorter=order), 0, len(order) - 1)
        found = self._codes[order[pos]] == codes
        return np.where(found, order[pos], -1)

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        """Return the frame's prototype embedding, depth and intrinsics at the output size."""
        H, W = frame.size
        h, w = max(1, H // self.output_stride), max(1, W // self.output_stride)
        rows = np.clip(((np.arange(h) + 0.5) * H / h).astype(np.int64), 0, H - 1)
        cols = np.clip(((np.arange(w) + 0.5) * W / w).astype(np.int64), 0, W - 1)
        labels = torch.from_numpy(self.labels(frame.rgb)[np.ix_(rows, cols)])
        embedding = self._prototypes[labels.clamp(min=0)]  # (h, w, D)
        embedding[labels < 0] = 0.0
        return to_embedding_frame(frame, embedding.permute(2, 0, 1))


class LabelTextEncoder:
    """A text encoder for synthetic scenes: label names map to their prototypes.

    Any other phrase (e.g. the canonical negatives "object", "things") gets a deterministic
    pseudo-random unit vector seeded by the phrase, mixed with the mean prototype direction so
    that it is mildly similar to every label (cosine ~0.2 with 8 labels). That is how CLIP treats
    generic words, and what LERF's relevancy relies on: a purely random negative would be
    orthogonal to everything and would let half of the unrelated voxels pass the 0.5 threshold.
    """

    def __init__(self, scene: SyntheticScene) -> None:
        self.scene = scene
        self._mean_direction = _unit(np.asarray(scene.prototypes, dtype=np.float64).sum(axis=0))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Return (len(texts), D) float32 unit rows."""
        dim = self.scene.embedding_dim
        rows = []
        for text in texts:
            if text in self.scene.label_names:
                rows.append(np.array(self.scene.prototypes[self.scene.label_id(text)]))
                continue
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(dim)
            v = _GENERIC_WEIGHT * self._mean_direction + (1.0 - _GENERIC_WEIGHT) * _unit(v)
            rows.append(_unit(v).astype(np.float32))
        return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, dim)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)
