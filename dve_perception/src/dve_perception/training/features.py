"""Forward hooks that collect intermediate features for the distillation terms.

- `StudentStageHook` records the DVEFormer encoder's four stage outputs (strides 4, 8, 16, 32)
  as channels-first maps (B, C_i, h_i, w_i) while the student runs its ordinary forward pass,
  so the trainer needs no second forward and the model class stays unchanged.
- `teacher_token_features` runs the Alpha-CLIP tower on a full-image (all-ones) alpha mask and
  returns the patch tokens (class token dropped) after four transformer blocks, as (B, N, C_t)
  with N = grid x grid. The depths are `teacher_layers(L)`: the outputs of blocks
  `max(1, k * L // 4)` (1-based) for k = 1..4, i.e. blocks 6, 12, 18 and 24 of ViT-L/14's 24
  (1/4, 1/2, 3/4 and all of the depth). A ViT has no pyramid, so evenly spaced depths stand in
  for the student's four stages; the tokens are the blocks' raw residual stream (no ln_post,
  no projection).
"""

from __future__ import annotations

import torch
from torch import nn

from dve_perception.errors import InputError
from dve_perception.training.alpha_clip import (
    AlphaCLIPVisionTransformer,
    preprocess_alpha,
    preprocess_rgb,
)

__all__ = ["StudentStageHook", "teacher_layers", "teacher_token_features"]


class StudentStageHook:
    """Collect the encoder's stage outputs of each forward pass of a DVEFormer.

    Args:
        model: a DVEFormer (anything with an `encoder` returning four stage outputs).

    Attributes:
        stages: the last forward's [s4, s8, s16, s32] as (B, C, h, w), or None before one.
    """

    def __init__(self, model: nn.Module) -> None:
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise InputError(
                f"{type(model).__name__} has no `encoder` module; expected a DVEFormer"
            )
        self.stages: list[torch.Tensor] | None = None
        self._handle = encoder.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: object, outputs: list[torch.Tensor]) -> None:
        # s4..s16 are channels-last (B, h, w, C), s32 channels-first (see SwinBackbone.forward).
        *early, last = outputs
        self.stages = [s.permute(0, 3, 1, 2) for s in early] + [last]

    def pop(self) -> list[torch.Tensor]:
        """Return and forget the stages of the last forward pass.

        Raises:
            InputError: no forward pass happened since the last `pop`.
        """
        if self.stages is None:
            raise InputError("no student forward pass was recorded; run the model first")
        stages, self.stages = self.stages, None
        return stages

    def remove(self) -> None:
        """Unregister the hook."""
        self._handle.remove()


def teacher_layers(num_layers: int) -> tuple[int, int, int, int]:
    """0-based indices of the blocks whose outputs stand for the four stages (1/4 .. 4/4 depth)."""
    if num_layers < 1:
        raise InputError(f"the teacher needs at least one block, got {num_layers}")
    return tuple(max(1, k * num_layers // 4) - 1 for k in range(1, 5))  # type: ignore[return-value]


@torch.no_grad()
def teacher_token_features(
    teacher: AlphaCLIPVisionTransformer, rgb_u8: torch.Tensor
) -> list[torch.Tensor]:
    """Patch tokens of the teacher at four depths for full images (all-ones alpha).

    Preprocessing is the targets' (dveformer-spec.md §7): bicubic antialiased resize to the
    tower's square input without keeping the aspect ratio, CLIP normalisation, alpha mask
    normalised as (1 - 0.5) / 0.26 everywhere.

    Args:
        teacher: the Alpha-CLIP tower (run as is: the caller keeps it in eval mode).
        rgb_u8: (B, 3, H, W) uint8 (or 0..255 float) images, the student's augmented crops.

    Returns:
        Four (B, grid * grid, width) float32 tensors, row-major over the patch grid.
    """
    size = teacher.config.image_size
    device = teacher.conv1.weight.device
    image = preprocess_rgb(rgb_u8.cpu(), size).to(device)
    alpha = preprocess_alpha(torch.ones(rgb_u8.shape[0], *rgb_u8.shape[-2:]), size).to(device)
    blocks = teacher.transformer.resblocks
    captured: dict[int, torch.Tensor] = {}
    handles = [
        blocks[i].register_forward_hook(
            lambda _m, _i, out, i=i: captured.__setitem__(i, out[:, 1:].float())
        )
        for i in sorted(set(teacher_layers(len(blocks))))
    ]
    try:
        teacher(image, alpha)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[i] for i in teacher_layers(len(blocks))]
