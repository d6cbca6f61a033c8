"""Run DVEFormer with PyTorch eager on CPU or CUDA."""

from __future__ import annotations

import torch

from dve_perception.backends.base import InferenceBackend
from dve_perception.errors import ConfigError

__all__ = ["TorchBackend"]


class TorchBackend(InferenceBackend):
    """PyTorch inference; accepts any input size that is a multiple of 32.

    Args:
        model: a DVEFormer (moved to `device` and put in eval mode); its `config` gives the
            embedding dimension.
        device: torch device, e.g. "cpu" or "cuda".
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device} requested but torch sees no CUDA device; use cpu")
        super().__init__(
            fixed_size=None, device=device, embedding_dim=int(model.config.embedding_dim)
        )
        self._model = model.to(device).eval()

    def _infer_impl(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._model(rgb.to(self.device), depth.to(self.device)).float()

    def close(self) -> None:
        """Drop the model reference so its memory can be freed."""
        super().close()
        self._model = None
