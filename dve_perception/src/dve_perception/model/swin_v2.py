"""SwinV2 building blocks with torchvision's semantics and parameter names.

The published DVEFormer checkpoints were trained with torchvision's `SwinTransformerBlockV2` and
`PatchMergingV2`, so their state_dict uses torchvision's attribute names and its two persistent
attention buffers. torchvision cannot be installed next to the CPU build of torch, and timm's
SwinV2 uses another parameter layout, so these few pieces are written here. Every numerical
detail follows torchvision (dveformer-spec.md §3.1): cosine attention with a clamped logit scale,
a continuous position bias from a log-spaced coordinate table, the key bias zeroed at every
forward, bottom/right zero padding to whole windows without masking the padded tokens, the -100
shifted-window mask, and res-post-norm.

All tensors here are channels-last: (B, H, W, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchMergingV2", "SwinTransformerBlockV2", "shifted_window_attention"]

# The shifted-window mask value torchvision uses; with cosine attention logits are bounded by
# 100 (the logit-scale clamp), so -100 does not fully mask. Reproduced, not "fixed", for parity.
_MASK_VALUE = -100.0


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """Split (B, H, W, C) into (B * nW, window * window, C); H and W are multiples of window."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _window_reverse(windows: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `_window_partition`: (B * nW, window * window, C) to (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _shift_mask(
    pad_h: int, pad_w: int, window: int, shift_h: int, shift_w: int, like: torch.Tensor
) -> torch.Tensor:
    """Attention mask (nW, N, N) that keeps the cyclically shifted regions apart.

    The region slices are torchvision's, including its behaviour for an unshifted axis: with
    shift 0 the slice (-0, None) spans the whole axis, so that axis contributes one region.
    """
    regions = like.new_zeros((pad_h, pad_w))
    h_bounds = ((0, -window), (-window, -shift_h), (-shift_h, None))
    w_bounds = ((0, -window), (-window, -shift_w), (-shift_w, None))
    label = 0
    for h0, h1 in h_bounds:
        for w0, w1 in w_bounds:
            regions[h0:h1, w0:w1] = label
            label += 1
    regions = regions.view(pad_h // window, window, pad_w // window, window)
    regions = regions.permute(0, 2, 1, 3).reshape(-1, window * window)  # nW, N
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)  # nW, N, N
    return diff.masked_fill(diff != 0, _MASK_VALUE).masked_fill(diff == 0, 0.0)


