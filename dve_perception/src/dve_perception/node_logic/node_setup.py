"""Build what the nodes run from their configs: the network (with a fallback), text, the map.

The nodes call these once at start-up. Everything that can fail on user input (a missing
model file, an unavailable backend, a bad vocabulary) fails here with the library's errors,
which the node reports in one line before exiting, or, with `fallback_backend` set, after
which the node starts on the fallback and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dve_perception.errors import BackendUnavailableError, DvePerceptionError
from dve_perception.installed.models_folder import default_models_dir, resolve_text_encoder
from dve_perception.mapping import EmbeddingMap
from dve_perception.mapping.text_query import TextEncoder
from dve_perception.perception.pipeline import PerceptionPipeline
from dve_perception.perception.pipeline_setup import NetworkChoice, build_pipeline
from dve_perception.settings.node_config import (
    MappingNodeConfig,
    NodeConfigBase,
    PerceptionNodeConfig,
)
from dve_perception.text.vocabulary import read_vocabulary

__all__ = [
    "NodeNetwork",
    "build_map",
    "build_network",
    "build_text_encoder",
    "class_names",
    "models_dir",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class NodeNetwork:
    """The perception pipeline a node runs and where it came from.

    Attributes:
        pipeline: the pipeline.
        backend: the backend that runs ("torch", "onnxruntime").
        provenance: weights file and whether they are the published ones ("weights",
            "variant", "meaningful_weights"), and "fallback_from" with the reason when the
            configured backend could not start.
    """

    pipeline: PerceptionPipeline
    backend: str
    provenance: dict


def models_dir(config: NodeConfigBase) -> Path:
    """The models folder of a node config ("" means the default one)."""
    return Path(config.models_dir).expanduser() if config.models_dir else default_models_dir()


def build_network(config: PerceptionNodeConfig) -> NodeNetwork:
    """Create the configured pipeline, or the fallback backend's when it cannot start.

    Raises:
        DvePerceptionError: the configured backend cannot start and there is no fallback (or
            the fallback cannot start either; the message names both reasons).
    """
    try:
        pipeline, provenance = build_pipeline(_choice(config, config.backend))
        return NodeNetwork(pipeline, config.backend, provenance)
    except DvePerceptionError as err:
        fallback = config.fallback_backend
        if not fallback or fallback == config.backend:
            raise
        _LOG.warning(
            "backend %r cannot start (%s); falling back to %r as configured",
            config.backend,
            err,
            fallback,
        )
        try:
            pipeline, provenance = build_pipeline(_choice(config, fallback))
        except DvePerceptionError as second:
            raise type(second)(
                f"backend {config.backend!r} cannot start ({err}), and neither can the "
                f"fallback {fallback!r} ({second})"
            ) from second
        return NodeNetwork(
            pipeline, fallback, {**provenance, "fallback_from": f"{config.backend}: {err}"}
        )


def build_text_encoder(config: NodeConfigBase) -> tuple[TextEncoder, dict]:
    """Load the CLIP text tower (or the loudly announced random one when none is installed).

    Returns:
        The encoder and provenance entries "text_model" and "meaningful_text".
    """
    text_model = Path(config.text_model_path).expanduser() if config.text_model_path else None
    encoder, source, is_real = resolve_text_encoder(text_model, models_dir(config))
    return encoder, {"text_model": source, "meaningful_text": is_real}


def class_names(config: PerceptionNodeConfig) -> list[str]:
    """The segmentation vocabulary ("" is NYUv2's 40 classes)."""
    return read_vocabulary(config.vocabulary or None)


def build_map(config: MappingNodeConfig, embedding_dim: int | None = None) -> EmbeddingMap:
    """Create the empty map on the configured device, sized to the network's embeddings.

    Args:
        config: the mapping settings.
        embedding_dim: the network's (and text encoder's) dimension when known; it replaces
            `map.embedding_dim`, which only a standalone mapping node has to trust.
    """
    settings = config.map
    if embedding_dim is not None and embedding_dim != settings.embedding_dim:
        settings = replace(settings, embedding_dim=embedding_dim)
    return EmbeddingMap(config=settings, device=config.device)


def _choice(config: PerceptionNodeConfig, backend: str) -> NetworkChoice:
    if backend == "torch" and config.device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device {config.device!r} requested but torch sees no CUDA device; set device "
            "to cpu, or install a CUDA build of torch"
        )
    # Each backend takes only its own file, so a fallback is not refused for the other's.
    files = {
        "torch": config.weights_path,
        "onnxruntime": config.onnx_path,
        "tensorrt": config.engine_path,
    }
    path = files[backend]
    device = config.device
    if backend == "tensorrt" and not device.startswith("cuda"):
        device = "cuda"  # TensorRT runs on the GPU whatever the torch device of the rest
    return NetworkChoice(
        variant=config.variant,
        weights=Path(path).expanduser() if backend == "torch" and path else None,
        backend=backend,
        onnx_path=Path(path).expanduser() if backend == "onnxruntime" and path else None,
        engine_path=Path(path).expanduser() if backend == "tensorrt" and path else None,
        device=device,
        precision=config.precision if backend == "torch" else "fp32",
        cuda_graphs=config.cuda_graphs if backend == "torch" else False,
        models_dir=models_dir(config),
        trusted=config.trust_checkpoint,
    )
