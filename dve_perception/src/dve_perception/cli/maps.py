"""`dve-perception replay`, `query` and `demo`: the subcommands that build and search 3D maps.

Same pattern as `cli.py`: `_add_<name>_parser` declares the arguments and sets `handler`, and
`_run_<name>` calls the library. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dve_perception.errors import ConfigError

if TYPE_CHECKING:
    from dve_perception.perception.pipeline_setup import NetworkChoice
    from dve_perception.replay.replay_loop import ReplayResult

__all__ = [
    "add_demo_parser",
    "add_network_arguments",
    "add_query_parser",
    "add_replay_parser",
    "network_choice",
]

_LOG = logging.getLogger("dve_perception.cli")
#: Exit code of a replay ended by Ctrl-C (the map so far is saved), as shells report SIGINT.
EXIT_INTERRUPTED = 130
_NO_MEANING = "results come from generated/random weights and carry no meaning"


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose the network (shared by replay, evaluate, train-linear-probe)."""
    group = parser.add_argument_group("network")
    group.add_argument("--variant", choices=("reducedres", "fullres"), default="reducedres")
    group.add_argument(
        "--weights", type=Path, help="checkpoint (default: <models>/dveformer_<variant>_mixed.pth)"
    )
    group.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default="torch")
    group.add_argument(
        "--onnx", type=Path, metavar="FILE", help="exported model for --backend onnxruntime"
    )
    group.add_argument(
        "--engine",
        type=Path,
        metavar="PLAN",
        help="TensorRT plan for --backend tensorrt (from `dve-perception build-engine`)",
    )
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="torch backend on CUDA: fp16 autocast (an engine's precision is set when built)",
    )
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of --weights (only for files whose origin you trust)",
    )
    _add_models_arguments(group)


def _add_models_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--models-dir",
        type=Path,
        help="installed weights (default: $DVE_PERCEPTION_MODELS or ./models)",
    )
    group.add_argument(
        "--text-model", type=Path, help="CLIP folder (default: <models>/clip-vit-large-patch14-336)"
    )


def _add_map_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("map")
    group.add_argument(
        "--params",
        type=Path,
        metavar="YAML",
        help="ROS 2 parameters file (e.g. config/dve_perception.yaml) whose map.* settings the "
        "map takes; the options below override it",
    )
    group.add_argument("--voxel-size", type=float, metavar="M", help="voxel edge (default 0.05 m)")
    group.add_argument("--max-voxels", type=int, help="memory budget in voxels (default: 1M)")
    group.add_argument(
        "--feature-encoding",
        choices=("float16", "pca", "pca_int"),  # map_config.FEATURE_ENCODINGS (a test checks)
        help="per-voxel storage: float16 (1.5 KB/voxel, default), pca or pca_int (256 B/voxel, "
        "approximate; pca_int is the more faithful, pca integrates faster on a CPU)",
    )


def _map_settings(args: argparse.Namespace) -> dict:
    """The map settings: the parameters file's map.*, then the explicit options."""
    from dataclasses import asdict

    from dve_perception.mapping import MapConfig

    settings = asdict(MapConfig())
    if args.params is not None:
        from dve_perception.settings.node_config import MappingNodeConfig
        from dve_perception.settings.parameters import load_parameters_yaml

        settings = asdict(load_parameters_yaml(args.params, MappingNodeConfig).map)
    given = {
        "voxel_size_m": args.voxel_size,
        "max_voxels": args.max_voxels,
        "feature_encoding": args.feature_encoding,
    }
    settings.update({name: value for name, value in given.items() if value is not None})
    return settings


