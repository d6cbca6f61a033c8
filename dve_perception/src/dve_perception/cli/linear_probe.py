"""`dve-perception train-linear-probe`: train a linear-probing head on a labelled dataset.

Argument parsing and reporting only; `training.linear_probing` does the work. The network
options are those of `evaluate` and `replay`, so the same files give the same embeddings.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dve_perception.cli.maps import add_network_arguments, network_choice
from dve_perception.errors import ConfigError

__all__ = ["add_train_linear_probe_parser", "parse_init"]

_LOG = logging.getLogger("dve_perception.cli")
_VISUAL_MEAN = "visual-mean:"


def add_train_linear_probe_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `train-linear-probe`."""
    parser = subparsers.add_parser(
        "train-linear-probe",
        help="train a linear-probing head on frozen DVEFormer embeddings",
        description=(
            "Train the official bias-free 1x1 linear-probing head on the frozen, normalised "
            "embeddings of a dataset split (layout: docs/datasets.md) and save it in the "
            "published format, usable with `evaluate --linear-probing` and "
            "`sample --linear-probing`."
        ),
    )
    parser.add_argument("dataset", type=Path, help="dataset root (classes.txt, splits/, rgb/, ...)")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="head file to write"
    )
    parser.add_argument("--split", default="train", help="split file name (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=50, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak lr (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--seed", type=int, default=0, help="sample-order seed")
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=4096,
        help="memory for cached embeddings; samples beyond it are re-embedded every epoch "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--init",
        default="text",
        metavar="text|visual-mean:TARGETS_DIR",
        help="initial weight: CLIP text prototypes of the class names, or visual-mean "
        "prototypes from a teacher-targets folder with text fallback for classes without "
        "examples (the official recipe) (default: %(default)s)",
    )
    add_network_arguments(parser)
    parser.set_defaults(handler=_run_train_linear_probe)


def parse_init(value: str) -> Path | None:
    """Return the targets folder of "visual-mean:DIR", or None for "text".

    Raises:
        ConfigError: any other value.
    """
    if value == "text":
        return None
    if value.startswith(_VISUAL_MEAN) and len(value) > len(_VISUAL_MEAN):
        return Path(value[len(_VISUAL_MEAN) :])
    raise ConfigError(f"--init is {value!r}; expected 'text' or 'visual-mean:TARGETS_DIR'")


def _run_train_linear_probe(args: argparse.Namespace) -> int:
    from dve_perception.datasets.rgbd_dataset import RGBDDataset
    from dve_perception.installed.models_folder import default_models_dir
    from dve_perception.perception.pipeline_setup import build_pipeline, class_prototypes
    from dve_perception.training.linear_probing import (
        LinearProbeConfig,
        prototypes_from_targets,
        save_linear_probe,
        train_linear_probe,
    )

    targets_folder = parse_init(args.init)
    if args.cache_mb < 0:
        raise ConfigError(f"--cache-mb must be >= 0, got {args.cache_mb}")
    config = LinearProbeConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        seed=args.seed,
        cache_bytes=args.cache_mb << 20,
    )
    models_dir = args.models_dir or default_models_dir()
    # Dataset and targets are checked before the network is built, which takes seconds.
    dataset = RGBDDataset(args.dataset, args.split, check_labels=True)
    provenance: dict = {}

    def text() -> object:
        prototypes, info = class_prototypes(dataset.class_names, args.text_model, models_dir)
        provenance.update(info)
        return prototypes

    if targets_folder is None:
        init = text()
    else:
        init, unseen = prototypes_from_targets(targets_folder, dataset.num_classes, text)
        if unseen:
            names = [dataset.class_names[i - 1] for i in unseen]
            _LOG.info("no visual examples of %s: initialised from their text prototypes", names)
    pipeline, net_provenance = build_pipeline(network_choice(args, models_dir))
    result = train_linear_probe(
        pipeline,
        dataset,
        init,
        config,
        progress=lambda epoch, loss: _LOG.info("epoch %d/%d: loss %.4f", epoch, args.epochs, loss),
    )
    logs = {"losses": result.losses, "init": args.init, "split": args.split, "lr": args.lr}
    save_linear_probe(args.out, result.probe, epoch=args.epochs, logs=logs)
    print(f"linear-probing head ({dataset.num_classes} classes) written to {args.out}")
    print(f"loss: {result.losses[0]:.4f} (epoch 1) -> {result.losses[-1]:.4f} (last)")
    if net_provenance.get("meaningful_weights") is False or not provenance.get(
        "meaningful_text", True
    ):
        _LOG.warning("trained on generated/random weights: the head carries no meaning")
    return 0
