"""Build the perception stage from user choices: weights or an export, backend, class names.

Shared by `dve-perception replay`, `demo` and the ROS perception node, so the same
choice of files gives the same pipeline everywhere, with the same loud fallback when the
published files are not installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dve_perception.errors import ConfigError
from dve_perception.installed.models_folder import resolve_model, resolve_text_encoder
from dve_perception.model.generated_weights import PARITY_SEED
from dve_perception.perception.backends import make_backend
from dve_perception.perception.pipeline import PerceptionPipeline

__all__ = ["NetworkChoice", "build_pipeline", "class_prototypes"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkChoice:
    """Which network to run and how.

    Attributes:
        variant: "reducedres" or "fullres".
        weights: checkpoint; None looks in `models_dir` and falls back to generated weights.
        backend: "torch", "onnxruntime" or "tensorrt".
        onnx_path: the exported file for onnxruntime.
        engine_path: the TensorRT plan for tensorrt (`dve-perception build-engine`).
        device: torch device for torch, "cpu" or "cuda" for onnxruntime, "cuda" for tensorrt.
        precision: "fp32", or "fp16" (torch on CUDA; an engine's precision is fixed at build).
        cuda_graphs: replay the torch network as a CUDA graph (torch on CUDA).
        models_dir: the installed models folder.
        trusted: allow full unpickling of `weights`.
    """

    variant: str = "reducedres"
    weights: Path | None = None
    backend: str = "torch"
    onnx_path: Path | None = None
    engine_path: Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graphs: bool = False
    models_dir: Path = Path("models")
    trusted: bool = False


def build_pipeline(choice: NetworkChoice) -> tuple[PerceptionPipeline, dict]:
    """Create the pipeline and describe where its weights came from.

    Returns:
        The pipeline and provenance entries for summaries: "weights" and "meaningful_weights".

    Raises:
        ConfigError: inconsistent choices (e.g. --weights with the onnxruntime backend, or a
            file of one backend given to another).
        CheckpointError: unreadable or mismatching model files.
    """
    # onnxruntime and TensorRT bring their own CUDA runtimes and check the device themselves.
    if choice.backend == "torch" and choice.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {choice.device!r} requested but torch sees no CUDA device")
    given = {
        "torch": choice.weights,
        "onnxruntime": choice.onnx_path,
        "tensorrt": choice.engine_path,
    }
    options = {"torch": "--weights", "onnxruntime": "--onnx", "tensorrt": "--engine"}
    for backend, path in given.items():
        if path is not None and backend != choice.backend:
            raise ConfigError(
                f"{options[backend]} applies to --backend {backend}, not {choice.backend}: the "
                f"{choice.backend} backend runs the weights inside its own file"
            )
    if choice.backend == "torch":
        model, weights_file = resolve_model(
            choice.variant, choice.weights, choice.models_dir, trusted=choice.trusted
        )
        backend = make_backend(
            "torch",
            model=model,
            device=choice.device,
            precision=choice.precision,
            cuda_graphs=choice.cuda_graphs,
        )
        provenance = {
            "weights": weights_file or f"generated (seed {PARITY_SEED})",
            "variant": choice.variant,
            "meaningful_weights": weights_file is not None,
        }
        return PerceptionPipeline(backend), provenance
    backend = make_backend(
        choice.backend,
        onnx_path=choice.onnx_path,
        engine_path=choice.engine_path,
        device=choice.device,
        precision=choice.precision,
    )
    source = choice.onnx_path if choice.backend == "onnxruntime" else choice.engine_path
    record = getattr(backend, "record", None)  # a TensorRT plan's sidecar
    metadata = getattr(backend, "metadata", None) or getattr(record, "export_metadata", None)
    variant = metadata.variant if metadata is not None else choice.variant
    if variant != choice.variant:
        _LOG.info("%s holds the %s variant; using it", source, variant)
    # An export records its architecture, not its weights' origin: say so rather than guess.
    provenance = {"weights": str(source), "variant": variant, "meaningful_weights": None}
    return PerceptionPipeline(backend), provenance


def class_prototypes(
    names: list[str], text_model: Path | None, models_dir: Path
) -> tuple[torch.Tensor, dict]:
    """Encode class names for segmentation previews.

    Returns:
        (K, D) unit prototypes and provenance entries "text_model" and "meaningful_text".
    """
    encoder, source, is_real = resolve_text_encoder(text_model, models_dir)
    return encoder.encode(names), {"text_model": source, "meaningful_text": is_real}
