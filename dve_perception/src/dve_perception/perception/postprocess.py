"""From DVEFormer's raw embeddings to cosine scores and per-pixel class labels.

The network output is not normalised; every consumer L2-normalises it over channels first
(dveformer-spec.md §6). Scores are plain cosine similarities (no temperature, no CLIP logit scale),
or a bias-free 1x1 linear-probing head applied to the normalised embedding. When the output
resolution differs from the image, the *scores* are resized bilinearly, never the embeddings, as
the official code does.
"""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dve_perception.errors import InputError

__all__ = [
    "Segmentation",
    "class_scores",
    "downsample_unit_embedding",
    "normalize_embedding",
    "segment",
]

#: Norms below this count as zero, so an all-zero vector stays zero instead of becoming NaN.
_NORM_EPS = 1e-12


class Segmentation(NamedTuple):
    """Per-pixel argmax over class scores.

    Attributes:
        labels: (B, H, W) int64 class index (row of the prototype matrix).
        scores: (B, H, W) score of that class (cosine similarity for text prototypes).
    """

    labels: torch.Tensor
    scores: torch.Tensor


def normalize_embedding(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """L2-normalise along one dimension.

    Args:
        x: floating-point tensor, e.g. (B, 768, h, w) raw embeddings or (K, 768) prototypes.
        dim: the channel dimension.

    Returns:
        Tensor of the same shape with unit-length vectors along `dim`; zero vectors stay zero.

    Raises:
        InputError: `x` is not a floating-point tensor or has no dimension `dim`.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"expected a floating-point tensor, got {_describe(x)}")
    if not -x.ndim <= dim < x.ndim:
        raise InputError(f"cannot normalise over dim {dim} of a tensor of shape {tuple(x.shape)}")
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(_NORM_EPS)


def class_scores(
    embedding: torch.Tensor, prototypes: torch.Tensor, *, normalize_prototypes: bool = True
) -> torch.Tensor:
    """Score every pixel against every class.

    Args:
        embedding: (B, C, h, w) raw or normalised embeddings; they are L2-normalised here.
        prototypes: (K, C) or (K, C, 1, 1) class vectors (text or visual-mean prototypes), or
            the weight of a linear-probing head. Moved to the embedding's device and dtype.
        normalize_prototypes: True L2-normalises the prototypes, giving cosine similarities in
            [-1, 1]. False uses them as given: a bias-free 1x1 linear-probing head.

    Returns:
        (B, K, h, w) scores.

    Raises:
        InputError: wrong shapes, dtypes, or a channel count that differs between the two.
    """
    _check_4d("embedding", embedding)
    weight = _check_prototypes(prototypes, embedding.shape[1])
    weight = weight.to(device=embedding.device, dtype=embedding.dtype)
    if normalize_prototypes:
        weight = normalize_embedding(weight, dim=1)
    # A 1x1 convolution is exactly the official scoring (F.conv2d with (K, C, 1, 1) weights).
    return F.conv2d(normalize_embedding(embedding, dim=1), weight[:, :, None, None])


def segment(scores: torch.Tensor, output_size: tuple[int, int]) -> Segmentation:
    """Resize class scores to the image size and take the best class per pixel.

    Args:
        scores: (B, K, h, w) scores from `class_scores`.
        output_size: (H, W) of the original camera image.

    Returns:
        Labels and their scores, each (B, H, W).

    Raises:
        InputError: `scores` is not (B, K, h, w) floating point with K >= 1, or `output_size`
            is not two positive integers.
    """
    _check_4d("scores", scores)
    size = _check_size(output_size, "output_size")
    if tuple(scores.shape[-2:]) != size:
        # Resizing scores, not embeddings, is what the official code does (spec §6); it is also
        # K channels instead of 768, and bilinear mixing of unit vectors would shrink their norm.
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    best, labels = scores.max(dim=1)
    return Segmentation(labels=labels, scores=best)


def downsample_unit_embedding(
    embedding: torch.Tensor, size: tuple[int, int], *, allow_uneven: bool = False
) -> torch.Tensor:
    """Average unit embeddings over equal areas and re-normalise them (zero vectors stay zero).

    The one downsampler of published embeddings: `messages.embedding` uses it for EmbeddingFrame
    messages and the exported graph's `embedding_publish` output (`backends.fused_outputs`) too,
    so both give the same vectors. When (h, w) is a multiple of `size` the areas are equal and
    disjoint and the mean is `avg_pool2d` with kernel = stride, a form ONNX and TensorRT run
    as is; adaptive pooling, whose windows overlap otherwise, is used only with `allow_uneven`.

    Args:
        embedding: (B, D, h, w) floating-point embeddings, usually unit vectors.
        size: (height, width) of the output, at most (h, w).
        allow_uneven: accept sizes that do not divide (h, w), averaging over adaptive pooling
            windows [floor(i * h / height), ceil((i + 1) * h / height)).

    Returns:
        (B, D, height, width) float32 unit vectors; an area whose mean is zero gives zeros.

    Raises:
        InputError: `embedding` is not (B, D, h, w) floating point, `size` is not two positive
            integers, is larger than (h, w), or (without `allow_uneven`) does not divide it.
    """
    _check_4d("embedding", embedding)
    out_h, out_w = _check_size(size, "size")
    height, width = int(embedding.shape[-2]), int(embedding.shape[-1])
    if out_h > height or out_w > width:
        raise InputError(
            f"cannot downsample a {height}x{width} embedding to {out_h}x{out_w}: the size must "
            "be at most the embedding's"
        )
    values = embedding.to(torch.float32)
    if height % out_h == 0 and width % out_w == 0:
        kernel = (height // out_h, width // out_w)
        pooled = F.avg_pool2d(values, kernel_size=kernel, stride=kernel)
    elif allow_uneven:
        pooled = F.adaptive_avg_pool2d(values, (out_h, out_w))
    else:
        hint = f"{_largest_divisor(height, out_h)}x{_largest_divisor(width, out_w)}"
        raise InputError(
            f"a {height}x{width} embedding cannot be averaged into {out_h}x{out_w} equal areas; "
            f"use a size that divides it, e.g. {hint}"
        )
    norm = torch.linalg.vector_norm(pooled, dim=1, keepdim=True)
    # The mean of unit vectors is shorter than 1: re-normalise; all-zero areas stay zero.
    return torch.where(norm > 0, pooled / norm.clamp_min(1e-30), torch.zeros_like(pooled))


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def _check_4d(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise InputError(
            f"{name} must be a floating-point tensor of shape (B, C, h, w), got {_describe(x)}"
            + ("; add a batch dimension with x[None]" if getattr(x, "ndim", 0) == 3 else "")
        )
    if 0 in x.shape:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")


def _check_prototypes(prototypes: torch.Tensor, channels: int) -> torch.Tensor:
    """Validate prototypes against the embedding's channel count and return them as (K, C)."""
    if not isinstance(prototypes, torch.Tensor) or not prototypes.is_floating_point():
        raise InputError(f"prototypes must be a floating-point tensor, got {_describe(prototypes)}")
    weight = prototypes
    if weight.ndim == 4 and tuple(weight.shape[2:]) == (1, 1):
        weight = weight[:, :, 0, 0]  # linear-probing checkpoints store Conv2d (K, C, 1, 1)
    if weight.ndim != 2 or weight.shape[0] == 0:
        raise InputError(
            f"prototypes must have shape (K, {channels}) or (K, {channels}, 1, 1) with K >= 1, "
            f"got {tuple(prototypes.shape)}"
        )
    if weight.shape[1] != channels:
        raise InputError(
            f"prototypes have dimension {weight.shape[1]} but the embedding has {channels} "
            "channels; DVEFormer embeds into CLIP ViT-L/14@336's 768-d space, so encode text "
            "with that model"
        )
    return weight


def _check_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list, torch.Size))
        or len(size) != 2
        or not all(isinstance(s, Integral) and not isinstance(s, bool) for s in size)
        or min(size) <= 0
    ):
        raise InputError(f"{name} must be two positive integers (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
