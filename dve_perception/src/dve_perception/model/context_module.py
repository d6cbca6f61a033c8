"""Pyramid pooling context module (PSPNet style, bins 1 and 5), as `context_module.*`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNormAct", "PyramidPoolingModule"]


class ConvNormAct(nn.Module):
    """Conv2d, optional BatchNorm and ReLU, named `conv`/`norm` like the official ConvNormAct.

    Without a norm the convolution carries a bias (the official `normalization=None` case).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, norm: bool = True, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not norm)
        self.norm = nn.BatchNorm2d(out_ch, eps=1e-5) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H, W)."""
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class PyramidPoolingModule(nn.Module):
    """Pool to each bin size, project, upsample back, concatenate with the input and fuse.

    Args:
        channels: input and output channels (1024 in DVEFormer).
        bins: adaptive pooling output sizes (1, 5).
    """

    def __init__(self, channels: int, bins: Sequence[int] = (1, 5)) -> None:
        super().__init__()
        branch = channels // len(bins)
        # Index 0 of each branch is the (parameter-free) pooling layer; the keys are `features.i.1`.
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvNormAct(channels, branch)) for b in bins
        )
        self.final_conv = ConvNormAct(channels + branch * len(bins), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.features
        ]
        return self.final_conv(torch.cat([x, *pooled], dim=1))