def add_replay_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `replay`."""
    parser = subparsers.add_parser(
        "replay",
        help="build a 3D map from a rosbag2 recording or a folder of RGB-D frames",
        description=(
            "Run DVEFormer over a recording (a rosbag2 folder or .mcap/.db3 file, or a folder "
            "with rgb/, depth/, camera.json and poses.txt), fuse the embeddings into a voxel map "
            "and write map.dvemap, map_pca.ply, previews/ and summary.json into --out. Ctrl-C "
            "stops early and still saves the map so far."
        ),
    )
    parser.add_argument("source", type=Path, help="rosbag2 folder, .mcap/.db3 file, or folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="reuse an existing --out")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th frame")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N used frames")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    rec = parser.add_argument_group("recording")
    rec.add_argument("--color-topic", help="colour image topic (default: auto-detect)")
    rec.add_argument("--depth-topic", help="depth image topic, registered to colour")
    rec.add_argument("--camera-info-topic", help="camera_info of the colour camera")
    rec.add_argument("--world-frame", help="TF frame of the map (default: the TF tree's root)")
    rec.add_argument("--camera-frame", help="optical frame (default: camera_info frame_id)")
    rec.add_argument("--slop", type=float, default=0.02, metavar="S", help="max colour/depth gap")
    rec.add_argument("--poses", type=Path, help="TUM trajectory to use instead of /tf")
    rec.add_argument(
        "--distro",
        choices=("humble", "jazzy"),
        default="humble",
        help="message definitions for bags that do not store them",
    )
    add_network_arguments(parser)
    parser.add_argument(
        "--vocabulary",
        help="class names for segmentation previews (file or comma-separated; default NYUv2 40)",
    )
    parser.add_argument(
        "--no-segmentation", action="store_true", help="skip segmentation previews (no text model)"
    )
    _add_map_arguments(parser)
    parser.set_defaults(handler=_run_replay)


def _source_options(args: argparse.Namespace) -> dict:
    names = ("color_topic", "depth_topic", "camera_info_topic", "world_frame", "camera_frame")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    options["slop_s"] = args.slop
    if args.poses is not None:
        options["poses"] = args.poses
    if args.distro != "humble":
        options["distro"] = args.distro
    return options


def _run_replay(args: argparse.Namespace) -> int:
    from dve_perception.installed.models_folder import default_models_dir
    from dve_perception.mapping import MapConfig
    from dve_perception.perception.pipeline_setup import build_pipeline, class_prototypes
    from dve_perception.replay.replay_loop import ReplayOptions, prepare_output_dir, run_replay
    from dve_perception.sources import open_source
    from dve_perception.text.vocabulary import read_vocabulary

    models_dir = args.models_dir or default_models_dir()
    # Open everything that can fail on user input before the slow model build.
    map_settings = _map_settings(args)
    options = ReplayOptions(
        every=args.every,
        max_frames=args.max_frames,
        map_config=MapConfig(**map_settings),
        device=args.device,
        progress=not args.no_progress,
    )
    source = open_source(args.source, **_source_options(args))
    out = prepare_output_dir(args.out, overwrite=args.overwrite)
    pipeline, provenance = build_pipeline(network_choice(args, models_dir))
    # The map takes the network's embedding dimension (768 for the published models).
    options = replace(
        options, map_config=MapConfig(**{**map_settings, "embedding_dim": pipeline.embedding_dim})
    )
    prototypes = None
    if not args.no_segmentation:
        names = read_vocabulary(args.vocabulary)
        prototypes, text_provenance = class_prototypes(names, args.text_model, models_dir)
        provenance.update(text_provenance, vocabulary=names)
    result = run_replay(
        source, pipeline, out, options=options, prototypes=prototypes, provenance=provenance
    )
    _print_replay(result)
    if provenance.get("meaningful_weights") is False:
        _LOG.warning(_NO_MEANING)
    return EXIT_INTERRUPTED if result.interrupted else 0


def network_choice(args: argparse.Namespace, models_dir: Path) -> NetworkChoice:
    """Turn the options of `add_network_arguments` into a `NetworkChoice`."""
    from dve_perception.perception.pipeline_setup import NetworkChoice

    if args.trust_checkpoint and args.weights is None:
        raise ConfigError("--trust-checkpoint applies to --weights, which was not given")
    return NetworkChoice(
        variant=args.variant,
        weights=args.weights,
        backend=args.backend,
        onnx_path=args.onnx,
        engine_path=args.engine,
        # TensorRT runs on the GPU; --device only moves torch work, and defaults to cpu.
        device="cuda" if args.backend == "tensorrt" and args.device == "cpu" else args.device,
        precision=args.precision,
        models_dir=models_dir,
        trusted=args.trust_checkpoint,
    )


def _print_replay(result: ReplayResult) -> None:
    frames = result.summary["frames"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in frames["skipped"].items()) or "none"
    state = "interrupted, map so far saved" if result.interrupted else "done"
    print(
        f"replay {state}: {frames['used']} of {frames['colour_images']} colour images used "
        f"(skipped: {skipped}); {result.summary['map']['voxels']} voxels"
    )
    print(f"outputs in {result.output_dir}/ (summary.json lists them)")


def add_query_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `query`."""
    parser = subparsers.add_parser(
        "query",
        help="search a saved map for a phrase; print the matches, write a heat PLY and a PNG",
        description=(
            "Encode a phrase with the CLIP text tower, score every voxel of a saved map (LERF "
            "relevancy against canonical and your negatives), print the best clusters and write "
            "<slug>_heat.ply, <slug>_topdown.png and <slug>.json."
        ),
    )
    parser.add_argument("map", type=Path, help="a map file (map.dvemap from replay)")
    parser.add_argument("text", help='what to look for, e.g. "a red mug"')
    parser.add_argument("--negatives", nargs="*", default=[], help="phrases the answer must beat")
    parser.add_argument("--top-k", type=int, default=5, help="number of matches (default: 5)")
    parser.add_argument("--threshold", type=float, help="minimum score of a matched voxel")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="output folder (default: <map folder>/queries)")
    _add_models_arguments(parser)
    parser.set_defaults(handler=_run_query)


