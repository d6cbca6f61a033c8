"""Load Alpha-CLIP vision-tower weights from a local file, strictly and without running pickles.

Accepted layouts (all read with `torch.load(weights_only=True)` unless `trusted`):

- the published Alpha-CLIP visual checkpoint (e.g. `clip_l14_336_grit_20m_4xe.pth`): a bare
  state dict of the vision tower only, keys `conv1.weight`, `conv1_alpha.weight`,
  `transformer.resblocks.N.attn.in_proj.weight`, ... — the file `alpha_clip.load(...,
  alpha_vision_ckpt_pth=...)` loads strictly into `model.visual`;
- a full CLIP + alpha state dict (`visual.` prefix, text tower alongside, e.g. the
  `state_dict()` of a model `alpha_clip.load` returned); the text tower is ignored and OpenAI's
  `attn.in_proj_weight`/`attn.in_proj_bias` names are mapped to `attn.in_proj.weight`/`.bias`;
- either of the above under a `"state_dict"` key, or with DDP's `module.` prefix.

A plain OpenAI CLIP state dict has no `conv1_alpha` and is refused: that would be CLIP, not the
Alpha-CLIP teacher. OpenAI's TorchScript `.pt` archives are refused with a hint.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dve_perception.errors import CheckpointError
from dve_perception.model.checkpoint import read_checkpoint_file, state_dict_differences
from dve_perception.training.alpha_clip import (
    ALPHA_CLIP_L14_336,
    AlphaCLIPVisionConfig,
    AlphaCLIPVisionTransformer,
)

__all__ = [
    "describe_architecture",
    "extract_visual_state_dict",
    "infer_vision_config",
    "load_alpha_clip",
    "load_alpha_clip_state_dict",
]

# (width, patch, image size) → OpenAI's name for the ViT, to say what a foreign file is.
_KNOWN_VITS = {
    (768, 32, 224): "ViT-B/32",
    (768, 16, 224): "ViT-B/16",
    (1024, 14, 224): "ViT-L/14",
    (1024, 14, 336): "ViT-L/14@336px",
}


def extract_visual_state_dict(obj: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Return the vision tower's tensors under this package's key names.

    Args:
        obj: what the file held (see the module docstring for the layouts).
        source: the file name, for messages.

    Returns:
        The vision tower's state dict (unchecked against any config).

    Raises:
        CheckpointError: no tensors, a DVEFormer file, or a CLIP file without the alpha conv.
    """
    state: Any = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source}: 'state_dict' is not a non-empty mapping of tensors")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("encoder.", "decoders.", "fused_encoders.")) for k in state):
        raise CheckpointError(
            f"{source} looks like a DVEFormer checkpoint (encoder./decoders. keys), not an "
            "Alpha-CLIP vision tower; expected e.g. clip_l14_336_grit_20m_4xe.pth"
        )
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    renamed = {}
    for key, value in state.items():
        key = key.replace("attn.in_proj_weight", "attn.in_proj.weight")
        renamed[key.replace("attn.in_proj_bias", "attn.in_proj.bias")] = value
    if "conv1.weight" in renamed and "conv1_alpha.weight" not in renamed:
        raise CheckpointError(
            f"{source} is a CLIP vision tower without 'conv1_alpha.weight' (plain CLIP, not "
            "Alpha-CLIP); use the Alpha-CLIP visual checkpoint (e.g. clip_l14_336_grit_20m_4xe.pth)"
        )
    return renamed


def infer_vision_config(state: Mapping[str, torch.Tensor]) -> AlphaCLIPVisionConfig | None:
    """Read a ViT tower's shape from its tensors; None if it is not a CLIP-style ViT."""
    try:
        conv = state["conv1.weight"]
        positions = state["positional_embedding"].shape[0]
        output_dim = state["proj"].shape[1]
    except (KeyError, IndexError):
        return None
    if conv.ndim != 4:
        return None
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((positions - 1) ** 0.5)
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    try:
        return AlphaCLIPVisionConfig(
            image_size=grid * patch,
            patch_size=patch,
            width=width,
            layers=layers,
            heads=max(width // 64, 1),  # CLIP's rule; heads are not visible in the tensors
            output_dim=output_dim,
        )
    except Exception:  # noqa: BLE001 - inconsistent shapes simply mean "not recognisable"
        return None


def describe_architecture(state: Mapping[str, torch.Tensor]) -> str:
    """Say in words what vision tower a state dict holds, for error messages."""
    if any(k.startswith("layer1.") or k.startswith("attnpool.") for k in state):
        return "a CLIP ResNet (ModifiedResNet) vision tower"
    config = infer_vision_config(state)
    if config is None:
        return "not a CLIP-style ViT (no conv1/positional_embedding/proj)"
    name = _KNOWN_VITS.get((config.width, config.patch_size, config.image_size), "a ViT")
    return (
        f"{name} (width {config.width}, patch {config.patch_size}, {config.image_size} px, "
        f"{config.layers} layers, output {config.output_dim})"
    )


def load_alpha_clip_state_dict(
    model: AlphaCLIPVisionTransformer,
    state: Mapping[str, torch.Tensor],
    source: str = "state_dict",
) -> None:
    """Load strictly; on any mismatch raise a `CheckpointError` listing the differences.

    Raises:
        CheckpointError: missing or unexpected keys or shape mismatches; the message also says
            which architecture the file looks like.
    """
    expected = model.state_dict()
    differences = state_dict_differences(expected, state)
    if differences:
        parts = [
            f"{source} does not fit the Alpha-CLIP vision tower {describe_architecture(expected)}",
            f"the file looks like {describe_architecture(state)}",
        ]
        raise CheckpointError("; ".join([*parts, *differences]))
    model.load_state_dict(state, strict=True)


def load_alpha_clip(
    path: str | Path,
    config: AlphaCLIPVisionConfig = ALPHA_CLIP_L14_336,
    *,
    trusted: bool = False,
) -> AlphaCLIPVisionTransformer:
    """Build the Alpha-CLIP vision tower and load a local checkpoint into it strictly.

    Args:
        path: the Alpha-CLIP visual checkpoint (or a full CLIP + alpha state dict).
        config: the expected architecture; ViT-L/14@336 for the DVEFormer teacher.
        trusted: read with full unpickling (see `model.checkpoint.read_checkpoint_file`).

    Returns:
        The tower in eval mode, float32, on the CPU.

    Raises:
        CheckpointError: unreadable file, or weights of another architecture.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path) and _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (like OpenAI's CLIP .pt files), not a state dict; "
            "expected the Alpha-CLIP visual checkpoint (e.g. clip_l14_336_grit_20m_4xe.pth)"
        )
    state = extract_visual_state_dict(read_checkpoint_file(path, trusted=trusted), str(path))
    model = AlphaCLIPVisionTransformer(config)
    load_alpha_clip_state_dict(model, {k: v.float() for k, v in state.items()}, str(path))
    return model.float().eval()


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())
