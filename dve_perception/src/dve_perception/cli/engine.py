"""`dve-perception build-engine`: build (or reuse) a TensorRT engine from an exported ONNX file.

Same pattern as `cli.py`: `add_build_engine_parser` declares the arguments and sets `handler`,
and `_run_build_engine` calls the library (`backends.engine_build.ensure_engine`), importing it
only when run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["ENGINES_FOLDER", "add_build_engine_parser"]

_LOG = logging.getLogger("dve_perception.cli")
#: The engine cache's folder inside the models folder.
ENGINES_FOLDER = "engines"


def add_build_engine_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `build-engine`."""
    parser = subparsers.add_parser(
        "build-engine",
        help="build a TensorRT engine from an exported ONNX file (reused when still valid)",
        description=(
            "Build a TensorRT engine (.plan) from a file made by `dve-perception export-onnx`, "
            "for this GPU and TensorRT version, into an engine cache. A cached engine built from "
            "the same ONNX file with the same precision, batch, GPU and TensorRT version is "
            "reused; anything else gets a new engine. Prints the engine's path."
        ),
    )
    parser.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="exported model")
    parser.add_argument(
        "--precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="fp16 (fast; default) or fp32 (exact, TF32 off)",
    )
    parser.add_argument(
        "--workspace-gb",
        type=float,
        default=4.0,
        metavar="GB",
        help="TensorRT scratch memory limit in GiB (default: %(default)s; lower it when the "
        "build runs out of GPU memory)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="engine cache (default: <models>/engines)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="installed weights (default: $DVE_PERCEPTION_MODELS or ./models)",
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        metavar="FILE",
        help="TensorRT timing cache to start from and update (speeds up rebuilds)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=1,
        metavar="N",
        help="largest batch the engine accepts (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even when a valid engine is cached"
    )
    parser.set_defaults(handler=_run_build_engine)


def _run_build_engine(args: argparse.Namespace) -> int:
    from dve_perception.installed.models_folder import default_models_dir
    from dve_perception.perception.backends.engine_build import ensure_engine

    cache_dir = args.cache_dir or (args.models_dir or default_models_dir()) / ENGINES_FOLDER
    result = ensure_engine(
        args.onnx,
        cache_dir,
        precision=args.precision,
        force=args.force,
        workspace_gb=args.workspace_gb,
        timing_cache=args.timing_cache,
        max_batch=args.max_batch,
    )
    key = result.key
    target = f"{key.precision}, {key.gpu_name} (sm {key.compute_capability}), TensorRT "
    target += key.tensorrt_version
    if result.built:
        _LOG.info("built the engine for %s in %.0f s", target, result.seconds)
    else:
        _LOG.info("reused the cached engine for %s (--force rebuilds it)", target)
    print(result.plan_path)
    return 0
