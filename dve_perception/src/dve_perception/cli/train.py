"""`dve-perception compute-targets` and `dve-perception train`: distil Alpha-CLIP into DVEFormer.

Argument parsing and reporting only; `training.targets` and `training.trainer` do the work.
`--model-config` / `--teacher-config` take JSON files with the fields of `DVEFormerConfig` /
`AlphaCLIPVisionConfig`, for small architectures (tests, smoke runs); by default the published
ones are used.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dve_perception.errors import ConfigError

__all__ = ["add_compute_targets_parser", "add_train_parser", "parse_crop"]

_LOG = logging.getLogger("dve_perception.cli")


def add_compute_targets_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `compute-targets`."""
    parser = subparsers.add_parser(
        "compute-targets",
        help="compute Alpha-CLIP distillation targets for a dataset split",
        description=(
            "Embed every ground-truth segment of a dataset split (layout: docs/datasets.md) with "
            "the Alpha-CLIP ViT-L/14@336 teacher and store one vector per segment plus a "
            "segment-id image in <dataset>/targets/<teacher-name>/<id>.npz."
        ),
    )
    parser.add_argument("dataset", type=Path, help="dataset root")
    parser.add_argument(
        "--teacher", type=Path, required=True, metavar="CKPT", help="Alpha-CLIP visual checkpoint"
    )
    parser.add_argument("--split", default="train", help="split file name (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="segments per teacher call (default: 8)"
    )
    parser.add_argument("--teacher-name", default=None, help="targets subfolder name")
    parser.add_argument(
        "--teacher-config", type=Path, metavar="FILE", help="JSON AlphaCLIPVisionConfig fields"
    )
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if any)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read --teacher with full unpickling; only for files whose origin you trust",
    )
    parser.set_defaults(handler=_run_compute_targets)


