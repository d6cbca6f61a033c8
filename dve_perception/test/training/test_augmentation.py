"""Tests of the training augmentation and the depth randomisation."""

from __future__ import annotations

import colorsys

import pytest
import torch

from dve_perception.datasets.rgbd_dataset import Sample
from dve_perception.errors import ConfigError, InputError
from dve_perception.training.augmentation import (
    AugmentationConfig,
    TrainAugmentation,
    depth_randomisation,
    horizontal_flip,
    hsv_jitter,
    hsv_to_rgb,
    random_crop,
    random_scale,
    rgb_to_hsv,
)


def _coded_sample(height: int = 24, width: int = 32) -> Sample:
    """A sample whose maps all encode the pixel position, so geometry can be traced."""
    index = torch.arange(height * width).reshape(height, width)
    semantic = index % 5
    depth = (index + 1).float() * (semantic > 0)  # void pixels have no depth
    column = index % width
    rgb = torch.stack([index % 256, (index // 256) % 256, column * 6]).to(torch.uint8)
    return Sample(rgb, depth[None], semantic, index.clone(), "x")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augmentation_outputs_the_crop_size_with_consistent_geometry() -> None:
    sample = _coded_sample()
    config = AugmentationConfig(
        crop_size=(16, 20), hue_jitter=0, saturation_jitter=0, value_jitter=0
    )
    for seed in range(5):
        out = TrainAugmentation(config, seed=seed)(sample)
        assert out.rgb.shape == (3, 16, 20) and out.semantic.shape == (16, 20)
        # Every map was moved identically: labels, depth and colour still agree per pixel.
        index = out.instance
        assert torch.equal(out.semantic, index % 5)
        assert torch.equal(out.depth_mm[0], ((index + 1).float() * (index % 5 > 0)))
        # Colour is resized bilinearly, labels by nearest: half a source pixel apart at most.
        column = (index % 32).float()
        assert (out.rgb[2].float() - column * 6).abs().max() <= 3 + 1e-6


def test_scale_factor_stays_within_the_official_range() -> None:
    sample = _coded_sample(100, 100)
    sizes = {random_scale(sample, _generator(s)).semantic.shape[0] for s in range(30)}
    assert min(sizes) >= 100 and max(sizes) <= 140 and len(sizes) > 5


def test_scaling_never_blends_depth_or_labels() -> None:
    sample = _coded_sample()
    out = random_scale(sample, _generator(1), (1.3, 1.3))
    assert set(out.depth_mm.unique().tolist()) <= set(sample.depth_mm.unique().tolist())
    assert set(out.semantic.unique().tolist()) <= set(sample.semantic.unique().tolist())


def test_crop_pads_small_images_with_void_and_zero_depth() -> None:
    sample = _coded_sample(10, 12)
    out = random_crop(sample, _generator(), (16, 20))
    assert out.semantic.shape == (16, 20)
    assert torch.equal(out.semantic[:10, :12], sample.semantic)
    assert (out.semantic[10:] == 0).all() and (out.depth_mm[0, :, 12:] == 0).all()


def test_flip_mirrors_every_map() -> None:
    sample = _coded_sample()
    out = horizontal_flip(sample)
    assert torch.equal(out.semantic[:, 0], sample.semantic[:, -1])
    assert torch.equal(out.depth_mm[0, :, 0], sample.depth_mm[0, :, -1])
    assert torch.equal(out.rgb[:, :, 0], sample.rgb[:, :, -1])


def test_flip_happens_about_half_the_time() -> None:
    sample = _coded_sample()
    config = AugmentationConfig(crop_size=(24, 32), scale_range=(1.0, 1.0))
    augment = TrainAugmentation(config, seed=3)
    flipped = sum(int(augment(sample).instance[0, 0] == 31) for _ in range(200))
    assert 70 < flipped < 130


def test_same_seed_gives_same_augmentation() -> None:
    sample = _coded_sample()
    config = AugmentationConfig(crop_size=(16, 20))
    a, b = TrainAugmentation(config, seed=9)(sample), TrainAugmentation(config, seed=9)(sample)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.semantic, b.semantic)


def test_hsv_conversion_matches_colorsys_and_round_trips() -> None:
    rgb = torch.rand(3, 40, generator=_generator())
    hsv = rgb_to_hsv(rgb)
    expected = torch.tensor([colorsys.rgb_to_hsv(*rgb[:, i].tolist()) for i in range(40)]).T
    assert torch.allclose(hsv, expected.float(), atol=1e-5)
    assert torch.allclose(hsv_to_rgb(hsv), rgb, atol=1e-5)


def test_hsv_jitter_changes_colour_within_the_ranges() -> None:
    rgb = torch.randint(0, 256, (3, 8, 8), generator=_generator(), dtype=torch.uint8)
    assert torch.equal(hsv_jitter(rgb, _generator(), 0.0, 0.0, 0.0), rgb)
    out = hsv_jitter(rgb, _generator(), 0.0, 0.0, 0.1)
    # Value is max(r, g, b): it moves by at most 0.1 (plus rounding) and equally everywhere.
    change = out.float().amax(0) - rgb.float().amax(0)
    unclipped = (rgb.float().amax(0) > 30) & (rgb.float().amax(0) < 225)
    assert change[unclipped].abs().max() <= 0.1 * 255 + 1
    assert change[unclipped].max() - change[unclipped].min() <= 2
    with pytest.raises(InputError, match=r"\(3, H, W\) uint8"):
        hsv_jitter(rgb.float(), _generator())


def test_depth_randomisation_keeps_invalid_zero_and_values_bounded() -> None:
    depth = torch.linspace(0, 5000, 10000).reshape(100, 100)
    depth[:, :10] = 0
    for seed in range(10):
        out = depth_randomisation(
            depth, _generator(seed), scale=(0.5, 2.0), offset_mm=(-300, 300), max_depth_mm=8000
        )
        assert (out[:, :10] == 0).all() and out.max() <= 8000
        assert ((out == 0) | (out >= 1)).all()


def test_depth_randomisation_drops_the_drawn_fraction() -> None:
    depth = torch.full((200, 200), 2000.0)
    kept = [
        float((depth_randomisation(depth, _generator(s), sparsity=(0.3, 0.3)) > 0).float().mean())
        for s in range(3)
    ]
    assert all(abs(k - 0.7) < 0.02 for k in kept)
    fractions = [
        float((depth_randomisation(depth, _generator(s)) > 0).float().mean()) for s in range(40)
    ]
    assert min(fractions) >= 0.01 - 0.005 and max(fractions) <= 0.99 + 0.005
    assert max(fractions) - min(fractions) > 0.5  # the fraction itself is random


def test_depth_randomisation_applies_scale_and_offset() -> None:
    depth = torch.full((4, 4), 1000.0)
    out = depth_randomisation(
        depth, _generator(), scale=(2.0, 2.0), offset_mm=(50.0, 50.0), sparsity=(0.0, 0.0)
    )
    assert torch.equal(out, torch.full((4, 4), 2050.0))


def test_bad_ranges_are_rejected() -> None:
    with pytest.raises(ConfigError, match="sparsity within"):
        depth_randomisation(torch.ones(2, 2), _generator(), sparsity=(0.5, 1.5))
    with pytest.raises(ConfigError, match="min <= max"):
        depth_randomisation(torch.ones(2, 2), _generator(), scale=(2.0, 1.0))
    with pytest.raises(InputError, match="floating-point"):
        depth_randomisation(torch.ones(2, 2, dtype=torch.int64), _generator())
    with pytest.raises(ConfigError, match="scale_range"):
        AugmentationConfig(scale_range=(1.4, 1.0))
    with pytest.raises(InputError, match="augment before collate"):
        random_scale(_coded_sample().replace(semantic=torch.zeros(1, 2, 2)), _generator())
