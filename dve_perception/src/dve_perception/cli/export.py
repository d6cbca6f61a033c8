"""`dve-perception export-onnx`: the official ONNX recipe, optionally with fused outputs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dve_perception.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from dve_perception.model import DVEFormer
    from dve_perception.perception.backends.fused_outputs import FusedOutputs

__all__ = [
    "CHECK_TOLERANCE",
    "FP16_CHECK_TOLERANCE",
    "GENERATED_WEIGHTS_WARNING",
    "add_export_onnx_parser",
]

_LOG = logging.getLogger("dve_perception.cli")

#: --check fails above this relative L2 error; fp32 ONNX Runtime vs PyTorch is ~1e-6 here.
CHECK_TOLERANCE = 1e-4
#: The same for fp16 outputs, whose rounding alone gives ~1e-4.
FP16_CHECK_TOLERANCE = 2e-3
GENERATED_WEIGHTS_WARNING = (
    "generated weights: the exported model's outputs carry no meaning; pass --weights with a "
    "published checkpoint"
)


def add_export_onnx_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `export-onnx`."""
    parser = subparsers.add_parser(
        "export-onnx",
        help="export DVEFormer to ONNX with the official TensorRT recipe",
        description=(
            "Export DVEFormer to one self-contained ONNX file as the official TensorRT deployment "
            "does: inputs rgb (B,3,H,W) and depth (B,1,H,W), output "
            "dense_visual_embedding_decoder_0, dynamic batch, adaptive pooling fixed to H x W."
        ),
    )
    parser.add_argument(
        "--variant",
        required=True,
        choices=("fullres", "reducedres"),
        help="published variant: output at the input size (fullres) or at 1/4 (reducedres)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="official checkpoint (.pth); without it generated weights are used, which only "
        "exercise the pipeline",
    )
    parser.add_argument(
        "--height",
        type=int,
        default=480,
        metavar="H",
        help="input height, a multiple of 32 (default: %(default)s)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=640,
        metavar="W",
        help="input width, a multiple of 32 (default: %(default)s)",
    )
    parser.add_argument(
        "--output", type=Path, required=True, metavar="FILE.onnx", help="the file to write"
    )
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalise the output over channels inside the graph",
    )
    fused = parser.add_argument_group(
        "fused outputs",
        "computed inside the graph, so a deployment copies only what it publishes",
    )
    fused.add_argument(
        "--half",
        action="store_true",
        help="output the normalised embedding in fp16 (needs --normalize)",
    )
    fused.add_argument(
        "--vocabulary",
        metavar="NAMES_OR_FILE",
        help="add output class_scores (cosine against CLIP text prototypes of these classes): a "
        "file with one name per line, or comma-separated names",
    )
    fused.add_argument(
        "--text-model",
        type=Path,
        metavar="DIR",
        help="CLIP folder for --vocabulary (default: <models>/clip-vit-large-patch14-336)",
    )
    fused.add_argument(
        "--argmax",
        action="store_true",
        help="add output class_labels, the int32 argmax (needs --vocabulary)",
    )
    fused.add_argument(
        "--publish-size",
        type=_parse_size,
        metavar="HxW",
        help="add output embedding_publish: fp16 unit embeddings averaged to HxW, which must "
        "divide the output size",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        metavar="N",
        help="ONNX opset (default: 20, as the official export)",
    )
    parser.add_argument(
        "--dynamo",
        action="store_true",
        help="use the torch.export-based exporter instead of the official TorchScript one",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read --weights with full unpickling; only for files whose origin you trust",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the file with ONNX Runtime and PyTorch on random inputs, print each output's "
        f"relative L2 error and exit with 1 above {CHECK_TOLERANCE:g} ({FP16_CHECK_TOLERANCE:g} "
        "for fp16 outputs; class labels must agree wherever the best class is clear)",
    )
    parser.set_defaults(handler=_run_export_onnx)


def _parse_size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    if sep and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0:
        return int(height), int(width)
    raise argparse.ArgumentTypeError(
        f"expected HxW with positive integers, e.g. 60x80, got {text!r}"
    )


def _run_export_onnx(args: argparse.Namespace) -> int:
    from dve_perception.perception.backends.onnx_export import (
        DEFAULT_OPSET,
        check_export_size,
        export_onnx,
    )

    # Every option is checked before the model build, which takes seconds.
    check_export_size(args.height, args.width)
    if args.trust_checkpoint and args.weights is None:
        raise ConfigError("--trust-checkpoint applies to --weights, which was not given")
    fused, class_names = _fused_outputs(args)
    model = _load_model(args.variant, args.weights, args.trust_checkpoint)
    prototypes = _text_prototypes(class_names, args.text_model) if class_names else None
    export_onnx(
        model,
        args.output,
        height=args.height,
        width=args.width,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        dynamo=args.dynamo,
        fused=fused,
        prototypes=prototypes,
        class_names=class_names,
    )
    if args.check:
        return _check_export(model, args.output, fused, prototypes)
    return 0


def _fused_outputs(args: argparse.Namespace) -> tuple[FusedOutputs, list[str]]:
    from dve_perception.model.dveformer import DVEFormerConfig
    from dve_perception.perception.backends.fused_outputs import FusedOutputs, check_publish_size
    from dve_perception.text.vocabulary import read_vocabulary

    if args.text_model is not None and args.vocabulary is None:
        raise ConfigError("--text-model applies to --vocabulary, which was not given")
    class_names = read_vocabulary(args.vocabulary) if args.vocabulary is not None else []
    fused = FusedOutputs(
        normalize=args.normalize,
        half=args.half,
        num_classes=len(class_names),
        argmax=args.argmax,
        publish_size=args.publish_size,
    )
    if fused.publish_size is not None:
        stride = DVEFormerConfig.variant(args.variant).output_stride
        check_publish_size(fused.publish_size, (args.height // stride, args.width // stride))
    return fused, class_names


def _text_prototypes(class_names: list[str], text_model: Path | None) -> torch.Tensor:
    from dve_perception.installed.models_folder import default_models_dir, resolve_text_encoder

    encoder, source, is_real = resolve_text_encoder(text_model, default_models_dir())
    if not is_real:
        _LOG.warning("%s is a random text tower: the class outputs carry no meaning", source)
    return encoder.encode(class_names)


def _check_export(
    model: DVEFormer, path: Path, fused: FusedOutputs, prototypes: torch.Tensor | None
) -> int:
    from dve_perception.perception.backends.fused_outputs import LABELS_OUTPUT
    from dve_perception.perception.backends.onnx_export import (
        compare_with_onnxruntime,
        comparison_tolerance,
    )

    failed = []
    for name, error in compare_with_onnxruntime(model, path, prototypes=prototypes).items():
        if name == LABELS_OUTPUT:
            print(f"onnxruntime vs PyTorch labels differing at clear pixels: {error:.3g} ({name})")
        else:
            print(f"onnxruntime vs PyTorch relative L2 error: {error:.3g} ({name})")
        if error > comparison_tolerance(name, fused):
            failed.append(name)
    if failed:
        _LOG.error("%s exceed the tolerance; do not deploy %s", ", ".join(failed), path)
        return 1
    return 0


def _load_model(variant: str, weights: Path | None, trusted: bool) -> DVEFormer:
    from dve_perception.model.checkpoint import load_checkpoint
    from dve_perception.model.generated_weights import build_generated

    if weights is not None:
        return load_checkpoint(weights, variant, trusted=trusted)
    _LOG.warning(GENERATED_WEIGHTS_WARNING)
    return build_generated(variant)
