"""What the perception node does with one synced colour/depth/camera_info triple, without ROS.

`frame_from_messages` turns the three messages into a checked `RGBDFrame` (every bad input is
an `InputError` naming the problem); `PerceptionWorker.process` runs the pipeline and makes
the published images: class ids at the input size, their colours, and a PCA preview whose
basis is fitted once so colours stay stable from frame to frame. Whether this frame's
embeddings go out on the embedding topic is decided by message stamps, so a bag replayed at
any speed publishes the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dve_perception.errors import InputError
from dve_perception.frames import EmbeddingFrame, RGBDFrame
from dve_perception.msg_conversions import (
    camera_info_size,
    camera_info_to_K,
    decode_color,
    decode_depth,
    stamp_to_ns,
)
from dve_perception.node_config import PerceptionNodeConfig
from dve_perception.node_logic.stats import StampRateLimiter
from dve_perception.pipeline import FrameEmbedder
from dve_perception.postprocess import class_scores, segment
from dve_perception.visualization import PcaBasis, fit_pca, label_colors, pca_colors

__all__ = ["PerceptionOutputs", "PerceptionWorker", "frame_from_messages"]

#: mono16 holds class ids up to 65535.
_MAX_CLASSES = 2**16 - 1


@dataclass(frozen=True, eq=False)
class PerceptionOutputs:
    """The results of one frame, ready to convert into messages.

    Attributes:
        embedding: the frame's unit embeddings with depth and K at the output resolution.
        labels: (H, W) uint16 class ids at the input size, or None when not published.
        labels_color: (H, W, 3) uint8 colours of `labels`, or None.
        pca: (h, w, 3) uint8 PCA preview at the output resolution, or None.
        publish_embedding: whether this frame is due on the embedding topic.
    """

    embedding: EmbeddingFrame
    labels: np.ndarray | None
    labels_color: np.ndarray | None
    pca: np.ndarray | None
    publish_embedding: bool


def frame_from_messages(color: Any, depth: Any, info: Any) -> RGBDFrame:
    """Build a frame from a sensor_msgs Image (or CompressedImage) pair and a CameraInfo.

    Args:
        color: colour image (rgb8, bgr8, rgba8, bgra8, mono8; or jpeg/png compressed).
        depth: depth registered to colour (16UC1/mono16 mm, 32FC1 m; or compressedDepth).
        info: the colour camera's CameraInfo at the colour image's size.

    Returns:
        The frame, stamped and framed like the colour image; NaN, inf and negative depth
        become 0 (invalid).

    Raises:
        InputError: an unsupported encoding, malformed data, an uncalibrated camera_info, or
            sizes that differ between the three messages.
    """
    rgb = decode_color(color)
    depth_m = decode_depth(depth)
    info_size = camera_info_size(info)
    if info_size != rgb.shape[:2]:
        raise InputError(
            f"camera_info is for {info_size[0]}x{info_size[1]} images but the colour image is "
            f"{rgb.shape[0]}x{rgb.shape[1]}; subscribe to the colour camera's own camera_info"
        )
    frame_id = str(color.header.frame_id).lstrip("/")
    if not frame_id:
        raise InputError("the colour image has an empty header.frame_id; TF cannot place it")
    return RGBDFrame(
        rgb, depth_m, camera_info_to_K(info), stamp_to_ns(color.header.stamp), frame_id
    )


class PerceptionWorker:
    """Run the network on frames and make the images the perception node publishes.

    Args:
        pipeline: the perception stage (`PerceptionPipeline`, or any `FrameEmbedder`).
        prototypes: (K, D) unit class prototypes for the segmentation, or None for none.
        class_names: the K class names (for logs and diagnostics).
        config: the node's settings (what to publish, the embedding rate).
    """

    frame_from_messages = staticmethod(frame_from_messages)

    def __init__(
        self,
        pipeline: FrameEmbedder,
        prototypes: torch.Tensor | None,
        class_names: list[str],
        config: PerceptionNodeConfig,
    ) -> None:
        if prototypes is not None:
            if prototypes.ndim != 2 or prototypes.shape[0] != len(class_names):
                raise InputError(
                    f"prototypes must be ({len(class_names)}, D) for {len(class_names)} class "
                    f"names, got {tuple(prototypes.shape)}"
                )
            if len(class_names) > _MAX_CLASSES:
                raise InputError(f"{len(class_names)} classes do not fit a mono16 label image")
        self.pipeline = pipeline
        self.prototypes = prototypes
        self.class_names = list(class_names)
        self.config = config
        self._basis: PcaBasis | None = None
        self._embedding_rate = StampRateLimiter(config.embedding_rate_hz)

    def process(self, frame: RGBDFrame) -> PerceptionOutputs:
        """Embed one frame and make its segmentation and preview images.

        Raises:
            InputError: the frame does not fit the network (see `PerceptionPipeline.embed`).
        """
        embedded = self.pipeline.embed(frame)
        labels = colors = pca = None
        with torch.no_grad():
            if self.config.publish_segmentation and self.prototypes is not None:
                labels, colors = self._segment(embedded.embedding, frame.size)
            if self.config.publish_previews:
                pca = self._pca(embedded.embedding)
        due = self.config.publish_embedding and self._embedding_rate.allow(frame.stamp_ns)
        return PerceptionOutputs(embedded, labels, colors, pca, due)

    def _segment(
        self, embedding: torch.Tensor, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        prototypes = self.prototypes.to(device=embedding.device, dtype=embedding.dtype)
        scores = class_scores(embedding[None], prototypes)
        labels = segment(scores, size).labels[0].to(torch.int32).cpu().numpy()
        return labels.astype(np.uint16), label_colors(labels, len(self.class_names))

    def _pca(self, embedding: torch.Tensor) -> np.ndarray:
        if self._basis is None:
            self._basis = fit_pca(embedding)
        return pca_colors(embedding, self._basis)
