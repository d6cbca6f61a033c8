"""Read official DVEFormer checkpoint files safely and load them strictly.

Official files are `torch.save({"state_dict": ..., "epoch": int, "logs": dict})`
(dveformer-spec.md §4); linear-probing files hold `{"linear_probing_head_state_dict": {"weight":
(classes, 768, 1, 1)}, ...}`. Loading steps: read with `weights_only=True` (no code from the file
runs), take the state_dict, apply the official renames, then `load_state_dict(strict=True)`;
every failure is a `CheckpointError` that says what was expected.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dve_perception.errors import CheckpointError
from dve_perception.model.dveformer import VARIANTS, DVEFormer, DVEFormerConfig, build_dveformer

__all__ = [
    "detect_variant",
    "load_checkpoint",
    "load_linear_probing_weights",
    "load_state_dict_strict",
    "read_checkpoint_file",
    "rename_official_keys",
    "state_dict_differences",
]

_LOG = logging.getLogger(__name__)

_HEAD = "decoders.dense_visual_embedding_decoder._task_head."
_LP_KEY = "linear_probing_head_state_dict"
# How many key names an error message lists before summarising.
_MAX_LISTED_KEYS = 8


def read_checkpoint_file(path: str | Path, *, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a dict without executing code from it.

    Args:
        path: a `.pth`/`.pt` file written by `torch.save`.
        trusted: read with full unpickling. Only for files whose origin you trust: a malicious
            pickle runs arbitrary code. Needed only if the file holds Python objects beyond
            tensors, containers, numbers and strings.

    Returns:
        The saved object, which must be a dict.

    Raises:
        CheckpointError: missing, truncated or foreign file, or one that needs `trusted`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    # torch.save has written zip archives since torch 1.6; anything else is truncated or foreign.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (not a torch.save zip archive: "
            "truncated, or another format?)"
        )
    try:
        if trusted:
            _LOG.warning("reading %s with full unpickling (trusted=True)", path)
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            obj = _load_weights_only(path)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} contains Python objects that a weights-only load refuses "
            f"({_first_line(err)}). If you trust the file's origin, load it with trusted=True "
            "(CLI: --trust-checkpoint)."
        ) from err
    except Exception as err:  # noqa: BLE001 - any failure to parse a foreign file means the same
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated or another format?): "
            f"{_first_line(err)}"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _numpy_safe_globals() -> list[Any]:
    """The numpy reconstruction functions a weights-only load may call, under both names.

    Training logs may contain numpy scalars; rebuilding them only turns bytes into numbers, so
    allowing them keeps the load free of arbitrary code. A file pickled under numpy 1 names
    `numpy.core.multiarray.scalar`, one pickled under numpy 2 `numpy._core.multiarray.scalar`;
    both are allowed whichever numpy is installed.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 1.26 has no numpy._core
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _load_weights_only(path: Path) -> Any:
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def rename_official_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the official loader's renames: drop `_orig_mod.`, map `fused_encoders.` to `encoder.`.

    `_orig_mod.` appears inside keys because the mixed model was trained with each submodule
    compiled separately (e.g. `encoder._orig_mod.backbone...`).
    """
    renamed = {}
    for key, value in state_dict.items():
        new = key.replace("_orig_mod.", "")
        if new.startswith("fused_encoders."):
            new = "encoder." + new[len("fused_encoders.") :]
        renamed[new] = value
    return renamed


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Return "fullres" or "reducedres" from the task head's layout, or None if unrecognisable."""
    head = state_dict.get(_HEAD + "conv.weight")
    if not isinstance(head, torch.Tensor) or head.ndim != 4:
        return None
    if (_HEAD + "upsample_0.conv.weight") in state_dict:
        return "fullres"
    return "reducedres" if head.shape[-1] == 1 else None


def _extract_state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    if "state_dict" in obj:
        state = obj["state_dict"]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state_dict
    elif _LP_KEY in obj:
        raise CheckpointError(
            f"{path} is a linear-probing head file, not a model checkpoint; load it with "
            "load_linear_probing_weights"
        )
    else:
        raise CheckpointError(
            f"{path} has no 'state_dict' entry (top-level keys: {sorted(obj)[:_MAX_LISTED_KEYS]}); "
            "expected an official DVEFormer checkpoint"
        )
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    return rename_official_keys(state)


def _summarise(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f" (+{more} more)" if more > 0 else "")


