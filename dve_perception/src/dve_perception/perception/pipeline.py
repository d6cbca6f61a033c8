"""The perception stage: one RGB-D frame in, unit embeddings at the output resolution out.

`prepare_inputs` → `backend.infer_outputs` → L2 normalisation (unless the graph did it) →
`to_embedding_frame`, all on the backend's device. The same object serves replay and the ROS
perception node, so both feed the map identically. When the backend's graph has fused outputs
(`backends.fused_outputs`: class scores or labels against a fixed vocabulary, a downsampled
embedding to publish), `run` returns them too, so the node copies only what it publishes.
Anything with an `embed(frame) -> EmbeddingFrame` method can stand in for the pipeline
(`FrameEmbedder`), e.g. the label oracle of the synthetic recordings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from dve_perception.frames import EmbeddingFrame, RGBDFrame, resample_frame, to_embedding_frame
from dve_perception.perception.backends.base import InferenceBackend
from dve_perception.perception.backends.fused_outputs import (
    LABELS_OUTPUT,
    OUTPUT_NAME,
    PUBLISH_OUTPUT,
    SCORES_OUTPUT,
)
from dve_perception.perception.postprocess import normalize_embedding
from dve_perception.perception.preprocess import PreprocessConfig, prepare_inputs

__all__ = ["FrameEmbedder", "PerceptionPipeline", "PipelineOutputs"]


class FrameEmbedder(Protocol):
    """What replay and the map need from the perception stage."""

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        """Return the frame's unit embeddings with depth and K at the output resolution."""
        ...


@dataclass(frozen=True, eq=False)
class PipelineOutputs:
    """One frame's results, on the backend's device.

    Attributes:
        embedding: unit embeddings (D, h, w) with depth and K at (h, w).
        scores: (K, h, w) class scores computed in the graph, or None.
        labels: (h, w) int32 class labels computed in the graph, or None.
        publish: the graph's downsampled unit embeddings (fp16) with depth and K at their
            size, ready for an EmbeddingFrame message, or None.
    """

    embedding: EmbeddingFrame
    scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    publish: EmbeddingFrame | None = None


class PerceptionPipeline:
    """Preprocess, run a backend and normalise, on the backend's device.

    Args:
        backend: the inference backend.
        config: network input size and depth statistics (the official ones by default).
    """

    def __init__(self, backend: InferenceBackend, config: PreprocessConfig | None = None) -> None:
        self.backend = backend
        self.config = config or PreprocessConfig()
        if backend.fixed_size is not None and backend.fixed_size != (
            self.config.height,
            self.config.width,
        ):
            # Follow the backend: a static export only accepts the size it was made for.
            self.config = PreprocessConfig(
                height=backend.fixed_size[0],
                width=backend.fixed_size[1],
                depth_mean_mm=self.config.depth_mean_mm,
                depth_std_mm=self.config.depth_std_mm,
            )

    @property
    def embedding_dim(self) -> int:
        """Channels D of the embeddings (what the map must be configured for)."""
        return self.backend.embedding_dim

    @property
    def class_names(self) -> tuple[str, ...]:
        """The vocabulary of the graph's class scores or labels (empty without them)."""
        record = getattr(self.backend, "record", None)  # a TensorRT plan's sidecar
        metadata = getattr(self.backend, "metadata", None) or getattr(
            record, "export_metadata", None
        )
        return tuple(metadata.class_names) if metadata is not None else ()

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        """Compute the frame's embeddings (see `run`)."""
        return self.run(frame).embedding

    def run(self, frame: RGBDFrame) -> PipelineOutputs:
        """Compute the frame's embeddings and the graph's fused outputs.

        Args:
            frame: a registered colour/depth pair with its intrinsics.

        Returns:
            (D, h, w) unit embeddings on the backend's device, with the frame's depth resampled
            and its intrinsics scaled to (h, w), and whatever fused outputs the graph has.

        Raises:
            InputError: the frame does not fit the backend.
        """
        net_in = prepare_inputs(
            frame.rgb,
            frame.depth_m,
            color_encoding="rgb8",
            depth_encoding="32FC1",
            config=self.config,
            device=self.backend.device,
        )
        with torch.no_grad():
            outputs = self.backend.infer_outputs(net_in.rgb, net_in.depth)
            embedding = _usable(outputs[OUTPUT_NAME][0])
            if not self.backend.fused.normalize:
                embedding = normalize_embedding(embedding.float(), dim=0)
        embedded = to_embedding_frame(frame, embedding)
        publish = outputs.get(PUBLISH_OUTPUT)
        return PipelineOutputs(
            embedding=embedded,
            scores=_first(outputs.get(SCORES_OUTPUT)),
            labels=_first(outputs.get(LABELS_OUTPUT)),
            publish=None if publish is None else resample_frame(embedded, publish[0]),
        )


def _usable(embedding: torch.Tensor) -> torch.Tensor:
    # fp16 stays fp16 on a GPU (half the memory traffic for fusion); CPU kernels for fp16 are
    # slow or missing, so there it becomes fp32.
    if embedding.dtype == torch.float16 and embedding.device.type == "cpu":
        return embedding.float()
    return embedding


def _first(batch: torch.Tensor | None) -> torch.Tensor | None:
    return None if batch is None else batch[0]
