"""Export DVEFormer to ONNX with the official TensorRT recipe (dveformer-spec.md §9).

The recipe: eval mode; every `nn.AdaptiveAvgPool2d` replaced by a fixed pooling for the export
size (the only graph surgery, see `fixed_pooling`); inputs `rgb` (B,3,H,W) and `depth` (B,1,H,W);
output `dense_visual_embedding_decoder_0`; a dynamic batch axis; constant folding; opset 20; the
TorchScript exporter, which writes one self-contained file and is what TensorRT 10.3 was
validated with. Optional outputs computed inside the graph (unit fp16 embeddings, class scores
and labels, a downsampled embedding to publish) are chosen with `FusedOutputs`. Each file carries
`ExportMetadata` so that backends can check their inputs against the size the pooling was fixed
to and know its outputs. onnx and onnxruntime are imported only when used.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import numbers
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from dve_perception.model.dveformer import INPUT_MULTIPLE, VARIANTS, DVEFormer
from dve_perception.perception.backends.export_metadata import (
    INPUT_NAMES,
    OUTPUT_NAME,
    ExportMetadata,
)
from dve_perception.perception.backends.fixed_pooling import fixed_pooling
from dve_perception.perception.backends.fused_outputs import (
    LABELS_OUTPUT,
    SCORES_OUTPUT,
    FusedGraph,
    FusedOutputs,
    check_publish_size,
)

__all__ = [
    "DEFAULT_OPSET",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "INPUT_NAMES",
    "LABEL_MARGIN",
    "OUTPUT_NAME",
    "ExportMetadata",
    "FusedOutputs",
    "check_export_size",
    "compare_with_onnxruntime",
    "comparison_tolerance",
    "export_onnx",
    "read_export_metadata",
]

_LOG = logging.getLogger(__name__)

#: The official export's opset, also the newest the TorchScript exporter supports.
DEFAULT_OPSET = 20
# Older opsets are untested here; TensorRT was validated with 20 (dveformer-spec.md §9).
_MIN_OPSET = 18
_TORCHSCRIPT_MAX_OPSET = 20
#: Pixels whose two best class scores are closer than this may flip labels between runtimes.
LABEL_MARGIN = 1e-4
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-3
_EXPORT_HINT = 'install it with: pip install "dve_perception[export]"'
_RUNTIME_HINT = 'install it with: pip install "dve_perception[core]"'


def _require(module: str, purpose: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailableError(
            f"{purpose} needs the {module!r} package, which is not installed; {hint}"
        ) from err


def check_export_size(height: int, width: int) -> None:
    """Raise `ConfigError` unless height and width are positive multiples of 32."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
            if value % INPUT_MULTIPLE == 0:
                continue
            below = int(value) // INPUT_MULTIPLE * INPUT_MULTIPLE
            options = " or ".join(str(v) for v in (below, below + INPUT_MULTIPLE) if v > 0)
        else:
            options = "480x640, the training size"
        raise ConfigError(
            f"export {name} must be a positive multiple of {INPUT_MULTIPLE}, got {value!r}; "
            f"use e.g. {options}"
        )


