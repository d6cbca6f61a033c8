"""The perception stage: one RGB-D frame in, unit embeddings at the output resolution out.

`prepare_inputs` → `backend.infer` → L2 normalisation → `to_embedding_frame`. The same object
serves replay and the ROS perception node, so both feed the map identically. Anything with an
`embed(frame) -> EmbeddingFrame` method can stand in for it (`FrameEmbedder`), e.g. the label
oracle of the synthetic recordings.
"""

from __future__ import annotations

from typing import Protocol

import torch

from dve_perception.backends.base import InferenceBackend
from dve_perception.frames import EmbeddingFrame, RGBDFrame, to_embedding_frame
from dve_perception.postprocess import normalize_embedding
from dve_perception.preprocess import PreprocessConfig, prepare_inputs

__all__ = ["FrameEmbedder", "PerceptionPipeline"]


class FrameEmbedder(Protocol):
    """What replay and the map need from the perception stage."""

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        """Return the frame's unit embeddings with depth and K at the output resolution."""
        ...


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

    def embed(self, frame: RGBDFrame) -> EmbeddingFrame:
        """Compute the frame's embeddings.

        Args:
            frame: a registered colour/depth pair with its intrinsics.

        Returns:
            (D, h, w) unit embeddings on the backend's device, with the frame's depth resampled
            and its intrinsics scaled to (h, w).

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
            raw = self.backend.infer(net_in.rgb, net_in.depth)
            embedding = normalize_embedding(raw)[0]
        return to_embedding_frame(frame, embedding)