def _run_compute_targets(args: argparse.Namespace) -> int:
    import torch

    from dve_perception.datasets.rgbd_dataset import RGBDDataset
    from dve_perception.training.alpha_clip import ALPHA_CLIP_L14_336
    from dve_perception.training.alpha_clip_checkpoint import load_alpha_clip
    from dve_perception.training.targets import DEFAULT_TEACHER_NAME, compute_targets, targets_dir

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = _teacher_config(args.teacher_config) or ALPHA_CLIP_L14_336
    dataset = RGBDDataset(args.dataset, args.split, check_labels=True)
    teacher = load_alpha_clip(args.teacher, config, trusted=args.trust_checkpoint)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = args.teacher_name or DEFAULT_TEACHER_NAME
    out = targets_dir(args.dataset, name)
    written = compute_targets(
        dataset, teacher.to(device), out, batch_size=args.batch_size, teacher_name=name
    )
    print(f"wrote {len(written)} target files to {out}")
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `train`."""
    parser = subparsers.add_parser(
        "train",
        help="train (fine-tune) the DVEFormer student on computed targets",
        description=(
            "Distil stored Alpha-CLIP targets (see compute-targets) into DVEFormer with the "
            "official recipe: cosine-embedding loss on valid pixels, AdamW, one-cycle, bf16 on "
            "CUDA, official augmentation. Writes last.pth/epoch_N.pth in the official checkpoint "
            "format, resume.pth and metrics.jsonl to --out."
        ),
    )
    parser.add_argument("dataset", type=Path, help="dataset root with targets/")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--variant", choices=("reducedres", "fullres"), default="reducedres")
    model.add_argument(
        "--model-config", type=Path, metavar="FILE", help="JSON DVEFormerConfig fields instead"
    )
    parser.add_argument("--init", type=Path, metavar="CKPT", help="official checkpoint to tune")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: 5e-5 * batch / 8)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--teacher-name", default=None, help="targets subfolder name")
    parser.add_argument("--crop", type=parse_crop, default=(480, 640), metavar="HxW")
    parser.add_argument("--no-augmentation", action="store_true", help="train on uncropped data")
    parser.add_argument("--pde-channels", type=int, default=0, choices=(0, 32, 64))
    parser.add_argument("--depth-randomisation", action="store_true")
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (0: no limit)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if any)")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    parser.add_argument(
        "--trust-checkpoint", action="store_true", help="unpickle --init/--teacher/--proxy fully"
    )
    _add_distillation_arguments(parser)
    parser.set_defaults(handler=_run_train)


def _add_distillation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distillation terms and several teachers (docs/training.md)")
    group.add_argument(
        "--teacher", type=Path, metavar="CKPT", help="live Alpha-CLIP teacher for TransKD/CKA"
    )
    group.add_argument(
        "--teacher-config", type=Path, metavar="FILE", help="JSON AlphaCLIPVisionConfig fields"
    )
    group.add_argument("--transkd-weight", type=float, default=0.0, help="TransKD term weight")
    group.add_argument("--cka-weight", type=float, default=0.0, help="CKA term weight")
    group.add_argument(
        "--teacher-names",
        type=_parse_names,
        default=(),
        metavar="A,B",
        help="target stores of several teachers, the main (student-width) one first",
    )
    group.add_argument(
        "--teacher-weights",
        type=_parse_weights,
        default=(),
        metavar="W1,W2",
        help="cosine-loss weight per --teacher-names entry (default: all 1)",
    )
    group.add_argument(
        "--proxy", type=Path, metavar="CKPT", help="trained DVEFormer whose output is the target"
    )
    group.add_argument(
        "--dkd-weight",
        type=float,
        default=0.0,
        help="closed-set DKD logit-distillation weight (needs --dkd-prototypes)",
    )
    group.add_argument(
        "--dkd-prototypes",
        type=Path,
        metavar="FILE",
        help="(K, D) class prototypes (.pt/.npy) of the closed-set head, K = classes.txt lines",
    )
    proxy_model = group.add_mutually_exclusive_group()
    proxy_model.add_argument(
        "--proxy-variant", choices=("reducedres", "fullres"), help="default: from the file"
    )
    proxy_model.add_argument(
        "--proxy-model-config", type=Path, metavar="FILE", help="JSON DVEFormerConfig of --proxy"
    )


def _parse_names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, e.g. a,b, got {text!r}")
    return names


def _parse_weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 1,0.5, got {text!r}"
        ) from None


def parse_crop(text: str) -> tuple[int, int]:
    """Parse 'HxW' into (height, width)."""
    height, sep, width = text.lower().partition("x")
    if sep and height.isdigit() and width.isdigit():
        return int(height), int(width)
    raise argparse.ArgumentTypeError(f"expected HxW, e.g. 480x640, got {text!r}")


def _run_train(args: argparse.Namespace) -> int:
    from dve_perception.model.dveformer import DVEFormerConfig
    from dve_perception.training.targets import DEFAULT_TEACHER_NAME
    from dve_perception.training.train_config import TrainConfig, model_config_from_json
    from dve_perception.training.trainer import Trainer

    if args.resume and args.overwrite:
        raise ConfigError("give either --resume or --overwrite, not both")
    model: str | DVEFormerConfig = args.variant
    if args.model_config is not None:
        model = model_config_from_json(args.model_config)
    proxy_model: str | DVEFormerConfig = args.proxy_variant or ""
    if args.proxy_model_config is not None:
        proxy_model = model_config_from_json(args.proxy_model_config)
    config = TrainConfig(
        output_dir=str(args.out),
        model=model,
        init_checkpoint=str(args.init or ""),
        trust_checkpoint=args.trust_checkpoint,
        split=args.split,
        teacher_name=args.teacher_name or DEFAULT_TEACHER_NAME,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        num_workers=args.num_workers,
        bf16=not args.no_bf16,
        device=args.device,
        seed=args.seed,
        crop_size=args.crop,
        augment=not args.no_augmentation,
        pde_channels=args.pde_channels,
        depth_randomisation=args.depth_randomisation,
        max_steps=args.max_steps,
        progress=not args.no_progress,
        transkd_weight=args.transkd_weight,
        cka_weight=args.cka_weight,
        teacher_checkpoint=str(args.teacher or ""),
        teacher_config=_teacher_config(args.teacher_config),
        teacher_names=args.teacher_names,
        teacher_weights=args.teacher_weights,
        proxy_checkpoint=str(args.proxy or ""),
        proxy_model=proxy_model,
        dkd_weight=args.dkd_weight,
        dkd_prototypes=str(args.dkd_prototypes or ""),
    )
    trainer = Trainer(config, args.dataset, resume=args.resume, overwrite=args.overwrite)
    logs = trainer.train()
    print(f"step {trainer.step}: {json.dumps(logs)}; checkpoints in {args.out}")
    return 0


def _teacher_config(path: Path | None) -> object:
    """The AlphaCLIPVisionConfig in a JSON file, or None without a file."""
    from dve_perception.training.alpha_clip import AlphaCLIPVisionConfig

    if path is None:
        return None
    try:
        return AlphaCLIPVisionConfig(**_read_json_object(path))
    except TypeError as err:  # unknown or missing field names
        raise ConfigError(f"--teacher-config {path}: {err}") from err


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read JSON config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data
