"""The official training augmentation and Vanishing Depth-style depth randomisation.

`TrainAugmentation` applies, in this order and with one seeded `torch.Generator`: random scale
1.0-1.4 (bilinear for colour, nearest for depth and labels, so depth values and ids are never
blended), random crop to 480x640 (padding bottom/right with void labels, zero depth and black
colour where the scaled image is smaller), horizontal flip with probability 0.5 and HSV jitter of
the colour image. The geometric steps move every map of a sample identically; depth values are
never changed by them. The spec names the four steps (dveformer-spec.md §7) but not the jitter
ranges; the defaults here (hue ±10 OpenCV units = ±20°, saturation ±20/255, value ±50/255,
additive) are those of TUI-NICR's training preprocessing (nicr-mt-scene-analysis
`RandomHSVJitter` as DVEFormer's preprocessor configures it), drawn continuously instead of as
integer offsets (docs/datasets.md).

With a `DataLoader` of several workers, give each worker its own generator (e.g. re-seed
`augmentation.generator` in `worker_init_fn`), or all workers draw the same transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dve_perception.datasets.rgbd_dataset import Sample
from dve_perception.errors import ConfigError, InputError

__all__ = [
    "AugmentationConfig",
    "TrainAugmentation",
    "depth_randomisation",
    "horizontal_flip",
    "hsv_jitter",
    "hsv_to_rgb",
    "random_crop",
    "random_scale",
    "rgb_to_hsv",
]


@dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the training augmentation (defaults: the official recipe, see module doc).

    Attributes:
        crop_size: (height, width) of the output.
        scale_range: (min, max) factor of the image sides, drawn uniformly.
        hue_jitter: maximum hue shift as a fraction of the colour circle.
        saturation_jitter: maximum additive saturation change (saturation in [0, 1]).
        value_jitter: maximum additive value (brightness) change (value in [0, 1]).
        flip_probability: probability of a horizontal flip.
    """

    crop_size: tuple[int, int] = (480, 640)
    scale_range: tuple[float, float] = (1.0, 1.4)
    hue_jitter: float = 20.0 / 360.0
    saturation_jitter: float = 20.0 / 255.0
    value_jitter: float = 50.0 / 255.0
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ConfigError(f"crop_size must be two positive integers, got {self.crop_size}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        for name in ("hue_jitter", "saturation_jitter", "value_jitter"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.flip_probability <= 1:
            raise ConfigError(f"flip_probability must be in [0, 1], got {self.flip_probability}")


class TrainAugmentation:
    """Scale, crop, flip and colour-jitter a `Sample` (usable as `RGBDDataset(transform=...)`).

    Args:
        config: the ranges; None uses the official ones.
        seed: seed of the generator when `generator` is not given.
        generator: the random source; all draws of every call come from it.
    """

    def __init__(
        self,
        config: AugmentationConfig | None = None,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.config = config or AugmentationConfig()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    def __call__(self, sample: Sample) -> Sample:
        """Return the augmented sample (unbatched: rgb (3, H, W), labels (H, W))."""
        c, g = self.config, self.generator
        sample = random_scale(sample, g, c.scale_range)
        sample = random_crop(sample, g, c.crop_size)
        if _uniform(g, 0.0, 1.0) < c.flip_probability:
            sample = horizontal_flip(sample)
        rgb = hsv_jitter(sample.rgb, g, c.hue_jitter, c.saturation_jitter, c.value_jitter)
        return sample.replace(rgb=rgb)


def random_scale(
    sample: Sample, generator: torch.Generator, scale_range: tuple[float, float] = (1.0, 1.4)
) -> Sample:
    """Resize every map by one factor drawn uniformly from `scale_range`.

    Colour is resized bilinearly; depth and labels by nearest neighbour, so depth values stay
    measured values (invalid stays 0) and labels stay valid ids.
    """
    _check_unbatched(sample)
    factor = _uniform(generator, *scale_range)
    height, width = sample.semantic.shape
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    rgb = F.interpolate(sample.rgb[None].float(), size=size, mode="bilinear", align_corners=False)
    return sample.replace(
        rgb=rgb[0].round().clamp(0, 255).to(torch.uint8),
        depth_mm=_nearest(sample.depth_mm, size),
        semantic=_nearest(sample.semantic[None], size)[0],
        instance=None if sample.instance is None else _nearest(sample.instance[None], size)[0],
    )


def random_crop(sample: Sample, generator: torch.Generator, size: tuple[int, int]) -> Sample:
    """Cut a random (height, width) window; pad bottom/right with void/0 first if smaller."""
    _check_unbatched(sample)
    out_h, out_w = size
    height, width = sample.semantic.shape
    pad = (0, max(0, out_w - width), 0, max(0, out_h - height))  # F.pad: left, right, top, bottom
    top = int(torch.randint(0, max(0, height - out_h) + 1, (), generator=generator))
    left = int(torch.randint(0, max(0, width - out_w) + 1, (), generator=generator))

    def cut(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, pad, value=0)[..., top : top + out_h, left : left + out_w]

    return sample.replace(
        rgb=cut(sample.rgb),
        depth_mm=cut(sample.depth_mm),
        semantic=cut(sample.semantic),
        instance=None if sample.instance is None else cut(sample.instance),
    )


def horizontal_flip(sample: Sample) -> Sample:
    """Mirror every map of the sample left-right."""
    return sample.replace(
        rgb=sample.rgb.flip(-1),
        depth_mm=sample.depth_mm.flip(-1),
        semantic=sample.semantic.flip(-1),
        instance=None if sample.instance is None else sample.instance.flip(-1),
    )


def hsv_jitter(
    rgb: torch.Tensor,
    generator: torch.Generator,
    hue: float = 20.0 / 360.0,
    saturation: float = 20.0 / 255.0,
    value: float = 50.0 / 255.0,
) -> torch.Tensor:
    """Shift hue (cyclically) and add to saturation and value, each by one uniform draw.

    Args:
        rgb: (3, H, W) uint8 colour.
        generator: the random source.
        hue: maximum hue shift, a fraction of the colour circle.
        saturation: maximum additive saturation change; the result is clipped to [0, 1].
        value: maximum additive value change; the result is clipped to [0, 1].

    Returns:
        (3, H, W) uint8 colour.
    """
    if rgb.dtype != torch.uint8 or rgb.ndim != 3 or rgb.shape[0] != 3:
        raise InputError(
            f"rgb must be a (3, H, W) uint8 tensor, got {rgb.dtype} {tuple(rgb.shape)}"
        )
    h, s, v = rgb_to_hsv(rgb.float() / 255.0).unbind(0)
    h = (h + _uniform(generator, -hue, hue)) % 1.0
    s = (s + _uniform(generator, -saturation, saturation)).clamp(0.0, 1.0)
    v = (v + _uniform(generator, -value, value)).clamp(0.0, 1.0)
    return (hsv_to_rgb(torch.stack([h, s, v])) * 255.0).round().clamp(0, 255).to(torch.uint8)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """Convert (3, ...) RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of the circle)."""
    r, g, b = rgb.unbind(0)
    maxc, _ = rgb.max(dim=0)
    minc, _ = rgb.min(dim=0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r,
        (g - b) / safe,
        torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0.0)
    return torch.stack([hue, sat, maxc])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Convert (3, ...) HSV in [0, 1] back to RGB in [0, 1] (inverse of `rgb_to_hsv`)."""
    h, s, v = hsv.unbind(0)
    h6 = (h % 1.0) * 6.0
    sector = h6.floor().long() % 6
    f = h6 - h6.floor()
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Per sector, which of (v, q, p, t) is red, green and blue: the standard hexcone model.
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v]),
            torch.stack([t, v, v, q, p, p]),
            torch.stack([p, p, t, v, v, q]),
        ]
    )
    return table.gather(1, sector[None, None].expand(3, 1, *sector.shape)).squeeze(1)


def depth_randomisation(
    depth_mm: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.9, 1.1),
    offset_mm: tuple[float, float] = (-100.0, 100.0),
    sparsity: tuple[float, float] = (0.01, 0.99),
    max_depth_mm: float = 65535.0,
) -> torch.Tensor:
    """Randomly rescale, offset and sparsify valid depth, as Vanishing Depth trains for robustness.

    One scale and one offset are drawn per call and applied to the valid pixels, whose values are
    then clipped to [1, `max_depth_mm`] (so a valid pixel never becomes "invalid" by the offset).
    Then a fraction drawn uniformly from `sparsity` of the valid pixels is dropped (set to 0).
    Invalid pixels (0) stay 0.

    Args:
        depth_mm: floating-point depth in millimetres of any shape, 0 = invalid.
        generator: the random source.
        scale: (min, max) multiplicative factor, min > 0.
        offset_mm: (min, max) additive offset in millimetres.
        sparsity: (min, max) fraction of valid pixels to drop, within [0, 1].
        max_depth_mm: upper bound of the result (the 16-bit PNG range by default).

    Returns:
        A new tensor like `depth_mm`.

    Raises:
        InputError: `depth_mm` is not floating point.
        ConfigError: a range with min > max, a non-positive scale or a sparsity outside [0, 1].
    """
    if not isinstance(depth_mm, torch.Tensor) or not depth_mm.is_floating_point():
        raise InputError(f"depth_mm must be a floating-point tensor, got {type(depth_mm).__name__}")
    for name, (low, high) in (("scale", scale), ("offset_mm", offset_mm), ("sparsity", sparsity)):
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ConfigError(
                f"{name} must be a finite (min, max) with min <= max, got {(low, high)}"
            )
    if scale[0] <= 0 or not 0 <= sparsity[0] <= sparsity[1] <= 1:
        raise ConfigError(
            f"expected scale > 0 and sparsity within [0, 1], got scale {scale}, sparsity {sparsity}"
        )
    valid = depth_mm > 0
    factor, offset = _uniform(generator, *scale), _uniform(generator, *offset_mm)
    changed = (depth_mm * factor + offset).clamp(1.0, max_depth_mm)
    drop = _uniform(generator, *sparsity)
    keep = torch.rand(depth_mm.shape, generator=generator) >= drop
    return torch.where(valid & keep.to(depth_mm.device), changed, torch.zeros_like(depth_mm))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # "nearest-exact" picks the source pixel whose centre is nearest, without the half-pixel
    # shift of "nearest"; values are copied, never blended.
    out = F.interpolate(x[None].to(torch.float64), size=size, mode="nearest-exact")[0]
    return out.to(x.dtype)


def _check_unbatched(sample: Sample) -> None:
    if sample.rgb.ndim != 3 or sample.semantic.ndim != 2:
        raise InputError(
            f"augmentation works on one sample (rgb (3, H, W), semantic (H, W)), got rgb "
            f"{tuple(sample.rgb.shape)} and semantic {tuple(sample.semantic.shape)}; augment "
            "before collate"
        )
