"""The `dve-perception` command line: argument parsing and reporting only.

Each subcommand is two functions: `add_<name>_parser(subparsers)` (in a module of this package,
or a `_add_<name>_parser` here) declares its arguments and sets
`handler`, and `_run_<name>(args) -> int` does the work by calling the library. To add one,
write both and list the first in `_SUBCOMMANDS`. Handlers import torch and friends lazily so
that `--help` stays fast. Errors the library raises on purpose (`DvePerceptionError`) end the
command with one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dve_perception import __version__
from dve_perception.cli.engine import add_build_engine_parser
from dve_perception.cli.evaluate import add_evaluate_parser
from dve_perception.cli.evaluate_map import add_evaluate_map_parser
from dve_perception.cli.export import add_export_onnx_parser
from dve_perception.cli.linear_probe import add_train_linear_probe_parser
from dve_perception.cli.maps import add_demo_parser, add_query_parser, add_replay_parser
from dve_perception.cli.train import add_compute_targets_parser, add_train_parser
from dve_perception.errors import DvePerceptionError

__all__ = ["build_parser", "main"]

# A fixed name rather than __name__, which is "__main__" under `python -m dve_perception.cli.main`.
_LOG = logging.getLogger("dve_perception.cli")

#: Exit code for errors the library reports on purpose (bad input, file or configuration).
EXIT_ERROR = 2


def _add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="run DVEFormer on one RGB-D frame and write PCA and segmentation PNGs",
        description=(
            "Run DVEFormer on one registered colour/depth pair (by default the bundled Kinect v2 "
            "frame) and write the PCA-coloured embedding, a segmentation for a vocabulary and a "
            "summary.json. Missing published weights are replaced by generated ones, loudly."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("out/sample"), help="output folder")
    parser.add_argument("--rgb", type=Path, help="colour image (default: bundled sample)")
    parser.add_argument(
        "--depth", type=Path, help="16-bit depth PNG in mm, registered to colour (default: sample)"
    )
    parser.add_argument("--variant", choices=("reducedres", "fullres"), default="reducedres")
    parser.add_argument(
        "--weights", type=Path, help="checkpoint (default: <models>/dveformer_<variant>_mixed.pth)"
    )
    parser.add_argument(
        "--text-model", type=Path, help="CLIP folder (default: <models>/clip-vit-large-patch14-336)"
    )
    parser.add_argument(
        "--vocabulary",
        help="class names: a file with one per line, or comma-separated (default: NYUv2's 40)",
    )
    parser.add_argument(
        "--linear-probing", type=Path, help="a published linear-probing head instead of text"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="installed weights (default: $DVE_PERCEPTION_MODELS or ./models)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of --weights (only for files whose origin you trust)",
    )
    parser.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from dve_perception.cli.sample import run_sample

    result = run_sample(
        args.out,
        rgb_path=args.rgb,
        depth_path=args.depth,
        variant=args.variant,
        weights=args.weights,
        text_model=args.text_model,
        vocabulary=args.vocabulary,
        linear_probing=args.linear_probing,
        models_dir=args.models_dir,
        device=args.device,
        trusted=args.trust_checkpoint,
    )
    for path in result.files:
        print(path)
    if not result.meaningful:
        _LOG.warning("results come from generated/random weights and carry no meaning")
    return 0


def _add_weights_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="list installed model files, check them, and say where to get the missing ones",
        description=(
            "List what is installed in the models folder (DVEFormer checkpoints, the CLIP "
            "ViT-L/14@336 text model, linear-probing heads), check each file's layout and "
            "recorded sha256, and print where to get and how to place what is missing."
        ),
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="installed weights (default: $DVE_PERCEPTION_MODELS or ./models)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="write SHA256SUMS for the files present, to detect later corruption",
    )
    parser.add_argument(
        "--download-text-model",
        action="store_true",
        help="fetch the CLIP text model from Hugging Face (needs network; fails fast without)",
    )
    parser.set_defaults(handler=_run_weights)


def _run_weights(args: argparse.Namespace) -> int:
    from dve_perception.installed.download import download_text_model
    from dve_perception.installed.models_folder import default_models_dir
    from dve_perception.installed.registry import (
        format_models_table,
        inspect_models,
        installation_help,
        record_checksums,
    )

    models_dir = args.models_dir or default_models_dir()
    if args.download_text_model:
        download_text_model(models_dir)
    if args.record:
        record_checksums(models_dir)
    entries = inspect_models(models_dir)
    print(format_models_table(entries))
    if any(e.status != "ok" for e in entries):
        print()
        print(installation_help())
    return 0


# Add a subcommand's `_add_<name>_parser` here; the help lists them in this order.
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_demo_parser,
    add_replay_parser,
    add_query_parser,
    _add_sample_parser,
    add_export_onnx_parser,
    add_build_engine_parser,
    _add_weights_parser,
    add_evaluate_parser,
    add_evaluate_map_parser,
    add_train_linear_probe_parser,
    add_compute_targets_parser,
    add_train_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dve-perception",
        description="Open-vocabulary RGB-D perception with DVEFormer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def _configure_logging() -> None:
    # INFO for our loggers only: the root stays at WARNING so torch's INFO chatter stays hidden.
    # basicConfig does nothing when the host (e.g. pytest) has already configured logging.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("dve_perception").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Args:
        argv: the arguments without the program name; None reads `sys.argv`.

    Returns:
        0 on success, 1 when `--check` fails, 2 for a `DvePerceptionError` (reported as one line
        on stderr). Usage errors exit with 2 through argparse's `SystemExit`.
    """
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        return args.handler(args)
    except DvePerceptionError as err:
        message = " ".join(str(err).split("\n"))
        print(f"dve-perception {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
