"""PCA colouring of embeddings, label palettes and blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.perception.visualization import (
    blend,
    fit_pca,
    label_colors,
    label_palette,
    pca_colors,
)

DIM = 768


def _two_region_embedding(seed: int, h: int = 24, w: int = 32) -> torch.Tensor:
    """Left half near one direction, right half near another, plus noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(DIM, generator=g), torch.randn(DIM, generator=g)
    embedding = torch.empty(DIM, h, w)
    embedding[:, :, : w // 2] = a[:, None, None]
    embedding[:, :, w // 2 :] = b[:, None, None]
    return embedding + 0.05 * torch.randn(DIM, h, w, generator=g)


def test_pca_colors_shape_dtype_and_batch_dimension():
    embedding = _two_region_embedding(0)
    colors = pca_colors(embedding)
    assert colors.shape == (24, 32, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(pca_colors(embedding[None]), colors)


def test_pca_colors_are_deterministic():
    embedding = _two_region_embedding(0)
    np.testing.assert_array_equal(pca_colors(embedding), pca_colors(embedding.clone()))


def test_pca_colors_separate_distinct_regions_and_differ_across_embeddings():
    colors = pca_colors(_two_region_embedding(0)).astype(int)
    left, right = colors[:, :16].reshape(-1, 3), colors[:, 16:].reshape(-1, 3)
    # The first component splits the halves; they land at opposite ends of the colour range.
    assert np.abs(left.mean(axis=0) - right.mean(axis=0)).max() > 200
    assert np.abs(colors - pca_colors(_two_region_embedding(1)).astype(int)).mean() > 1


def test_pca_colors_are_the_normalised_centred_projection_in_any_memory_layout():
    embedding = _two_region_embedding(2) * torch.linspace(0.5, 3.0, 32)  # raw norms vary
    basis = fit_pca(embedding)
    pixels = embedding.flatten(1).T
    unit = pixels / pixels.norm(dim=1, keepdim=True)
    projected = (unit.double() - basis.mean.double()) @ basis.components.double()
    scaled = (projected - basis.low.double()) / (basis.high - basis.low).double()
    expected = (scaled.clamp(0, 1) * 255).round().reshape(24, 32, 3).numpy()
    colors = pca_colors(embedding, basis)
    assert np.abs(colors.astype(int) - expected).max() <= 1  # rounding at .5 boundaries
    assert (colors == expected).mean() > 0.99
    channel_last = embedding[None].contiguous(memory_format=torch.channels_last)[0]
    assert channel_last.stride(0) == 1
    other = pca_colors(channel_last, basis).astype(int)  # summed in another order
    assert np.abs(other - colors).max() <= 1 and (other == colors).mean() > 0.99


def test_fitted_basis_keeps_colours_consistent_across_frames():
    first = _two_region_embedding(0)
    basis = fit_pca(first)
    # A second frame of the same scene (same directions, new noise, rescaled raw norms) gets
    # nearly the same colours through the first frame's basis.
    second = first * 3.0 + 0.01 * torch.randn(
        first.shape, generator=torch.Generator().manual_seed(5)
    )
    same = np.abs(pca_colors(second, basis).astype(int) - pca_colors(first, basis).astype(int))
    assert same.mean() < 3
    np.testing.assert_array_equal(pca_colors(first, basis), pca_colors(first))


def test_basis_sign_is_fixed_so_negated_data_gives_the_same_components():
    embedding = _two_region_embedding(0)
    a = fit_pca(embedding).components
    b = fit_pca(-embedding).components
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def _four_region_embedding(h: int = 48, w: int = 64) -> torch.Tensor:
    """Quadrants near four directions: three well-separated principal components."""
    g = torch.Generator().manual_seed(3)
    directions = torch.randn(4, DIM, generator=g) * torch.tensor([4.0, 3.0, 2.0, 1.0])[:, None]
    quadrant = torch.zeros(h, w, dtype=torch.int64)
    quadrant[: h // 2, w // 2 :], quadrant[h // 2 :, : w // 2], quadrant[h // 2 :, w // 2 :] = (
        1,
        2,
        3,
    )
    embedding = directions[quadrant].permute(2, 0, 1)
    return embedding + 0.05 * torch.randn(DIM, h, w, generator=g)


def test_subsampled_fit_is_close_to_the_full_fit():
    embedding = _four_region_embedding()
    full = fit_pca(embedding, max_samples=48 * 64)
    sampled = fit_pca(embedding, max_samples=500)
    # Same principal directions (sign included, thanks to the sign convention) ...
    alignment = (full.components * sampled.components).sum(dim=0)
    assert (alignment > 0.99).all()
    # ... and similar colours; the 1-99 % scaling range is estimated from fewer pixels
    # (measured mean difference: 9 of 255 levels).
    difference = pca_colors(embedding, full).astype(int) - pca_colors(embedding, sampled)
    assert np.abs(difference).mean() < 20


def test_constant_embedding_gives_finite_colours():
    colors = pca_colors(torch.ones(8, 4, 5))
    assert colors.shape == (4, 5, 3)


@pytest.mark.parametrize(
    "embedding,match",
    [
        (torch.ones(2, DIM, 4, 4), "shape \\(C, h, w\\) or \\(1, C, h, w\\)"),
        (torch.ones(4, 4), "shape \\(C, h, w\\)"),
        (torch.ones(2, 4, 4), "at least 3 channels"),
        (torch.ones(DIM, 0, 4), "at least 3 channels and one pixel"),
        (torch.ones(DIM, 4, 4, dtype=torch.int64), "floating-point tensor"),
        (np.ones((DIM, 4, 4), np.float32), "floating-point tensor, got ndarray"),
    ],
)
def test_pca_colors_rejects_bad_embeddings(embedding, match):
    with pytest.raises(InputError, match=match):
        pca_colors(embedding)


def test_basis_from_another_channel_count_is_rejected():
    basis = fit_pca(torch.randn(16, 4, 4))
    with pytest.raises(InputError, match="has 32 channels but the PCA basis was fitted on 16"):
        pca_colors(torch.randn(32, 4, 4), basis)


def test_fit_pca_rejects_zero_samples():
    with pytest.raises(InputError, match="max_samples must be at least 1"):
        fit_pca(torch.randn(8, 4, 4), max_samples=0)


def test_label_palette_is_deterministic_distinct_and_never_black():
    palette = label_palette(256)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 256
    assert (palette.sum(axis=1) > 0).all()
    np.testing.assert_array_equal(label_palette(40), palette[:40])
    np.testing.assert_array_equal(palette[:3], [[128, 0, 0], [0, 128, 0], [128, 128, 0]])


def test_label_colors_maps_labels_through_the_palette_and_negatives_to_black():
    labels = torch.tensor([[[0, 1], [2, -1]]])
    colors = label_colors(labels, 3)
    palette = label_palette(3)
    assert colors.shape == (2, 2, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[0, 0], palette[0])
    np.testing.assert_array_equal(colors[1, 0], palette[2])
    np.testing.assert_array_equal(colors[1, 1], [0, 0, 0])
    np.testing.assert_array_equal(label_colors(labels[0].numpy().astype(np.int16), 3), colors)


@pytest.mark.parametrize(
    "labels,num_classes,match",
    [
        (np.array([[0, 3]]), 3, "label 3 is out of range for 3 classes"),
        (np.zeros((2, 2), np.float32), 3, "labels must be an integer array"),
        (np.zeros((2, 2, 2), np.int64), 3, "labels must have shape \\(H, W\\)"),
        (np.zeros((2, 2), np.int64), 0, "num_classes must be a positive integer"),
        (np.zeros((2, 2), np.int64), 2**24, "exceeds the 2\\*\\*24 - 1 distinct"),
    ],
)
def test_label_colors_rejects_bad_input(labels, num_classes, match):
    with pytest.raises(InputError, match=match):
        label_colors(labels, num_classes)


def test_blend_mixes_with_alpha():
    image = np.full((2, 3, 3), 100, np.uint8)
    overlay = np.full((2, 3, 3), 200, np.uint8)
    np.testing.assert_array_equal(blend(image, overlay, 0.25), np.full((2, 3, 3), 125, np.uint8))
    np.testing.assert_array_equal(blend(image, overlay, 0.0), image)
    np.testing.assert_array_equal(blend(image, overlay, 1.0), overlay)


@pytest.mark.parametrize(
    "image,overlay,alpha,match",
    [
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8), 0.5, "differ in size"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), 1.5, "alpha must be in"),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), 0.5, "image must be an \\(H, W"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3)), 0.5, "overlay must be an \\(H, W"),
    ],
)
def test_blend_rejects_bad_input(image, overlay, alpha, match):
    with pytest.raises(InputError, match=match):
        blend(image, overlay, alpha)
