"""Inference backends and model export.

`onnx_export` turns a DVEFormer into a self-contained ONNX file with the official TensorRT recipe
(`fixed_pooling` for the export size, dynamic batch, opset 20) and stamps it with the
`export_metadata` that backends check their inputs against. The runtime backends share
`InferenceBackend` (inputs checked once, in one place); `make_backend` picks one by name and
imports its heavy dependency (onnxruntime, later tensorrt) only then, so importing this package
is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dve_perception.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from dve_perception.backends.base import InferenceBackend

__all__ = ["BACKEND_NAMES", "make_backend"]

BACKEND_NAMES = ("torch", "onnxruntime")


def make_backend(
    name: str,
    *,
    model: torch.nn.Module | None = None,
    onnx_path: str | Path | None = None,
    device: str = "cpu",
) -> InferenceBackend:
    """Create an inference backend.

    Args:
        name: "torch" (needs `model`) or "onnxruntime" (needs `onnx_path`, an exported file).
        model: the DVEFormer for the torch backend.
        onnx_path: the exported file for onnxruntime.
        device: torch device for the torch backend; onnxruntime runs on the CPU here.

    Raises:
        ConfigError: an unknown name, or the model/file the backend needs is missing.
    """
    if name == "torch":
        if model is None:
            raise ConfigError("backend 'torch' needs a model")
        from dve_perception.backends.torch_backend import TorchBackend

        return TorchBackend(model, device)
    if name == "onnxruntime":
        if onnx_path is None:
            raise ConfigError(
                "backend 'onnxruntime' needs an exported file: pass --onnx FILE (make one with "
                "`dve-perception export-onnx`)"
            )
        if device != "cpu":
            raise ConfigError(f"backend 'onnxruntime' runs on cpu here, not {device!r}")
        from dve_perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path)
    raise ConfigError(f"unknown backend {name!r}; expected one of {list(BACKEND_NAMES)}")
