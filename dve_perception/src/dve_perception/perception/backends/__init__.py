"""Inference backends and model export.

`onnx_export` turns a DVEFormer into a self-contained ONNX file with the official TensorRT recipe
(`fixed_pooling` for the export size, dynamic batch, opset 20), optionally with outputs fused
into the graph (`fused_outputs`), and stamps it with the `export_metadata` that backends check
their inputs against. The runtime backends share `InferenceBackend` (inputs checked once, in one
place); `make_backend` picks one by name and imports its heavy dependency (onnxruntime,
tensorrt) only then, so importing this package is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dve_perception.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from dve_perception.perception.backends.base import InferenceBackend
    from dve_perception.perception.backends.fused_outputs import FusedOutputs

__all__ = ["BACKEND_NAMES", "make_backend"]

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")


def make_backend(
    name: str,
    *,
    model: torch.nn.Module | None = None,
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    cuda_graphs: bool = False,
    fused: FusedOutputs | None = None,
    prototypes: torch.Tensor | None = None,
) -> InferenceBackend:
    """Create an inference backend.

    Each backend uses only its own model argument and ignores the others, so one call can
    name every file. The options that shape the computation (`precision`, `cuda_graphs`,
    `fused`, `prototypes`) are the torch backend's; the other backends run what their file was
    exported or built with, so asking them for these is an error rather than silently ignored.

    Args:
        name: "torch" (needs `model`), "onnxruntime" (needs `onnx_path`, an exported file) or
            "tensorrt" (needs `engine_path`, a plan from `dve-perception build-engine`).
        model: the DVEFormer for the torch backend.
        onnx_path: the exported file for onnxruntime.
        engine_path: the TensorRT plan.
        device: torch device for torch; "cpu" or "cuda[:N]" (CUDA provider) for onnxruntime;
            a CUDA device for tensorrt.
        precision: "fp32" or "fp16" (torch on CUDA).
        cuda_graphs: capture the torch forward pass as a CUDA graph.
        fused: outputs the torch backend computes after the network (`FusedOutputs`).
        prototypes: (K, D) class vectors for `fused.num_classes` = K > 0.

    Raises:
        ConfigError: an unknown name, the model/file the backend needs is missing, or an
            option the backend does not take.
        BackendUnavailableError: the backend's package (or its CUDA support) is not installed.
        CheckpointError: an unreadable, foreign or stale model file.
    """
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r}; expected one of {list(BACKEND_NAMES)}")
    if name == "torch":
        if model is None:
            raise ConfigError("backend 'torch' needs a model")
        from dve_perception.perception.backends.torch_backend import TorchBackend

        return TorchBackend(
            model,
            device,
            precision=precision,
            cuda_graphs=cuda_graphs,
            fused=fused,
            prototypes=prototypes,
        )
    _reject_torch_options(name, precision, cuda_graphs, fused, prototypes)
    if name == "onnxruntime":
        if onnx_path is None:
            raise ConfigError(
                "backend 'onnxruntime' needs an exported file: pass --onnx FILE (make one with "
                "`dve-perception export-onnx`)"
            )
        from dve_perception.perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, device=device)
    if engine_path is None:
        raise ConfigError(
            "backend 'tensorrt' needs an engine file: pass the plan written by "
            "`dve-perception build-engine --onnx FILE`"
        )
    if not str(device).startswith("cuda"):
        raise ConfigError(
            f"backend 'tensorrt' runs on a CUDA device (cuda or cuda:N), not {device!r}"
        )
    import torch

    from dve_perception.perception.backends.tensorrt_backend import TensorRTBackend

    # Buffers are torch CUDA tensors when torch has CUDA (outputs stay on the GPU for the rest
    # of the pipeline); otherwise pycuda's (e.g. a Jetson image without NVIDIA's torch wheel).
    io = "torch" if torch.cuda.is_available() else "pycuda"
    return TensorRTBackend(engine_path, device=device, io=io)


def _reject_torch_options(
    name: str,
    precision: str,
    cuda_graphs: bool,
    fused: FusedOutputs | None,
    prototypes: torch.Tensor | None,
) -> None:
    fixed_by = "exported (`dve-perception export-onnx`)"
    if name == "tensorrt":
        fixed_by = "built (`dve-perception build-engine`) from its ONNX export"
    if precision != "fp32":
        raise ConfigError(
            f"backend {name!r} runs the precision its file was {fixed_by} with; precision "
            f"{precision!r} applies to the torch backend"
        )
    if cuda_graphs:
        raise ConfigError(f"cuda_graphs applies to the torch backend, not {name!r}")
    if fused is not None or prototypes is not None:
        raise ConfigError(
            f"backend {name!r} computes the outputs its file was {fixed_by} with; fused outputs "
            "and prototypes apply to the torch backend (or to export-onnx)"
        )
