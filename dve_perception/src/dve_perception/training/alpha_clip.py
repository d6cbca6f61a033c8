"""The Alpha-CLIP vision tower (ViT with an alpha-channel patch convolution) and its preprocessing.

Alpha-CLIP (Sun et al., 2023) is OpenAI CLIP's ViT image encoder plus one extra bias-free patch
convolution, `conv1_alpha`, that embeds a one-channel region mask ("alpha") and is added to the
RGB patch embedding before the class token and positional embedding. Everything else is the
CLIP ViT. DVEFormer's teacher is the ViT-L/14@336 tower trained on GRIT-20M
(dveformer-spec.md §7).

Parameter names follow the published Alpha-CLIP visual checkpoints, which `alpha_clip.load`
loads strictly into `model.visual`: `conv1`, `conv1_alpha`, `class_embedding`,
`positional_embedding`, `ln_pre`, `transformer.resblocks.N.{attn.in_proj, attn.out_proj, ln_1,
mlp.c_fc, mlp.c_proj, ln_2}`, `ln_post`, `proj`. Note `attn.in_proj.weight`/`.bias`: Alpha-CLIP's
attention keeps the packed q/k/v projection as an `nn.Linear`, whereas OpenAI's CLIP files name
the same tensors `attn.in_proj_weight`/`attn.in_proj_bias`; `alpha_clip_checkpoint` renames those.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dve_perception.errors import ConfigError, InputError

__all__ = [
    "ALPHA_CLIP_L14_336",
    "CLIP_MEAN",
    "CLIP_STD",
    "TINY_ALPHA_CLIP_CONFIG",
    "AlphaCLIPVisionConfig",
    "AlphaCLIPVisionTransformer",
    "preprocess_alpha",
    "preprocess_rgb",
]

# OpenAI CLIP's normalisation constants for images scaled to [0, 1]. The DVEFormer tooling works
# on 0..255 images and multiplies both by 255, which is the same affine map.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Alpha-CLIP's mask normalisation: torchvision Normalize(0.5, 0.26) on a {0, 1} mask.
ALPHA_MEAN = 0.5
ALPHA_STD = 0.26


@dataclass(frozen=True)
class AlphaCLIPVisionConfig:
    """Shape of an Alpha-CLIP ViT vision tower.

    Attributes:
        image_size: input side in pixels (square).
        patch_size: patch side in pixels; `image_size` must be a multiple.
        width: token width.
        layers: number of transformer blocks.
        heads: attention heads (CLIP uses width // 64).
        output_dim: embedding size after the final projection.
    """

    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    output_dim: int = 768

    def __post_init__(self) -> None:
        values = (self.image_size, self.patch_size, self.width, self.layers, self.heads)
        if min(values + (self.output_dim,)) < 1:
            raise ConfigError(f"all sizes must be positive, got {self}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


# The DVEFormer teacher: Alpha-CLIP ViT-L/14@336px (`clip_l14_336_grit_20m_4xe.pth`).
ALPHA_CLIP_L14_336 = AlphaCLIPVisionConfig()
# Same architecture in miniature, for fast tests with random weights.
TINY_ALPHA_CLIP_CONFIG = AlphaCLIPVisionConfig(
    image_size=28, patch_size=14, width=32, layers=2, heads=2, output_dim=24
)


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, as CLIP does for fp16 weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class _QuickGELU(nn.Module):
    """CLIP's GELU approximation x·σ(1.702x); the weights were trained with it, not exact GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Attention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection named `in_proj`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as in CLIP
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = _Attention(width, heads)
        self.ln_1 = _LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", _QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = _LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_ResidualBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class AlphaCLIPVisionTransformer(nn.Module):
    """Alpha-CLIP's ViT image encoder: `forward(image, alpha)` → (N, output_dim) embeddings.

    Freshly built weights are random (CLIP's init scales) with `conv1_alpha` zero, which is how
    Alpha-CLIP starts from a CLIP model: a zero alpha convolution makes the tower exactly CLIP,
    blind to the mask. Load real weights with `alpha_clip_checkpoint.load_alpha_clip`.

    Args:
        config: the tower's shape; `ALPHA_CLIP_L14_336` for the DVEFormer teacher.
    """

    def __init__(self, config: AlphaCLIPVisionConfig = ALPHA_CLIP_L14_336) -> None:
        super().__init__()
        self.config = config
        width, patch = config.width, config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.conv1_alpha = nn.Conv2d(1, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid**2 + 1, width))
        self.ln_pre = _LayerNorm(width)
        self.transformer = _Transformer(width, config.layers, config.heads)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.output_dim))
        with torch.no_grad():
            self.conv1_alpha.weight.zero_()

    def forward(self, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Embed preprocessed images with their region masks.

        Args:
            image: (N, 3, S, S) from `preprocess_rgb`, S = config.image_size.
            alpha: (N, 1, S, S) from `preprocess_alpha`.

        Returns:
            (N, output_dim) unnormalised embeddings in the weights' dtype.

        Raises:
            InputError: wrong shapes.
        """
        size = self.config.image_size
        if image.ndim != 4 or tuple(image.shape[1:]) != (3, size, size):
            raise InputError(
                f"image has shape {tuple(image.shape)}, expected (N, 3, {size}, {size})"
            )
        if tuple(alpha.shape) != (image.shape[0], 1, size, size):
            raise InputError(
                f"alpha has shape {tuple(alpha.shape)}, expected ({image.shape[0]}, 1, {size}, "
                f"{size}) to match the image batch"
            )
        dtype = self.conv1.weight.dtype
        x = self.conv1(image.to(dtype)) + self.conv1_alpha(alpha.to(dtype))
        x = x.flatten(2).transpose(1, 2)  # (N, grid², width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


def preprocess_rgb(rgb: torch.Tensor, size: int = 336) -> torch.Tensor:
    """Resize RGB images to size×size and apply CLIP's normalisation (dveformer-spec.md §7).

    The resize is bicubic with antialiasing and ignores the aspect ratio (no centre crop, unlike
    CLIP's own transform), so every pixel of the image can be covered by a segment mask. The
    result is rounded and clamped to 0..255 as an 8-bit resize would, then normalised with the
    CLIP mean/std scaled by 255, i.e. (x/255 − mean)/std.

    Args:
        rgb: (3, H, W) or (N, 3, H, W) uint8 images (or floats in 0..255).
        size: output side.

    Returns:
        (N, 3, size, size) float32.

    Raises:
        InputError: wrong shape.
    """
    shape = tuple(rgb.shape)
    if rgb.ndim == 3:
        rgb = rgb.unsqueeze(0)
    if rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[0] == 0:
        raise InputError(f"rgb has shape {shape}, expected (3, H, W) or (N, 3, H, W)")
    x = F.interpolate(
        rgb.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    x = x.round().clamp(0.0, 255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0
    return (x - mean) / std


def preprocess_alpha(mask: torch.Tensor, size: int = 336) -> torch.Tensor:
    """Resize binary region masks to size×size (nearest) and normalise as (m − 0.5)/0.26.

    Args:
        mask: (H, W) or (N, H, W) boolean (or 0/1) masks; all-ones selects the whole image.
        size: output side.

    Returns:
        (N, 1, size, size) float32 with values (1−0.5)/0.26 inside and (0−0.5)/0.26 outside.

    Raises:
        InputError: wrong shape.
    """
    shape = tuple(mask.shape)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[0] == 0:
        raise InputError(f"mask has shape {shape}, expected (H, W) or (N, H, W)")
    m = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")
    return (m - ALPHA_MEAN) / ALPHA_STD
