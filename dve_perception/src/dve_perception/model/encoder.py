"""The RGB-D SwinV2 encoder: a merged patch embedder and four Swin stages.

Module names reproduce the official checkpoint (`encoder.backbone.*`, dveformer-spec.md §3.1):
the stages are slices of torchvision's `features` Sequential, which keep their original indices,
hence `layer_2.2` (patch merging) and `layer_2.3.{0,1}` (blocks), and `layer_4.0.6`, `layer_4.0.7`,
`layer_4.1` (the final LayerNorm).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dve_perception.model.swin_v2 import PatchMergingV2, SwinTransformerBlockV2

__all__ = ["MergedPatchEmbedder", "RGBDSwinEncoder", "SwinBackbone"]


class _ToChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C); parameter-free, it only keeps the official indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class _ToChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class MergedPatchEmbedder(nn.Module):
    """Embed RGB and depth separately with 4x4/stride-4 convolutions and concatenate them.

    Each modality has its own convolution and LayerNorm (`rgb_layers.{0,2}`, `depth_layers.{0,2}`);
    RGB and depth are fused only by concatenating [rgb, depth] along channels.
    """

    def __init__(self, rgb_dim: int, depth_dim: int, patch: int = 4) -> None:
        super().__init__()
        self.rgb_layers = nn.Sequential(
            nn.Conv2d(3, rgb_dim, kernel_size=patch, stride=patch),
            _ToChannelsLast(),
            nn.LayerNorm(rgb_dim, eps=1e-5),
        )
        self.depth_layers = nn.Sequential(
            nn.Conv2d(1, depth_dim, kernel_size=patch, stride=patch),
            _ToChannelsLast(),
            nn.LayerNorm(depth_dim, eps=1e-5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) rgb+depth -> (B, H/4, W/4, rgb_dim + depth_dim) channels-last."""
        return torch.cat([self.rgb_layers(x[:, :3]), self.depth_layers(x[:, 3:])], dim=-1)


def _blocks(dim: int, depth: int, heads: int, window: int) -> nn.Sequential:
    """One Swin stage: blocks alternate unshifted and shifted by half a window."""
    return nn.Sequential(
        *(
            SwinTransformerBlockV2(dim, heads, window, 0 if i % 2 == 0 else window // 2)
            for i in range(depth)
        )
    )


class SwinBackbone(nn.Module):
    """Patch embedder plus four SwinV2 stages, returning every stage's output.

    Args:
        rgb_dim: RGB patch-embedding channels (96 in DVEFormer).
        depth_dim: depth patch-embedding channels (32).
        depths: blocks per stage (2, 2, 6, 2).
        num_heads: attention heads per stage (4, 8, 16, 32).
        window: attention window in tokens (8).
    """

    def __init__(
        self,
        rgb_dim: int,
        depth_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window: int,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"need 4 stages, got depths={depths} num_heads={num_heads}")
        dims = [(rgb_dim + depth_dim) * 2**i for i in range(4)]
        self.patch_embedder = MergedPatchEmbedder(rgb_dim, depth_dim)
        self.layer_1 = _blocks(dims[0], depths[0], num_heads[0], window)
        # Indices 2..7 are those of torchvision's `features`; the checkpoint keys depend on them.
        self.layer_2 = nn.Sequential(
            OrderedDict(
                [
                    ("2", PatchMergingV2(dims[0])),
                    ("3", _blocks(dims[1], depths[1], num_heads[1], window)),
                ]
            )
        )
        self.layer_3 = nn.Sequential(
            OrderedDict(
                [
                    ("4", PatchMergingV2(dims[1])),
                    ("5", _blocks(dims[2], depths[2], num_heads[2], window)),
                ]
            )
        )
        stage_4 = nn.Sequential(
            OrderedDict(
                [
                    ("6", PatchMergingV2(dims[2])),
                    ("7", _blocks(dims[3], depths[3], num_heads[3], window)),
                ]
            )
        )
        self.layer_4 = nn.Sequential(stage_4, nn.LayerNorm(dims[3], eps=1e-5), _ToChannelsFirst())
        self.stage_channels = tuple(dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode (B, 4, H, W) rgb+depth.

        Returns:
            [s4, s8, s16, s32]: s4..s16 are raw stage outputs (B, H/k, W/k, C_k) channels-last;
            s32 is (B, C_32, H/32, W/32) channels-first after the final LayerNorm.
        """
        s4 = self.layer_1(self.patch_embedder(x))
        s8 = self.layer_2(s4)
        s16 = self.layer_3(s8)
        return [s4, s8, s16, self.layer_4(s16)]


class RGBDSwinEncoder(nn.Module):
    """Holds the backbone under `backbone`, as the official `encoder` module does."""

    def __init__(self, backbone: SwinBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> list[torch.Tensor]:
        """Concatenate rgb (B,3,H,W) and depth (B,1,H,W) and return the four stage outputs."""
        return self.backbone(torch.cat([rgb, depth], dim=1))
