"""Run DVEFormer on one RGB-D frame and write what a person wants to look at.

This is the `dve-perception sample` command's work: read a colour/depth pair, preprocess, run the
model, and write the PCA-coloured embedding and a segmentation for a vocabulary (text prototypes
from the CLIP text tower, or a published linear-probing head) as PNGs, plus a JSON summary.
Published weights are looked up in the models folder; where they are missing, generated weights and
a random text tower keep the pipeline running and the summary says the results carry no meaning.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dve_perception.errors import ConfigError, InputError
from dve_perception.images import read_depth, read_rgb, write_png
from dve_perception.installed.models_folder import (
    MODELS_ENV_VAR,
    TEXT_MODEL_FOLDER,
    default_models_dir,
    resolve_model,
    resolve_text_encoder,
)
from dve_perception.model.checkpoint import load_linear_probing_weights
from dve_perception.model.generated_weights import PARITY_SEED
from dve_perception.perception.postprocess import class_scores, segment
from dve_perception.perception.preprocess import PreprocessConfig, prepare_inputs
from dve_perception.perception.visualization import blend, label_colors, pca_colors
from dve_perception.text.vocabulary import read_vocabulary

__all__ = [
    "MODELS_ENV_VAR",
    "TEXT_MODEL_FOLDER",
    "SampleResult",
    "bundled_sample",
    "default_models_dir",
    "run_sample",
]

_LOG = logging.getLogger(__name__)
_DATA = Path(__file__).parents[1] / "data"


@dataclass(frozen=True)
class SampleResult:
    """What `run_sample` wrote and how it got there."""

    output_dir: Path
    files: tuple[Path, ...]
    meaningful: bool
    summary: dict = field(repr=False)


def bundled_sample() -> tuple[Path, Path]:
    """Return the bundled Kinect v2 frame (rgb.png, depth.png in mm), see data/sample/NOTICE.md."""
    return _DATA / "sample" / "rgb.png", _DATA / "sample" / "depth.png"


def _text_prototypes(
    names: list[str], text_model: Path | None, models_dir: Path
) -> tuple[torch.Tensor, str, bool]:
    """Encode class names; returns (prototypes, source description, is_real)."""
    encoder, source, is_real = resolve_text_encoder(text_model, models_dir)
    return encoder.encode(names), source, is_real


def run_sample(
    out_dir: str | Path,
    *,
    rgb_path: str | Path | None = None,
    depth_path: str | Path | None = None,
    variant: str = "reducedres",
    weights: str | Path | None = None,
    text_model: str | Path | None = None,
    vocabulary: str | None = None,
    linear_probing: str | Path | None = None,
    models_dir: str | Path | None = None,
    device: str = "cpu",
    trusted: bool = False,
) -> SampleResult:
    """Run the model on one frame and write PNGs and `summary.json` into `out_dir`.

    Args:
        out_dir: output folder, created if needed.
        rgb_path: colour image (8-bit); None uses the bundled sample.
        depth_path: 16-bit depth PNG in millimetres registered to colour; None: bundled sample.
        variant: "reducedres" or "fullres".
        weights: checkpoint; None looks for `dveformer_<variant>_mixed.pth` in `models_dir`.
        text_model: CLIP folder; None looks for `clip-vit-large-patch14-336` in `models_dir`.
        vocabulary: see `text.vocabulary.read_vocabulary`.
        linear_probing: a published linear-probing head file to use instead of text prototypes.
        models_dir: where installed weights live; None uses `default_models_dir()`.
        device: torch device for the model and the tensor work.
        trusted: allow full unpickling of the checkpoint (only for files you trust).

    Returns:
        The written files and whether the results are meaningful (real weights throughout).
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA device; use cpu")
    default_rgb, default_depth = bundled_sample()
    rgb_path, depth_path = Path(rgb_path or default_rgb), Path(depth_path or default_depth)
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    names = read_vocabulary(vocabulary)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    rgb, depth = read_rgb(rgb_path), read_depth(depth_path)
    net_in = prepare_inputs(rgb, depth, config=PreprocessConfig(), device=device)
    timings["read_and_preprocess_s"] = time.perf_counter() - t

    model, weights_file = resolve_model(variant, _opt_path(weights), models_dir, trusted=trusted)
    model = model.to(device)
    t = time.perf_counter()
    with torch.no_grad():
        embedding = model(net_in.rgb, net_in.depth)
    timings["forward_s"] = time.perf_counter() - t

    if linear_probing is not None:
        prototypes = load_linear_probing_weights(linear_probing)
        if prototypes.shape[0] != len(names):
            raise InputError(
                f"linear-probing head {linear_probing} has {prototypes.shape[0]} classes but the "
                f"vocabulary has {len(names)} names; pass the dataset's class list as --vocabulary"
            )
        classes_source, classes_real, normalize = str(linear_probing), True, False
    else:
        prototypes, classes_source, classes_real = _text_prototypes(
            names, _opt_path(text_model), models_dir
        )
        normalize = True

    t = time.perf_counter()
    with torch.no_grad():
        scores = class_scores(embedding, prototypes, normalize_prototypes=normalize)
        seg = segment(scores, net_in.original_size)
    labels = seg.labels[0].cpu().numpy()
    timings["postprocess_s"] = time.perf_counter() - t

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colored = label_colors(labels, len(names))
    images = {
        "embedding_pca.png": pca_colors(embedding[0].cpu()),
        "segmentation.png": colored,
        "segmentation_overlay.png": blend(rgb, colored, alpha=0.5),
        "segmentation_labels.png": labels.astype("uint16"),
    }
    for name, image in images.items():
        write_png(out / name, image)

    meaningful = weights_file is not None and classes_real
    counts = torch.bincount(seg.labels[0].flatten().cpu(), minlength=len(names))
    fractions = {
        n: round(float(c) / labels.size, 4) for n, c in zip(names, counts, strict=True) if c > 0
    }
    summary = {
        "meaningful": meaningful,
        "note": None if meaningful else "generated or random weights: results carry no meaning",
        "rgb": str(rgb_path),
        "depth": str(depth_path),
        "variant": variant,
        "weights": weights_file or f"generated (seed {PARITY_SEED})",
        "classes_from": classes_source,
        "vocabulary": names,
        "embedding_shape": list(embedding.shape[1:]),
        "class_fractions": dict(sorted(fractions.items(), key=lambda kv: -kv[1])),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    files = tuple(out / n for n in [*images, "summary.json"])
    return SampleResult(output_dir=out, files=files, meaningful=meaningful, summary=summary)


def _opt_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)