def _run_query(args: argparse.Namespace) -> int:
    from dve_perception.cli.query_report import run_query
    from dve_perception.installed.models_folder import default_models_dir, resolve_text_encoder
    from dve_perception.mapping import EmbeddingMap

    if isinstance(args.top_k, int) and args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    emap = EmbeddingMap.load(args.map)  # before the text tower, which takes seconds to load
    encoder, _, is_real = resolve_text_encoder(
        args.text_model, args.models_dir or default_models_dir()
    )
    out = args.out if args.out is not None else args.map.parent / "queries"
    out.mkdir(parents=True, exist_ok=True)
    report = run_query(
        emap,
        encoder,
        args.text,
        negatives=tuple(args.negatives),
        top_k=args.top_k,
        threshold=args.threshold,
        out_dir=out,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    if not is_real:
        _LOG.warning(_NO_MEANING)
    return 0


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="the whole offline pipeline on the bundled frame: recording, replay, queries",
        description=(
            "Build a short rosbag2 recording from the bundled Kinect v2 frame by moving a "
            "virtual camera around it, replay it into a 3D map and answer a few text queries. "
            "Needs no download; without installed weights the answers carry no meaning."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="reuse an existing --out")
    parser.add_argument("--frames", type=int, default=8, help="frames in the recording")
    parser.add_argument(
        "--queries", nargs="+", metavar="TEXT", help="phrases to look for (default: a few)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_network_arguments(parser)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from dve_perception.cli.demo import DEFAULT_QUERIES, run_demo
    from dve_perception.installed.models_folder import default_models_dir

    if args.frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {args.frames}")
    result = run_demo(
        args.out,
        choice=network_choice(args, args.models_dir or default_models_dir()),
        text_model=args.text_model,
        queries=args.queries or DEFAULT_QUERIES,
        num_frames=args.frames,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_replay(result.replay)
    for report in result.queries:
        print()
        print(report.format_text())
    print(f"\ndemo outputs in {result.output_dir}/ (demo_summary.json lists what ran)")
    if not result.meaningful:
        _LOG.warning(
            "GENERATED weights and/or a RANDOM text tower were used: the map and the answers "
            "above carry NO meaning. Install the published files (`dve-perception weights` "
            "says how) and run the demo again."
        )
    return EXIT_INTERRUPTED if result.replay.interrupted else 0