def state_dict_differences(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> list[str]:
    """Describe how a file's state_dict differs from a model's, for a strict-load error.

    Returns:
        One phrase each for missing keys, unexpected keys and shape mismatches (at most
        `_MAX_LISTED_KEYS` named per phrase); empty when the state_dict fits.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    described = (
        (missing, "missing keys"),
        (unexpected, "unexpected keys"),
        (shapes, "shape mismatches"),
    )
    return [f"{len(items)} {what}: {_summarise(items)}" for items, what in described if items]


def load_state_dict_strict(
    model: DVEFormer, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict"
) -> None:
    """Load strictly; on any mismatch raise a `CheckpointError` listing the differences.

    The message names missing and unexpected keys, shape mismatches, and which published variant
    the weights look like, which is the usual cause (a full-res file for a reduced-res model).
    """
    expected = model.state_dict()
    differences = state_dict_differences(expected, state_dict)
    if differences:
        looks_like = detect_variant(state_dict)
        model_variant = _variant_name(model.config)
        parts = [f"{source} does not fit the DVEFormer model ({model_variant or 'custom config'})"]
        pde = _pde_channels(state_dict, expected)
        if pde is not None:
            # A student trained with the PDE depth stem is not a published variant: the head
            # may match one, but the depth input differs, so say that first.
            parts.append(
                f"the file has a {pde}-channel PDE depth stem (positional depth encoding); "
                f"build the model with training.depth_encoding.with_pde_depth_stem(model, {pde}) "
                "and feed metric depth"
            )
        elif looks_like and looks_like != model_variant:
            parts.append(
                f"the file looks like the {looks_like!r} variant; load it with variant="
                f"{looks_like!r} (CLI: --variant {looks_like})"
            )
        elif looks_like is None:
            parts.append("the file does not look like any published DVEFormer variant")
        raise CheckpointError("; ".join([*parts, *differences]))
    model.load_state_dict(state_dict, strict=True)


_DEPTH_STEM = "encoder.backbone.patch_embedder.depth_layers.0.weight"


def _pde_channels(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> int | None:
    """The file's PDE channel count when only its depth stem is wider than the model's."""
    file_stem, model_stem = state_dict.get(_DEPTH_STEM), expected.get(_DEPTH_STEM)
    if not isinstance(file_stem, torch.Tensor) or model_stem is None or file_stem.ndim != 4:
        return None
    if file_stem.shape[1] > 1 and file_stem.shape[1] != model_stem.shape[1]:
        return int(file_stem.shape[1])
    return None


def _variant_name(config: DVEFormerConfig) -> str | None:
    return next((name for name, cfg in VARIANTS.items() if cfg == config), None)


def load_checkpoint(
    path: str | Path,
    variant: str | DVEFormerConfig | None = None,
    *,
    trusted: bool = False,
) -> DVEFormer:
    """Build a DVEFormer and load an official checkpoint into it strictly.

    Args:
        path: the checkpoint file (e.g. `dveformer_reducedres_mixed.pth`).
        variant: "fullres", "reducedres", a config, or None to take the variant from the file.
        trusted: see `read_checkpoint_file`.

    Returns:
        The model in eval mode on the CPU.

    Raises:
        CheckpointError: unreadable file, or weights that do not fit the model.
    """
    path = Path(path)
    state = _extract_state_dict(read_checkpoint_file(path, trusted=trusted), path)
    if variant is None:
        variant = detect_variant(state)
        if variant is None:
            raise CheckpointError(
                f"{path}: cannot tell the DVEFormer variant from the task head "
                f"({_HEAD}conv.weight missing or unusual); pass the variant explicitly"
            )
    model = build_dveformer(variant)
    load_state_dict_strict(model, state, source=str(path))
    return model


def load_linear_probing_weights(path: str | Path, embedding_dim: int = 768) -> torch.Tensor:
    """Read a linear-probing head file and return its weight as (classes, embedding_dim).

    The head is a bias-free 1x1 convolution over L2-normalised embeddings; its class order is
    the dataset's label list without void.
    """
    path = Path(path)
    obj = read_checkpoint_file(path)
    head = obj.get(_LP_KEY)
    if not isinstance(head, Mapping) or not isinstance(head.get("weight"), torch.Tensor):
        raise CheckpointError(
            f"{path} has no '{_LP_KEY}' with a 'weight' tensor; expected an official "
            "linear-probing file"
        )
    weight = head["weight"]
    if weight.ndim == 4 and weight.shape[-2:] == (1, 1):
        weight = weight[:, :, 0, 0]
    if weight.ndim != 2 or weight.shape[1] != embedding_dim or weight.shape[0] == 0:
        raise CheckpointError(
            f"{path}: linear-probing weight has shape {tuple(head['weight'].shape)}, expected "
            f"(classes, {embedding_dim}, 1, 1)"
        )
    return weight.float()
