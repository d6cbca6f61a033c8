"""Build the perception stage from user choices: weights or an export, backend, class names.

Shared by `dve-perception replay` and `demo` (and later the ROS perception node), so the same
choice of files gives the same pipeline everywhere, with the same loud fallback when the
published files are not installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dve_perception.backends import make_backend
from dve_perception.errors import ConfigError
from dve_perception.installed_models import resolve_model, resolve_text_encoder
from dve_perception.model.generated_weights import PARITY_SEED
from dve_perception.pipeline import PerceptionPipeline

__all__ = ["NetworkChoice", "build_pipeline", "class_prototypes"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkChoice:
    """Which network to run and how.

    Attributes:
        variant: "reducedres" or "fullres".
        weights: checkpoint; None looks in `models_dir` and falls back to generated weights.
        backend: "torch" or "onnxruntime".
        onnx_path: the exported file for onnxruntime.
        device: torch device for the torch backend.
        models_dir: the installed models folder.
        trusted: allow full unpickling of `weights`.
    """

    variant: str = "reducedres"
    weights: Path | None = None
    backend: str = "torch"
    onnx_path: Path | None = None
    device: str = "cpu"
    models_dir: Path = Path("models")
    trusted: bool = False


def build_pipeline(choice: NetworkChoice) -> tuple[PerceptionPipeline, dict]:
    """Create the pipeline and describe where its weights came from.

    Returns:
        The pipeline and provenance entries for summaries: "weights" and "meaningful_weights".

    Raises:
        ConfigError: inconsistent choices (e.g. --weights with the onnxruntime backend).
        CheckpointError: unreadable or mismatching model files.
    """
    if choice.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {choice.device!r} requested but torch sees no CUDA device")
    if choice.backend == "onnxruntime":
        if choice.weights is not None:
            raise ConfigError(
                "--weights applies to the torch backend; the onnxruntime backend runs the "
                "weights inside --onnx FILE"
            )
        backend = make_backend("onnxruntime", onnx_path=choice.onnx_path, device=choice.device)
        variant = backend.metadata.variant
        if variant != choice.variant:
            _LOG.info("%s holds the %s variant; using it", choice.onnx_path, variant)
        provenance = {"weights": str(choice.onnx_path), "variant": variant}
        # An export records its architecture, not its weights' origin: say so rather than guess.
        provenance["meaningful_weights"] = None
        return PerceptionPipeline(backend), provenance
    if choice.onnx_path is not None:
        raise ConfigError("--onnx applies to --backend onnxruntime")
    model, weights_file = resolve_model(
        choice.variant, choice.weights, choice.models_dir, trusted=choice.trusted
    )
    backend = make_backend(choice.backend, model=model, device=choice.device)
    provenance = {
        "weights": weights_file or f"generated (seed {PARITY_SEED})",
        "variant": choice.variant,
        "meaningful_weights": weights_file is not None,
    }
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
