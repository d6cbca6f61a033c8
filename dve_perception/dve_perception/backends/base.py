"""The interface every inference backend implements: check the inputs once, then run.

Polygraphy's runner pattern: the public `infer` validates shapes, dtypes and sizes with the same
words for every backend and then calls `_infer_impl`, which subclasses write. Backends are
context managers; `close` releases sessions, engines and device memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

import torch

from dve_perception.errors import InputError
from dve_perception.model.dveformer import check_input_pair

__all__ = ["InferenceBackend"]


class InferenceBackend(ABC):
    """Runs DVEFormer on preprocessed tensors.

    Attributes:
        name: the backend's name as `make_backend` knows it.
        fixed_size: the (H, W) the backend accepts, or None for any multiple of 32.
        device: where `infer` returns its output.
        embedding_dim: channels D of the output (768 for the published models).
    """

    name: str = "abstract"

    def __init__(
        self, *, fixed_size: tuple[int, int] | None, device: torch.device, embedding_dim: int
    ) -> None:
        self.fixed_size = fixed_size
        self.device = device
        self.embedding_dim = embedding_dim
        self._closed = False

    def infer(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Compute the raw embedding of a preprocessed batch.

        Args:
            rgb: (B, 3, H, W) float32, ImageNet-normalised on the 0-255 scale, RGB order.
            depth: (B, 1, H, W) float32, NYUv2-normalised millimetres, invalid pixels 0.

        Returns:
            (B, D, H / s, W / s) float32 on `device`, not L2-normalised (s: output stride).

        Raises:
            InputError: malformed inputs, a size the backend was not built for, or a closed
                backend.
        """
        if self._closed:
            raise InputError(f"the {self.name} backend was closed; create a new one")
        check_input_pair(rgb, depth)
        if self.fixed_size is not None and tuple(rgb.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise InputError(
                f"the {self.name} backend was built for {h}x{w} inputs, got "
                f"{rgb.shape[-2]}x{rgb.shape[-1]}; preprocess to {h}x{w} or re-export"
            )
        return self._infer_impl(rgb.float(), depth.float())

    @abstractmethod
    def _infer_impl(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Run the model on validated inputs (see `infer`)."""

    def close(self) -> None:
        """Release what the backend holds; `infer` fails afterwards."""
        self._closed = True

    def __enter__(self) -> InferenceBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
