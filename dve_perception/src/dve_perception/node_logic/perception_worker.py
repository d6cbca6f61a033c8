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
import torch.nn.functional as F

from dve_perception.errors import InputError
from dve_perception.frames import EmbeddingFrame, RGBDFrame
from dve_perception.messages.conversions import (
    camera_info_size,
    camera_info_to_K,
    decode_color,
    decode_depth,
    stamp_to_ns,
)
from dve_perception.node_logic.stats import StampRateLimiter
from dve_perception.perception.pipeline import FrameEmbedder, PipelineOutputs
from dve_perception.perception.postprocess import class_scores, segment
from dve_perception.perception.visualization import PcaBasis, fit_pca, label_colors, pca_colors
from dve_perception.settings.node_config import PerceptionNodeConfig

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
        publish: the graph's downsampled embedding frame to publish as it is, or None (then
            the publisher downsamples `embedding`).
    """

    embedding: EmbeddingFrame
    labels: np.ndarray | None
    labels_color: np.ndarray | None
    pca: np.ndarray | None
    publish_embedding: bool
    publish: EmbeddingFrame | None = None


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
        prototypes: (K, D) unit class prototypes for the segmentation, or None for none. Not
            needed when the pipeline's graph computes class scores or labels itself.
        class_names: the K class names; a graph with fused class outputs brings its own
            (`PerceptionPipeline.class_names`), which then take precedence.
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
        fused_names = tuple(getattr(pipeline, "class_names", ()))
        if fused_names:
            prototypes, class_names = None, list(fused_names)
        if prototypes is not None and (
            prototypes.ndim != 2 or prototypes.shape[0] != len(class_names)
        ):
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
            InputError: the frame does not fit the network (see `PerceptionPipeline.embed`),
                or the graph's class outputs do not match the class names.
        """
        run = getattr(self.pipeline, "run", None)
        out = run(frame) if run is not None else PipelineOutputs(self.pipeline.embed(frame))
        labels = colors = pca = None
        with torch.no_grad():
            if self.config.publish_segmentation:
                labels = self._labels(out, frame.size)
                if labels is not None:
                    colors = label_colors(labels, len(self.class_names))
            if self.config.publish_previews:
                pca = self._pca(out.embedding.embedding)
        due = self.config.publish_embedding and self._embedding_rate.allow(frame.stamp_ns)
        return PerceptionOutputs(out.embedding, labels, colors, pca, due, out.publish)

    def _labels(self, out: PipelineOutputs, size: tuple[int, int]) -> np.ndarray | None:
        """Class ids at the input size: from the graph's scores or labels, else prototypes."""
        if out.scores is not None:
            self._check_classes(out.scores.shape[0])
            labels = segment(out.scores[None].float(), size).labels[0]
        elif out.labels is not None:
            # Labels only (no scores): nearest upsampling, the best a label image allows.
            upsampled = F.interpolate(out.labels[None, None].float(), size=size, mode="nearest")
            labels = upsampled[0, 0].round()
            self._check_classes(int(labels.max()) + 1 if labels.numel() else 0, at_most=True)
        elif self.prototypes is not None:
            embedding = out.embedding.embedding
            prototypes = self.prototypes.to(device=embedding.device, dtype=embedding.dtype)
            scores = class_scores(embedding[None], prototypes)
            labels = segment(scores.float(), size).labels[0]
        else:
            return None
        return labels.to(torch.int32).cpu().numpy().astype(np.uint16)

    def _check_classes(self, count: int, *, at_most: bool = False) -> None:
        expected = len(self.class_names)
        if count > expected if at_most else count != expected:
            raise InputError(
                f"the network's graph scores {count} classes but {expected} class names are "
                "known; export with --vocabulary so the names travel in the file's metadata"
            )

    def _pca(self, embedding: torch.Tensor) -> np.ndarray:
        if self._basis is None:
            self._basis = fit_pca(embedding)
        return pca_colors(embedding, self._basis)
