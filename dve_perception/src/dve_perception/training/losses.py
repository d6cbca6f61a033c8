"""The student's main loss: 1 - cosine similarity to the teacher target on valid pixels.

Official recipe (dveformer-spec.md §7): `torch.nn.CosineEmbeddingLoss` with target +1, i.e.
``1 - cos(pred, target)`` per pixel, summed over valid pixels and divided by their count. A pixel
is valid when the caller's mask says so *and* its target is not the zero vector (void pixels and
pixels outside every segment carry zero targets). The cosine is computed exactly as torch does
(``x.y / sqrt((|x|^2 + 1e-12) (|y|^2 + 1e-12))``) so results match the official loss bit for bit
up to summation order.

Reduced-resolution training (the 1/4 variant) compares the prediction with a *downscaled* target.
Targets are piecewise constant (one vector per segment), so the natural downscaling is to pick the
segment under each output pixel's centre: `downscale_target` does nearest sampling at pixel centres,
which is also what downscaling the segment-id image and then looking up the vectors gives. Area
averaging would blend vectors across segment borders into targets no segment has.
"""

from __future__ import annotations

import torch

from dve_perception.errors import InputError

__all__ = ["COSINE_EPS", "cosine_embedding_loss", "downscale_target", "valid_target_mask"]

#: torch's CosineEmbeddingLoss adds this to both squared norms (EPSILON in its C++ source).
COSINE_EPS = 1e-12


def downscale_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour downscaling that samples each output pixel's centre.

    Output pixel i takes source row ``floor((i + 0.5) * H / h)`` (torch's "nearest-exact"),
    so a factor-4 reduction samples rows 2, 6, 10, ... rather than the top-left rows 0, 4, 8.

    Args:
        target: (B, D, H, W) target vectors, or (B, H, W) segment ids / validity masks of any
            dtype (integer and bool are kept exactly: nothing is interpolated).
        size: output (h, w), each at most the input size.

    Returns:
        The target at (B, D, h, w) or (B, h, w), same dtype and device.

    Raises:
        InputError: for a tensor that is not 3-D or 4-D, or a size larger than the input.
    """
    if target.ndim not in (3, 4):
        raise InputError(
            f"target must be (B, D, H, W) or (B, H, W), got shape {tuple(target.shape)}"
        )
    big_h, big_w = target.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if not (0 < h <= big_h and 0 < w <= big_w):
        raise InputError(f"cannot downscale a {big_h}x{big_w} target to {h}x{w}; expected 0 < size")
    rows = _centre_indices(big_h, h, target.device)
    cols = _centre_indices(big_w, w, target.device)
    return target[..., rows, :][..., cols]


def _centre_indices(big: int, small: int, device: torch.device) -> torch.Tensor:
    # Integer arithmetic: floor((i + 0.5) * big / small) == ((2i + 1) * big) // (2 * small),
    # exact for any sizes (float scales can round 2.9999 down to the wrong pixel).
    i = torch.arange(small, device=device)
    return ((2 * i + 1) * big) // (2 * small)


def valid_target_mask(target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) bool: pixels whose target is non-zero and, if given, that `valid` marks."""
    mask = (target != 0).any(dim=1)
    if valid is not None:
        mask = mask & valid.to(torch.bool)
    return mask


def cosine_embedding_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``1 - cos(pred, target)`` over valid pixels (official DVEFormer loss).

    Args:
        pred: (B, D, h, w) raw student embedding (not normalised).
        target: (B, D, H, W) teacher target; zero vectors mark invalid pixels. When (H, W) is
            larger than (h, w) it is downscaled with `downscale_target` first (reduced-res
            training); smaller targets are rejected.
        valid: optional (B, H, W) mask at the target's size; False excludes a pixel.

    Returns:
        0-dim tensor. With no valid pixel it is 0 and still connected to `pred`'s graph, so a
        batch of void images neither produces NaN nor breaks `backward()`.

    Raises:
        InputError: for mismatched batch/channel/spatial shapes.
    """
    _check_shapes(pred, target, valid)
    size = tuple(pred.shape[-2:])
    if tuple(target.shape[-2:]) != size:
        target = downscale_target(target, size)
        if valid is not None:
            valid = downscale_target(valid, size)
    mask = valid_target_mask(target, valid)
    x = pred.float()
    y = target.to(x.dtype)
    dot = (x * y).sum(dim=1)
    denom = torch.sqrt(((x * x).sum(dim=1) + COSINE_EPS) * ((y * y).sum(dim=1) + COSINE_EPS))
    per_pixel = 1.0 - dot / denom
    count = mask.sum()
    # Multiplying by the mask (not indexing) keeps a zero-gradient path to pred when count is 0.
    total = (per_pixel * mask).sum()
    return total / count.clamp_min(1)


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> None:
    if pred.ndim != 4 or target.ndim != 4:
        raise InputError(
            f"pred and target must be (B, D, H, W); got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if pred.shape[:2] != target.shape[:2]:
        raise InputError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in batch or "
            "embedding size"
        )
    if any(p > t for p, t in zip(pred.shape[-2:], target.shape[-2:], strict=True)):
        raise InputError(
            f"target {tuple(target.shape[-2:])} is smaller than pred {tuple(pred.shape[-2:])}; "
            "expected a target at the prediction's size or larger (it is downscaled, never "
            "upscaled)"
        )
    if valid is not None and (
        valid.ndim != 3 or valid.shape[0] != target.shape[0] or valid.shape[1:] != target.shape[2:]
    ):
        raise InputError(
            f"valid must be (B, H, W) = {(target.shape[0], *target.shape[2:])} like the target, "
            f"got {tuple(valid.shape)}"
        )
