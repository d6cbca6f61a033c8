"""SegFormer-style MLP decoder and embedding head (`decoders.dense_visual_embedding_decoder.*`).

dveformer-spec.md §3.3: a 1x1 projection of the context output upsampled to 1/4, three skip
paths (deepest first) each LayerNorm-ed, projected and upsampled to 1/4, concatenation in the order
[main, s16, s8, s4], a 1x1 fuse conv with BatchNorm and ReLU, then the task head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dve_perception.model.context_module import ConvNormAct

__all__ = ["EmbeddingDecoder"]


def _upsample_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    # scale_factor (not size) and align_corners=False, as the official decoder.
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class _Branch(nn.Module):
    """A 1x1 projection with bias, kept under `embedding` for the official key names."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.embedding = ConvNormAct(in_ch, out_ch, kernel=1, norm=False, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)


class _SkipFusion(nn.Module):
    """LayerNorm a channels-last encoder skip and return it channels-first (the "select" fusion)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels, eps=1e-5)

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        return self.ln(skip).permute(0, 3, 1, 2)


class _LearnedUpsample(nn.Module):
    """Nearest x2, then a learned depthwise 3x3 convolution with bias (zero padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _TaskHead(nn.Module):
    """Project to the embedding; full-res: 3x3 conv then n learned x2 upsamplings, else 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, n_upsamplings: int) -> None:
        super().__init__()
        kernel = 3 if n_upsamplings else 1
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True)
        self.n_upsamplings = n_upsamplings
        for i in range(n_upsamplings):
            self.add_module(f"upsample_{i}", _LearnedUpsample(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for i in range(self.n_upsamplings):
            x = getattr(self, f"upsample_{i}")(x)
        return x


class EmbeddingDecoder(nn.Module):
    """MLP decoder from the context output and three encoder skips to a dense embedding.

    Args:
        context_channels: channels of the context-module output (1024).
        skip_channels: channels of the 1/16, 1/8 and 1/4 skips, deepest first (512, 256, 128).
        branch_channels: projected widths [main, s16, s8, s4] (256, 128, 64, 64).
        fuse_channels: width after fusion (512).
        embedding_dim: output embedding dimension (768).
        n_upsamplings: learned x2 upsamplings in the head (2: full-res, 0: reduced-res).
    """

    def __init__(
        self,
        context_channels: int,
        skip_channels: Sequence[int],
        branch_channels: Sequence[int],
        fuse_channels: int,
        embedding_dim: int,
        n_upsamplings: int,
    ) -> None:
        super().__init__()
        self.main_branch = _Branch(context_channels, branch_channels[0])
        self.skip_fusions = nn.ModuleList(_SkipFusion(c) for c in skip_channels)
        self.skip_branches = nn.ModuleList(
            _Branch(c, o) for c, o in zip(skip_channels, branch_channels[1:], strict=True)
        )
        self.fuse = ConvNormAct(sum(branch_channels), fuse_channels)
        self._task_head = _TaskHead(fuse_channels, embedding_dim, n_upsamplings)

    def forward(self, context: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode to (B, embedding_dim, H/4 * 2^n, W/4 * 2^n).

        Args:
            context: (B, C, H/32, W/32) context-module output.
            skips: channels-last skips at 1/16, 1/8, 1/4 (deepest first).
        """
        features = [_upsample_bilinear(self.main_branch(context), 8)]
        for i, (fusion, branch, skip) in enumerate(
            zip(self.skip_fusions, self.skip_branches, skips, strict=True)
        ):
            features.append(_upsample_bilinear(branch(fusion(skip)), 4 // 2**i))
        return self._task_head(self.fuse(torch.cat(features, dim=1)))
