"""`dve-perception evaluate`: 2D segmentation mIoU on a dataset in the documented layout.

Argument parsing and reporting only; `evaluation.segmentation_eval` does the work. The network
options are those of `replay` (`cli.maps`), so the same files give the same network.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dve_perception.cli.maps import add_network_arguments, network_choice
from dve_perception.errors import ConfigError

__all__ = ["add_evaluate_parser"]

_LOG = logging.getLogger("dve_perception.cli")


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `evaluate`."""
    parser = subparsers.add_parser(
        "evaluate",
        help="segmentation mIoU of DVEFormer on a labelled RGB-D dataset",
        description=(
            "Segment every sample of a dataset split (layout: docs/datasets.md) with text "
            "prototypes, visual-mean prototypes from a file, or a linear-probing head, and print "
            "per-class IoU and mIoU with the official protocol (void ignored)."
        ),
    )
    parser.add_argument("dataset", type=Path, help="dataset root (classes.txt, splits/, rgb/, ...)")
    parser.add_argument("--split", default="val", help="split file name (default: %(default)s)")
    parser.add_argument(
        "--prototypes",
        default="text",
        metavar="text|visual-mean:TARGETS_DIR|FILE",
        help="'text' (CLIP text prototypes of the class names), 'visual-mean:DIR' (visual-mean "
        "prototypes from a teacher-targets folder of the training split, text prototypes for "
        "classes without examples) or a file with a (K, D) tensor (.pt or .npy) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--linear-probing", type=Path, metavar="FILE", help="a linear-probing head file instead"
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_network_arguments(parser)
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from dve_perception.datasets.rgbd_dataset import RGBDDataset
    from dve_perception.evaluation.segmentation_eval import evaluate_segmentation
    from dve_perception.installed.models_folder import default_models_dir
    from dve_perception.perception.pipeline_setup import build_pipeline, class_prototypes

    if args.linear_probing is not None and args.prototypes != "text":
        raise ConfigError("give either --prototypes FILE or --linear-probing FILE, not both")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    models_dir = args.models_dir or default_models_dir()
    # The dataset is checked before the network is built, which takes seconds.
    dataset = RGBDDataset(args.dataset, args.split)
    meaningful_text = True
    if args.linear_probing is not None:
        from dve_perception.model.checkpoint import load_linear_probing_weights

        mode, prototypes = "linear_probing", load_linear_probing_weights(args.linear_probing)
    elif args.prototypes == "text":
        prototypes, provenance = class_prototypes(dataset.class_names, args.text_model, models_dir)
        mode, meaningful_text = "text", provenance["meaningful_text"]
    elif args.prototypes.startswith("visual-mean:"):
        from dve_perception.training.linear_probing import prototypes_from_targets

        def text():  # noqa: ANN202 - only called for classes without visual examples
            vectors, info = class_prototypes(dataset.class_names, args.text_model, models_dir)
            text_provenance.update(info)
            return vectors

        text_provenance: dict = {}
        folder = Path(args.prototypes[len("visual-mean:") :])
        prototypes, _ = prototypes_from_targets(folder, dataset.num_classes, text)
        mode, meaningful_text = "visual_mean", text_provenance.get("meaningful_text", True)
    else:
        from dve_perception.evaluation.segmentation_eval import read_prototypes_file

        mode, prototypes = "visual_mean", read_prototypes_file(Path(args.prototypes))
    pipeline, provenance = build_pipeline(network_choice(args, models_dir))
    result = evaluate_segmentation(pipeline, dataset, prototypes, mode=mode, limit=args.limit)
    if args.json:
        print(json.dumps({**result.to_dict(), "split": args.split, **provenance}, indent=2))
    else:
        print(result.format_table())
    if provenance.get("meaningful_weights") is False or not meaningful_text:
        _LOG.warning("results come from generated/random weights and carry no meaning")
    return 0
