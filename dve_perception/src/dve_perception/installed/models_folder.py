"""Find the installed model files, or fall back loudly to generated ones.

Every command that runs the network or encodes text (`sample`, `replay`, `query`, `demo`) looks
for the published files in the models folder. Where they are missing it keeps the pipeline
running with generated weights or a random text tower of the real architecture, and logs a
warning saying that the results carry no meaning. Nothing is ever downloaded here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dve_perception.errors import ConfigError

if TYPE_CHECKING:
    from dve_perception.model import DVEFormer
    from dve_perception.text.encoder import CLIPTextEncoder

__all__ = [
    "MODELS_ENV_VAR",
    "TEXT_MODEL_FOLDER",
    "checkpoint_name",
    "default_models_dir",
    "resolve_model",
    "resolve_text_encoder",
]

_LOG = logging.getLogger(__name__)
MODELS_ENV_VAR = "DVE_PERCEPTION_MODELS"
TEXT_MODEL_FOLDER = "clip-vit-large-patch14-336"
_VARIANTS = ("fullres", "reducedres")


def default_models_dir() -> Path:
    """Return `$DVE_PERCEPTION_MODELS`, else `./models`."""
    return Path(os.environ.get(MODELS_ENV_VAR, "models"))


def checkpoint_name(variant: str) -> str:
    """Return the file name a published checkpoint is installed under."""
    if variant not in _VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {list(_VARIANTS)}")
    return f"dveformer_{variant}_mixed.pth"


def resolve_model(
    variant: str, weights: Path | None, models_dir: Path, *, trusted: bool = False
) -> tuple[DVEFormer, str | None]:
    """Load the checkpoint, or build generated weights when none is installed.

    Args:
        variant: "fullres" or "reducedres".
        weights: an explicit checkpoint (must exist); None looks in `models_dir`.
        models_dir: the models folder.
        trusted: allow full unpickling of the checkpoint (only for files you trust).

    Returns:
        The model and the file it came from (None: generated weights).
    """
    from dve_perception.model.checkpoint import load_checkpoint
    from dve_perception.model.generated_weights import build_generated

    if weights is None:
        candidate = models_dir / checkpoint_name(variant)
        weights = candidate if candidate.is_file() else None
    if weights is not None:
        return load_checkpoint(weights, variant, trusted=trusted), str(weights)
    _LOG.warning(
        "no DVEFormer weights found (looked for %s): using GENERATED weights, so embeddings, "
        "segmentations and query answers carry no meaning; install the published checkpoint "
        "(see models/README.md, or run `dve-perception weights`)",
        models_dir / checkpoint_name(variant),
    )
    return build_generated(variant), None


def resolve_text_encoder(
    text_model: Path | None, models_dir: Path
) -> tuple[CLIPTextEncoder, str, bool]:
    """Load the CLIP text tower, or a random one of the real architecture when none is installed.

    Args:
        text_model: an explicit Hugging Face CLIP folder (must exist); None looks in
            `models_dir` for `clip-vit-large-patch14-336`.
        models_dir: the models folder.

    Returns:
        (encoder, the folder it came from, whether it is the real model).
    """
    from dve_perception.text.encoder import (
        CLIPTextEncoder,
        default_cache_dir,
        write_random_text_model,
    )

    folder = text_model or models_dir / TEXT_MODEL_FOLDER
    if text_model is None and not folder.is_dir():
        # A random tower of the real architecture, written once and reused: the pipeline runs
        # end to end and the warning below (and in the encoder) says what that is worth.
        folder = default_cache_dir().parent / "random_clip_text_model_seed0"
        if not folder.is_dir():
            _LOG.warning("writing a random CLIP text tower to %s (once, ~500 MB)", folder)
            write_random_text_model(folder, seed=0)
        _LOG.warning(
            "no CLIP text model in %s: using a RANDOM text tower, so text segmentation and "
            "queries carry no meaning (see models/README.md)",
            models_dir / TEXT_MODEL_FOLDER,
        )
    encoder = CLIPTextEncoder.from_folder(folder)
    return encoder, str(folder), not encoder.is_random