def shifted_window_attention(
    x: torch.Tensor,
    qkv: nn.Linear,
    proj: nn.Linear,
    position_bias: torch.Tensor,
    logit_scale: torch.Tensor,
    window: int,
    shift: int,
    num_heads: int,
) -> torch.Tensor:
    """Cosine window attention of SwinV2 (torchvision's `shifted_window_attention`, eval mode).

    Args:
        x: (B, H, W, C) features.
        qkv: the fused query/key/value projection (C -> 3C).
        proj: the output projection (C -> C).
        position_bias: (1, heads, N, N) continuous position bias, N = window * window.
        logit_scale: (heads, 1, 1) learned log temperature.
        window: window side in tokens.
        shift: cyclic shift in tokens (0 for unshifted blocks).
        num_heads: number of attention heads.

    Returns:
        (B, H, W, C) attended features.
    """
    b, h, w, c = x.shape
    pad_b = (window - h % window) % window
    pad_r = (window - w % window) % window
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    pad_h, pad_w = h + pad_b, w + pad_r
    # torchvision does not shift when a single window covers the padded map along an axis.
    shift_h = 0 if window >= pad_h else shift
    shift_w = 0 if window >= pad_w else shift
    shifted = shift_h > 0 or shift_w > 0
    if shifted:
        x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))

    windows = _window_partition(x, window)  # B*nW, N, C
    n_win, n_tok = windows.shape[0] // b, windows.shape[1]

    # The key part of the qkv bias is stored but zeroed at every forward (torchvision V2).
    bias = qkv.bias
    if bias is not None:
        bias = torch.cat([bias[:c], torch.zeros_like(bias[c : 2 * c]), bias[2 * c :]])
    qkv_out = F.linear(windows, qkv.weight, bias)
    qkv_out = qkv_out.reshape(windows.shape[0], n_tok, 3, num_heads, c // num_heads)
    q, k, v = qkv_out.permute(2, 0, 3, 1, 4)  # each B*nW, heads, N, C/heads

    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    attn = attn + position_bias
    if shifted:
        mask = _shift_mask(pad_h, pad_w, window, shift_h, shift_w, attn)
        attn = attn.view(b, n_win, num_heads, n_tok, n_tok) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, n_tok, n_tok)
    attn = attn.softmax(dim=-1)

    out = (attn @ v).transpose(1, 2).reshape(windows.shape[0], n_tok, c)
    out = proj(out)
    out = _window_reverse(out, window, b, pad_h, pad_w)
    if shifted:
        out = torch.roll(out, shifts=(shift_h, shift_w), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


class ShiftedWindowAttentionV2(nn.Module):
    """SwinV2 window attention with torchvision's parameter and buffer names.

    State: `logit_scale` (heads,1,1); persistent buffers `relative_coords_table` (1,2w-1,2w-1,2)
    and `relative_position_index` (w^4,) that official checkpoints contain; `qkv`, `proj`, and
    `cpb_mlp` (2 -> 512 -> heads, last layer without bias).
    """

    def __init__(self, dim: int, window: int, shift: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window = window
        self.shift = shift
        self.num_heads = num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.register_buffer("relative_coords_table", relative_coords_table(window))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_heads, bias=False),
        )

    def position_bias(self) -> torch.Tensor:
        """Return the continuous relative position bias, (1, heads, N, N)."""
        n = self.window * self.window
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within (shifted) windows; (B, H, W, C) -> (B, H, W, C)."""
        return shifted_window_attention(
            x,
            self.qkv,
            self.proj,
            self.position_bias(),
            self.logit_scale,
            self.window,
            self.shift,
            self.num_heads,
        )


def relative_coords_table(window: int) -> torch.Tensor:
    """Log-spaced relative coordinates fed to the CPB MLP, (1, 2w-1, 2w-1, 2)."""
    coords = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(coords, coords, indexing="ij")).permute(1, 2, 0)
    table = table.contiguous().unsqueeze(0) / (window - 1) * 8  # normalise to [-8, 8]
    return torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / 3.0


def relative_position_index(window: int) -> torch.Tensor:
    """Index of each token pair into the (2w-1)^2 relative-offset table, (w^4,) int64."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # N, N, 2
    rel += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1).flatten()


class SwinTransformerBlockV2(nn.Module):
    """Res-post-norm SwinV2 block: x + norm1(attn(x)), then x + norm2(mlp(x)).

    The MLP is `Sequential(Linear, GELU, Dropout, Linear, Dropout)` as torchvision's `MLP`, so the
    checkpoint keys are `mlp.0` and `mlp.3`. Stochastic depth and dropout are training-only and
    omitted: this implementation is for inference and fine-tuning starts from the checkpoint.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = ShiftedWindowAttentionV2(dim, window, shift, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(approximate="none"),
            nn.Dropout(0.0),
            nn.Linear(4 * dim, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention and MLP with post-norm residuals; (B, H, W, C) -> (B, H, W, C)."""
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


class PatchMergingV2(nn.Module):
    """Halve the resolution, double the channels: gather 2x2, Linear(4C -> 2C), then LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        h, w = x.shape[-3], x.shape[-2]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Gather order (0,0), (1,0), (0,1), (1,1) as torchvision; it fixes the weight layout.
        x = torch.cat(
            [
                x[..., 0::2, 0::2, :],
                x[..., 1::2, 0::2, :],
                x[..., 0::2, 1::2, :],
                x[..., 1::2, 1::2, :],
            ],
            dim=-1,
        )
        return self.norm(self.reduction(x))
