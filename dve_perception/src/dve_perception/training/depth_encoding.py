"""Positional depth encoding (PDE) of metric depth and a DVEFormer variant that consumes it.

Vanishing Depth (Koch et al., arXiv 2503.19947) feeds metric depth to the encoder through
sinusoids instead of mean/std normalisation, so the network sees depth at a fixed metric scale
with bounded inputs. This module computes the encoding of its published code
(`DepthPositionalEncoding` in KochPJ/vanishing-depth, with the training defaults of its
`main.py`: 32 channels, temperature 3e-4, scale 2 pi, max depth 15 m, no per-frame depth scales):

    phase_k(d) = 2 pi (d / max_depth) / temperature ** (2 k / channels),  k = 0 .. channels/2 - 1
    code(d) = [sin(phase_0), cos(phase_0), sin(phase_1), cos(phase_1), ...]

i.e. wavelengths from max_depth (15 m) down to max_depth * temperature ** (1 - 2 / channels)
(7.6 mm at 32 channels, 5.8 mm at 64). Missing depth (0) is encoded as their code encodes it,
as a depth of 1e-6 m (their `zero_eps`), i.e. like 0 m; negative and non-finite depth are
treated as missing too. One guard of ours: depth beyond max_depth is clamped to it (their
encoder does not clamp; its input pipeline bounds depth to the same 15 m).

`with_pde_depth_stem` turns a DVEFormer into the PDE variant by replacing the depth
patch-embedding convolution (1 input channel) with `PDEPatchEmbedConv`, a Conv2d with `channels`
inputs that encodes the raw depth itself. Everything else, including the state_dict key, is
unchanged: only that weight's shape differs, so a PDE checkpoint is recognisably another
variant and an official loader rejects it with a shape error instead of silently misreading it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dve_perception.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_MAX_DEPTH_M",
    "DEFAULT_TEMPERATURE",
    "PDEPatchEmbedConv",
    "pde_wavelengths_m",
    "positional_depth_encoding",
    "with_pde_depth_stem",
]

DEFAULT_MAX_DEPTH_M = 15.0
#: Vanishing Depth's default: the ratio of the shortest to the longest wavelength, almost.
DEFAULT_TEMPERATURE = 3e-4
#: What Vanishing Depth substitutes for a missing (zero) depth, in metres.
_MISSING_DEPTH_M = 1e-6
_CHANNEL_CHOICES = (32, 64)


def pde_wavelengths_m(
    channels: int,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """The channels / 2 wavelengths (float64, metres), longest (max_depth_m) first.

    Raises:
        ConfigError: for channels other than 32 or 64, a non-positive depth range or a
            temperature outside (0, 1).
    """
    if channels not in _CHANNEL_CHOICES:
        raise ConfigError(f"PDE channels must be one of {_CHANNEL_CHOICES}, got {channels}")
    if not (max_depth_m > 0 and 0 < temperature < 1):
        raise ConfigError(
            f"need max_depth_m > 0 and 0 < temperature < 1; got max_depth_m={max_depth_m}, "
            f"temperature={temperature}"
        )
    exponents = 2.0 * torch.arange(channels // 2, dtype=torch.float64) / channels
    return max_depth_m * temperature**exponents


def positional_depth_encoding(
    depth_m: torch.Tensor,
    channels: int = 32,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """Encode metric depth as sinusoids; see the module docstring for the formula.

    Args:
        depth_m: (B, 1, H, W) depth in metres; 0, negative or non-finite means no measurement.
        channels: 32 or 64 output channels (sin/cos interleaved per wavelength, longest first).
        max_depth_m: the longest wavelength; depths beyond it are clamped to it.
        temperature: wavelength k is max_depth_m * temperature ** (2 k / channels).

    Returns:
        (B, channels, H, W) float32 in [-1, 1]; missing depth gets the code of 1e-6 m.

    Raises:
        InputError: for a tensor that is not (B, 1, H, W) floating point.
        ConfigError: for an unsupported channel count or range.
    """
    if not isinstance(depth_m, torch.Tensor) or depth_m.ndim != 4 or depth_m.shape[1] != 1:
        got = tuple(depth_m.shape) if isinstance(depth_m, torch.Tensor) else type(depth_m).__name__
        raise InputError(f"depth_m must be a (B, 1, H, W) tensor, got {got}")
    if not depth_m.is_floating_point():
        raise InputError(f"depth_m must be floating point (metres), got {depth_m.dtype}")
    wavelengths = pde_wavelengths_m(channels, max_depth_m, temperature)
    # Angular frequencies in float32 on the depth's device; the phase is computed in float32
    # even under bf16 autocast, where 15 m * 2 pi / 7.6 mm would lose the fine channels.
    omega = (2.0 * math.pi / wavelengths).to(torch.float32).to(depth_m.device)
    d = depth_m.float()
    valid = torch.isfinite(d) & (d > 0)
    d = torch.where(valid, d.clamp(max=max_depth_m), torch.full_like(d, _MISSING_DEPTH_M))
    phase = d * omega.view(1, -1, 1, 1)  # (B, n, H, W)
    return torch.stack([phase.sin(), phase.cos()], dim=2).flatten(1, 2)


class PDEPatchEmbedConv(nn.Conv2d):
    """A patch-embedding Conv2d whose input is raw depth, encoded with PDE before convolving.

    It is a Conv2d (same `weight`/`bias` names) with `channels` input channels, so it can stand
    where the 1-channel depth convolution stood without renaming any state_dict key.

    Args:
        out_channels: depth embedding width (the model's `depth_embed_dim`).
        kernel_size: patch size (4 in DVEFormer).
        channels: PDE channels, 32 or 64.
        max_depth_m: encoding range.
        depth_scale_m: metres per input unit (1.0 for metres, 0.001 for millimetres).
    """

    def __init__(
        self,
        out_channels: int,
        kernel_size: int,
        channels: int = 32,
        max_depth_m: float = DEFAULT_MAX_DEPTH_M,
        depth_scale_m: float = 1.0,
    ) -> None:
        pde_wavelengths_m(channels, max_depth_m)  # validate before allocating
        if not depth_scale_m > 0:
            raise ConfigError(f"depth_scale_m must be positive, got {depth_scale_m}")
        super().__init__(channels, out_channels, kernel_size=kernel_size, stride=kernel_size)
        self.pde_channels = channels
        self.max_depth_m = max_depth_m
        self.depth_scale_m = depth_scale_m

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) raw depth -> (B, out_channels, H / k, W / k)."""
        code = positional_depth_encoding(
            depth * self.depth_scale_m, self.pde_channels, self.max_depth_m
        )
        return super().forward(code.to(self.weight.dtype))


def with_pde_depth_stem(
    model: nn.Module,
    channels: int = 32,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
    depth_scale_m: float = 1.0,
) -> nn.Module:
    """Replace a DVEFormer's depth patch-embedding convolution with `PDEPatchEmbedConv`, in place.

    The model then takes raw metric depth (scaled by `depth_scale_m` to metres, 0 = invalid)
    where the official model takes (mm - mean) / std. The new convolution is freshly initialised
    (PyTorch's Conv2d default): weights of a 1-channel linear depth input cannot be mapped onto
    sinusoidal inputs, while every other pretrained weight is kept.

    Args:
        model: a DVEFormer (anything with `encoder.backbone.patch_embedder.depth_layers[0]`).
        channels: PDE channels, 32 or 64.
        max_depth_m: encoding range.
        depth_scale_m: metres per depth input unit.

    Returns:
        The same model object.

    Raises:
        InputError: if the model has no 1-channel depth patch-embedding convolution.
    """
    try:
        layers = model.encoder.backbone.patch_embedder.depth_layers
        old = layers[0]
    except (AttributeError, IndexError, TypeError) as exc:
        raise InputError(
            f"{type(model).__name__} has no encoder.backbone.patch_embedder.depth_layers[0]; "
            "expected a DVEFormer"
        ) from exc
    if not isinstance(old, nn.Conv2d) or isinstance(old, PDEPatchEmbedConv) or old.in_channels != 1:
        raise InputError(
            f"expected the official 1-channel depth Conv2d, found {old!r}; the PDE stem is "
            "applied once to an official-layout model"
        )
    new = PDEPatchEmbedConv(
        old.out_channels, old.kernel_size[0], channels, max_depth_m, depth_scale_m
    )
    layers[0] = new.to(device=old.weight.device, dtype=old.weight.dtype)
    return model
