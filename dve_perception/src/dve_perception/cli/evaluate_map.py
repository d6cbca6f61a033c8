"""`dve-perception evaluate-map`: per-class voxel IoU of a map's text queries on labelled data.

Ground truth comes from a recording folder (the `replay` layout) with a `semantic/` folder of
label PNGs whose stems are those of `rgb/` (0 = void, 1..K = line of classes.txt), or from an
.npz written by `VoxelLabels.save` (`--save-labels` writes one). `evaluation.map_eval` does the
work; this module parses arguments and reports.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dve_perception.cli.maps import _add_models_arguments
from dve_perception.errors import InputError

__all__ = ["add_evaluate_map_parser", "read_labelled_folder"]

_LOG = logging.getLogger("dve_perception.cli")


def add_evaluate_map_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `evaluate-map`."""
    parser = subparsers.add_parser(
        "evaluate-map",
        help="per-class voxel IoU of a 3D map's text queries against labelled data",
        description=(
            "Query MAP with every class name and compare the voxels above the threshold (and an "
            "argmax assignment) with voxel ground truth from a labelled recording folder "
            "(rgb/, depth/, semantic/, camera.json, poses.txt, classes.txt) or a voxel-label "
            ".npz. Map voxels without ground truth are ignored."
        ),
    )
    parser.add_argument("map", type=Path, help="map file (map.dvemap from `replay`)")
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="RECORDING|NPZ",
        help="labelled recording folder, or an .npz of voxel labels",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="FILE|NAME",
        help="classes.txt, or the class names in label order (default: classes.txt of the "
        "recording, or the names stored in the .npz)",
    )
    parser.add_argument("--threshold", type=float, help="score threshold (default: relevancy 0.5)")
    parser.add_argument(
        "--unmapped",
        choices=("ignore", "miss"),
        default="ignore",
        help="ground-truth voxels missing from the map: ignore them or count them as misses",
    )
    parser.add_argument(
        "--label-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sample depth and labels of a recording at the network's output size (e.g. 120 "
        "160 for the reduced-res model at 480x640), as the map saw the frames; then "
        "--unmapped miss counts what the map lost, not the resolution difference (default: "
        "the labels' full resolution)",
    )
    parser.add_argument("--save-labels", type=Path, metavar="NPZ", help="write the voxel labels")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_models_arguments(parser.add_argument_group("text model"))
    parser.set_defaults(handler=_run_evaluate_map)


def _run_evaluate_map(args: argparse.Namespace) -> int:
    from dve_perception.evaluation.map_eval import VoxelLabels, evaluate_map
    from dve_perception.installed.models_folder import default_models_dir, resolve_text_encoder
    from dve_perception.mapping import EmbeddingMap

    emap = EmbeddingMap.load(args.map)
    if not args.labels.exists():
        raise InputError(
            f"--labels {args.labels} does not exist; expected a labelled recording folder or an "
            ".npz of voxel labels"
        )
    if args.labels.is_file():
        if args.label_size is not None:
            raise InputError("--label-size applies to a recording folder, not to voxel labels")
        truth = VoxelLabels.load(args.labels)
        names = _class_names(args.classes, truth.class_names, args.labels)
    else:
        names = _class_names(args.classes, None, args.labels)
        size = None if args.label_size is None else tuple(args.label_size)
        truth = read_labelled_folder(args.labels, emap, names, size=size)
    if args.save_labels is not None:
        truth.save(args.save_labels)
    encoder, _, is_real = resolve_text_encoder(
        args.text_model, args.models_dir or default_models_dir()
    )
    result = evaluate_map(
        emap, encoder, names, truth, threshold=args.threshold, unmapped=args.unmapped
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_table())
    if not is_real:
        _LOG.warning("the text model has random weights: the scores carry no meaning")
    return 0


def _class_names(given: list[str] | None, stored: tuple[str, ...] | None, labels: Path) -> list:
    from dve_perception.datasets.rgbd_dataset import read_class_names

    if given is not None:
        if len(given) == 1 and Path(given[0]).is_file():
            return read_class_names(given[0])
        return list(given)
    if stored is not None:
        return list(stored)
    if (labels / "classes.txt").is_file():
        return read_class_names(labels / "classes.txt")
    raise InputError(
        f"no class names: {labels} has no classes.txt (and stores none); pass --classes"
    )


def read_labelled_folder(  # noqa: ANN201
    path: Path, emap: object, class_names: list[str], size: tuple[int, int] | None = None
):
    """Voxel labels of a recording folder with `semantic/<stem>.png` next to each rgb image.

    Frames are read with `FolderSource` (the same pairing and poses `replay` uses); each frame's
    label image is matched by time stamp. Pixels outside the map's depth range do not vote.
    `size`: sample depth and labels at this (h, w), see `voxel_labels_from_frames`.

    Raises:
        InputError: no semantic/ folder, a frame without a label image, a label image that
            is not a single-channel id image.
    """
    from dve_perception.datasets.rgbd_dataset import read_labels
    from dve_perception.evaluation.map_eval import voxel_labels_from_frames
    from dve_perception.sources.folder import FolderSource
    from dve_perception.sources.frame_source import SkippedFrame
    from dve_perception.sources.trajectory import parse_seconds

    folder = path / "semantic"
    if not folder.is_dir():
        raise InputError(
            f"{folder} does not exist; a labelled recording needs semantic/<t>.png (class ids, "
            "0 = void) with the stems of rgb/"
        )
    labels = {parse_seconds(p.stem): p for p in folder.glob("*.png") if not p.stem.startswith(".")}
    source = FolderSource(path)

    def pairs():  # noqa: ANN202 - a local generator
        for item in source:
            if isinstance(item, SkippedFrame):
                continue
            label_path = labels.get(item.stamp_ns)
            if label_path is None:
                raise InputError(f"{folder} has no label image for the frame at {item.stamp_ns} ns")
            yield item, read_labels(label_path)

    config = emap.config
    return voxel_labels_from_frames(
        pairs(),
        emap.voxel_size_m,
        min_depth_m=config.min_depth_m,
        max_depth_m=config.max_depth_m,
        class_names=class_names,
        size=size,
    )