def read_export_metadata(path: str | Path) -> ExportMetadata:
    """Read the `ExportMetadata` of an exported ONNX file (raises `CheckpointError`)."""
    onnx = _require("onnx", "reading ONNX metadata", _EXPORT_HINT)
    from google.protobuf.message import DecodeError  # protobuf is a dependency of onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as err:
        raise CheckpointError(f"{path} is not an ONNX model: {err}") from err
    return ExportMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def export_onnx(
    model: DVEFormer,
    path: str | Path,
    *,
    height: int = 480,
    width: int = 640,
    normalize: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    fused: FusedOutputs | None = None,
    prototypes: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> ExportMetadata:
    """Export `model` to one self-contained ONNX file with the official recipe.

    The model is left as it was: pooling replacements are undone, the training flag restored.
    Every output has a dynamic batch axis. Without `fused` (or with only `normalize`) the file is
    the official single-output export.

    Args:
        model: the DVEFormer to export, weights loaded.
        path: the `.onnx` file to write (replaced atomically); its directory must exist.
        height: input height, a positive multiple of 32. Pooling is fixed to this size, so the
            file accepts only height x width; the batch axis stays dynamic.
        width: input width, a positive multiple of 32.
        normalize: end the graph with L2 normalisation over channels (unit-norm embeddings);
            the same as `fused=FusedOutputs(normalize=True)`.
        opset: ONNX opset; 18 to 20 for the TorchScript exporter.
        dynamo: use the torch.export-based exporter instead of the official TorchScript one.
        fused: the outputs computed inside the graph (see `fused_outputs`).
        prototypes: (K, D) class vectors for `fused.num_classes` = K > 0, folded into the graph.
        class_names: the K names the prototypes encode, stored in the metadata.

    Returns:
        The metadata written into the file.

    Raises:
        ConfigError: invalid size, opset, output directory, fused outputs, prototypes or class
            names (e.g. a publish size that does not divide the embedding).
        BackendUnavailableError: onnx (or, for `dynamo`, onnxscript) is not installed.
    """
    check_export_size(height, width)
    _check_opset(opset, dynamo)
    fused = _resolve_fused(fused, normalize)
    if fused.publish_size is not None:
        stride = model.config.output_stride
        check_publish_size(fused.publish_size, (height // stride, width // stride))
    graph = FusedGraph(model, fused, prototypes)  # checks the prototypes against `fused`
    variant = next((name for name, cfg in VARIANTS.items() if cfg == model.config), "custom")
    metadata = ExportMetadata.create(
        variant, model.config, int(height), int(width), fused, class_names or ()
    )
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"output directory {path.parent} does not exist; create it first")
    onnx = _require("onnx", "ONNX export", _EXPORT_HINT)
    if dynamo:
        _require("onnxscript", "ONNX export with dynamo=True", _EXPORT_HINT)

    exporter = "dynamo" if dynamo else "TorchScript"
    message = "exporting %s DVEFormer at %dx%d with the %s exporter, opset %d, outputs %s"
    _LOG.info(message, variant, height, width, exporter, opset, list(fused.output_names))
    start = time.perf_counter()
    names = fused.output_names
    with _eval_mode(model), fixed_pooling(model, height, width):
        graph.eval()
        if dynamo:
            proto = _trace_dynamo(graph, height, width, opset, names)
        else:
            proto = onnx.load_from_string(_trace_torchscript(graph, height, width, opset, names))
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    _write_atomically(data, path)
    seconds = time.perf_counter() - start
    _LOG.info("wrote %s (%.0f MB) in %.1f s", path, len(data) / 1e6, seconds)
    return metadata


def _check_opset(opset: int, dynamo: bool) -> None:
    if opset < _MIN_OPSET or (not dynamo and opset > _TORCHSCRIPT_MAX_OPSET):
        exporter = "dynamo" if dynamo else "TorchScript"
        supported = (
            f"{_MIN_OPSET} or newer" if dynamo else f"{_MIN_OPSET} to {_TORCHSCRIPT_MAX_OPSET}"
        )
        raise ConfigError(
            f"opset {opset} is not supported by the {exporter} exporter; use {supported} "
            f"(the official export used {DEFAULT_OPSET})"
        )


def _resolve_fused(fused: FusedOutputs | None, normalize: bool) -> FusedOutputs:
    if fused is None:
        return FusedOutputs(normalize=bool(normalize))
    if normalize and not fused.normalize:
        raise ConfigError(
            "normalize=True contradicts fused.normalize=False; set normalize in FusedOutputs only"
        )
    return fused


def _trace_torchscript(
    graph: nn.Module, height: int, width: int, opset: int, output_names: tuple[str, ...]
) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated since torch 2.9, but it is what the official
        # TensorRT deployment was validated with, and its notices say nothing about this model.
        # Tracer warnings flag Python values taken from shapes: all are fixed by the export size
        # except the batch, which the tests run at batch 2.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            _example_inputs(1, height, width, seed=0, device=_device_of(graph)),
            buffer,
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch_size"} for name in (*INPUT_NAMES, *output_names)},
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _trace_dynamo(
    graph: nn.Module, height: int, width: int, opset: int, output_names: tuple[str, ...]
) -> Any:
    batch = torch.export.Dim("batch_size")
    with warnings.catch_warnings():
        # torch 2.13's exporter warns about its own internals (a pytree deprecation) and about
        # the one batch dimension shared by both inputs; neither is actionable here.
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
        warnings.filterwarnings(
            "ignore", "# The axis name: batch_size will not be used", UserWarning
        )
        program = torch.onnx.export(
            graph,
            # Batch 2: torch.export specialises dimensions whose example size is 1.
            _example_inputs(2, height, width, seed=0, device=_device_of(graph)),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(output_names),
            dynamic_shapes={name: {0: batch} for name in INPUT_NAMES},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return program.model_proto


def _write_atomically(data: bytes, path: Path) -> None:
    try:
        with atomic_write(path) as file:
            file.write(data)
    except OSError as err:
        raise ConfigError(f"cannot write the ONNX file {path}: {err}") from err


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _example_inputs(
    batch: int, height: int, width: int, seed: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    # Standard normal matches the scale of preprocessed (normalised) rgb and depth.
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, height, width, generator=gen)
    depth = torch.randn(batch, 1, height, width, generator=gen)
    return rgb.to(device), depth.to(device)


def comparison_tolerance(name: str, fused: FusedOutputs) -> float:
    """The largest acceptable `compare_with_onnxruntime` value for one output.

    fp32 outputs: 1e-4 relative L2 (measured ~1e-6 on CPU; room for other kernels). fp16
    outputs: 2e-3 (fp16 rounds unit-vector components to ~2.4e-4 relative, ~1e-4 in L2).
    Labels: 0, every confidently labelled pixel must agree.
    """
    if name == LABELS_OUTPUT:
        return 0.0
    return FP16_TOLERANCE if fused.output_dtypes[name] == torch.float16 else FP32_TOLERANCE


def compare_with_onnxruntime(
    model: DVEFormer,
    path: str | Path,
    *,
    rgb: torch.Tensor | None = None,
    depth: torch.Tensor | None = None,
    batch_size: int = 1,
    seed: int = 0,
    prototypes: torch.Tensor | None = None,
) -> dict[str, float]:
    """Run an exported file with ONNX Runtime (CPU) and `model` with PyTorch on the same inputs.

    PyTorch computes the file's fused outputs with the same `FusedGraph` (in fp32, casting to
    fp16 where the file does), so every output is compared.

    Args:
        model: the model the file was exported from.
        path: the exported `.onnx` file.
        rgb: (B, 3, H, W) input; seeded random inputs are used when rgb or depth is None.
        depth: (B, 1, H, W) input.
        batch_size: batch of the random inputs.
        seed: seed of the random inputs.
        prototypes: the (K, D) class vectors the file was exported with, when it has class
            outputs (they are folded into the file and cannot be read back reliably).

    Returns:
        Per output name: the relative L2 error ||onnxruntime - torch|| / ||torch||; for
        `class_labels` the fraction of pixels whose labels differ among those where PyTorch's
        best score beats the second by more than `LABEL_MARGIN` (closer calls may flip with
        rounding, and both answers are right). See `comparison_tolerance`.

    Raises:
        BackendUnavailableError: onnxruntime is not installed.
        CheckpointError: the file is missing, not ONNX, or has no export metadata.
        ConfigError: prototypes missing for a file with class outputs, or of the wrong shape.
        InputError: inputs or outputs that do not fit the file.
    """
    ort = _require("onnxruntime", "checking an ONNX export", _RUNTIME_HINT)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {path} does not exist")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors share no base class below Exception
        raise CheckpointError(f"onnxruntime cannot load {path}: {err}") from err
    meta = ExportMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    if rgb is None or depth is None:
        rgb, depth = _example_inputs(batch_size, meta.height, meta.width, seed)
    if tuple(rgb.shape[-2:]) != (meta.height, meta.width) or depth.shape[-2:] != rgb.shape[-2:]:
        raise InputError(
            f"inputs rgb {tuple(rgb.shape)} and depth {tuple(depth.shape)} do not fit {path}, "
            f"which was exported for {meta.height}x{meta.width}"
        )
    graph = FusedGraph(model, meta.fused, prototypes)
    device = _device_of(model)
    with _eval_mode(model), torch.no_grad():
        expected = [t.cpu() for t in graph(rgb.to(device).float(), depth.to(device).float())]
    feeds = {"rgb": rgb.float().cpu().numpy(), "depth": depth.float().cpu().numpy()}
    actual = session.run(list(meta.output_names), feeds)
    errors = {}
    for name, got, want in zip(meta.output_names, actual, expected, strict=True):
        if got.shape != tuple(want.shape):
            raise InputError(
                f"{path} output {name} is {got.shape} but the model gives {tuple(want.shape)}; "
                "the file was exported from another configuration"
            )
        if name == LABELS_OUTPUT:
            scores = expected[meta.output_names.index(SCORES_OUTPUT)]
            errors[name] = _label_mismatch(torch.from_numpy(got), want, scores)
        else:
            errors[name] = _relative_error(got, want.numpy())
    return errors


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    reference = expected.astype(np.float64)
    error = np.linalg.norm(actual.astype(np.float64) - reference)
    norm = np.linalg.norm(reference)
    return float(error / norm) if norm > 0 else float(error)


def _label_mismatch(actual: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor) -> float:
    """Fraction of confidently labelled pixels (top-2 margin > LABEL_MARGIN) that differ."""
    if scores.shape[1] < 2:
        confident = torch.ones_like(expected, dtype=torch.bool)  # one class: no close call
    else:
        top2 = scores.topk(2, dim=1).values
        confident = (top2[:, 0] - top2[:, 1]) > LABEL_MARGIN
    count = int(confident.sum())
    differ = int(((actual.long() != expected.long()) & confident).sum())
    return differ / count if count else 0.0
