"""Embedding normalisation, cosine and linear-probing scores, and segmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dve_perception.errors import InputError
from dve_perception.perception.postprocess import (
    class_scores,
    downsample_unit_embedding,
    normalize_embedding,
    segment,
)

DIM = 768


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_normalize_embedding_gives_unit_vectors_and_keeps_zero_vectors_zero(generator):
    x = torch.randn(2, DIM, 3, 4, generator=generator) * 7.0
    x[1, :, 0, 0] = 0.0
    out = normalize_embedding(x)
    norms = out.norm(dim=1)
    assert torch.isfinite(out).all()
    assert norms[1, 0, 0] == 0.0
    norms[1, 0, 0] = 1.0
    torch.testing.assert_close(norms, torch.ones_like(norms))
    torch.testing.assert_close(out[0] * x[0].norm(dim=0), x[0])  # direction unchanged


def test_normalize_embedding_along_another_dim_and_does_not_modify_input(generator):
    x = torch.randn(5, DIM, generator=generator)
    before = x.clone()
    out = normalize_embedding(x, dim=-1)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "x,dim,match",
    [
        (torch.ones(2, 3, dtype=torch.int64), 1, "expected a floating-point tensor"),
        ([1.0, 2.0], 0, "expected a floating-point tensor, got list"),
        (torch.ones(2, 3), 2, "cannot normalise over dim 2"),
    ],
)
def test_normalize_embedding_rejects_bad_input(x, dim, match):
    with pytest.raises(InputError, match=match):
        normalize_embedding(x, dim=dim)


def test_class_scores_are_cosine_similarities(generator):
    embedding = torch.randn(2, DIM, 3, 5, generator=generator) * 4.0
    prototypes = torch.randn(6, DIM, generator=generator) * 3.0
    scores = class_scores(embedding, prototypes)
    assert scores.shape == (2, 6, 3, 5)
    expected = torch.einsum(
        "bchw,kc->bkhw", _unit(embedding.flatten(2)).view_as(embedding), _unit(prototypes)
    )
    torch.testing.assert_close(scores, expected)
    cosine = F.cosine_similarity(embedding[1, :, 2, 4], prototypes[3], dim=0)
    torch.testing.assert_close(scores[1, 3, 2, 4], cosine)


def test_unnormalised_prototypes_act_as_a_bias_free_linear_probing_head(generator):
    embedding = torch.randn(1, DIM, 4, 4, generator=generator)
    weight = torch.randn(5, DIM, 1, 1, generator=generator)  # Conv2d weight as stored on disk
    head = torch.nn.Conv2d(DIM, 5, kernel_size=1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
        expected = head(normalize_embedding(embedding))
    scores = class_scores(embedding, weight, normalize_prototypes=False)
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, class_scores(embedding, weight))


def test_segment_picks_the_prototype_each_pixel_was_built_from(generator):
    prototypes = torch.randn(7, DIM, generator=generator)
    truth = torch.randint(0, 7, (2, 6, 8), generator=generator)
    # Each pixel is its class prototype scaled, plus noise: only the direction should count.
    scale = torch.rand(2, 1, 6, 8, generator=generator) * 10 + 0.1
    embedding = prototypes[truth].permute(0, 3, 1, 2) * scale
    embedding = embedding + 0.1 * torch.randn(embedding.shape, generator=generator)
    result = segment(class_scores(embedding, prototypes), (6, 8))
    assert result.labels.dtype == torch.int64 and result.labels.shape == (2, 6, 8)
    assert torch.equal(result.labels, truth)
    assert (result.scores > 0.9).all() and (result.scores <= 1.0 + 1e-6).all()


def test_segment_upsamples_scores_bilinearly_not_embeddings(generator):
    embedding = torch.randn(1, DIM, 4, 6, generator=generator)
    prototypes = torch.randn(3, DIM, generator=generator)
    scores = class_scores(embedding, prototypes)
    result = segment(scores, (16, 24))
    resized = F.interpolate(scores, size=(16, 24), mode="bilinear", align_corners=False)
    best, labels = resized.max(dim=1)
    assert torch.equal(result.labels, labels)
    torch.testing.assert_close(result.scores, best)
    # Resizing the embedding first and scoring afterwards gives different scores.
    via_embedding = class_scores(
        F.interpolate(embedding, size=(16, 24), mode="bilinear", align_corners=False), prototypes
    )
    assert not torch.allclose(via_embedding.max(dim=1).values, best, atol=1e-3)


def test_segment_at_the_same_size_is_a_plain_argmax(generator):
    scores = torch.randn(3, 4, 5, 6, generator=generator)
    result = segment(scores, (5, 6))
    assert torch.equal(result.labels, scores.argmax(dim=1))
    assert torch.equal(result.scores, scores.amax(dim=1))


def test_prototypes_are_moved_to_the_embedding_dtype(generator):
    embedding = torch.randn(1, DIM, 2, 2, generator=generator, dtype=torch.float64)
    scores = class_scores(embedding, torch.randn(2, DIM, generator=generator))
    assert scores.dtype == torch.float64


def test_zero_embedding_pixels_score_zero_not_nan(generator):
    embedding = torch.zeros(1, DIM, 2, 2)
    scores = class_scores(embedding, torch.randn(3, DIM, generator=generator))
    assert torch.equal(scores, torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize(
    "embedding,prototypes,match",
    [
        (torch.ones(1, DIM, 2, 2), torch.ones(3, 512), "prototypes have dimension 512 but the "),
        (torch.ones(1, DIM, 2, 2), torch.ones(3, DIM, 3, 3), "must have shape \\(K, 768\\)"),
        (torch.ones(1, DIM, 2, 2), torch.ones(DIM), "must have shape \\(K, 768\\)"),
        (torch.ones(1, DIM, 2, 2), torch.ones(0, DIM), "with K >= 1"),
        (torch.ones(1, DIM, 2, 2), torch.ones(3, DIM, dtype=torch.int32), "floating-point"),
        (torch.ones(DIM, 2, 2), torch.ones(3, DIM), "add a batch dimension"),
        (torch.ones(1, DIM, 2, 2, dtype=torch.int64), torch.ones(3, DIM), "floating-point"),
        (torch.ones(1, DIM, 0, 2), torch.ones(3, DIM), "embedding is empty"),
    ],
)
def test_class_scores_rejects_bad_shapes(embedding, prototypes, match):
    with pytest.raises(InputError, match=match):
        class_scores(embedding, prototypes)


@pytest.mark.parametrize(
    "scores,size,match",
    [
        (torch.ones(3, 4, 4), (4, 4), "scores must be a floating-point tensor of shape"),
        (torch.ones(1, 0, 4, 4), (4, 4), "scores is empty"),
        (torch.ones(1, 3, 4, 4), (4,), "output_size must be two positive integers"),
        (torch.ones(1, 3, 4, 4), (0, 4), "output_size must be two positive integers"),
        (torch.ones(1, 3, 4, 4), (4.0, 4), "output_size must be two positive integers"),
    ],
)
def test_segment_rejects_bad_input(scores, size, match):
    with pytest.raises(InputError, match=match):
        segment(scores, size)


@pytest.mark.gpu
def test_scores_and_segmentation_on_cuda_match_cpu(generator):
    embedding = torch.randn(2, DIM, 6, 8, generator=generator)
    prototypes = torch.randn(4, DIM, generator=generator)
    cpu = segment(class_scores(embedding, prototypes), (12, 16))
    gpu = segment(class_scores(embedding.cuda(), prototypes), (12, 16))
    assert gpu.labels.device.type == "cuda"
    # cuDNN's 1x1 convolution runs in TF32 by default (as in the official code on such GPUs):
    # inputs rounded to 10-bit mantissas move a cosine of unit vectors by at most ~2^-10.
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-3, rtol=0)
    # Labels agree except possibly where two classes tie within float rounding.
    assert (gpu.labels.cpu() == cpu.labels).float().mean() > 0.99


def test_downsampling_averages_equal_areas_renormalises_and_keeps_zero_areas_zero():
    unit = F.normalize(torch.randn(2, 5, 6, 8, generator=torch.Generator().manual_seed(4)), dim=1)
    unit[0, :, :3, :2] = 0.0  # the top-left 3x2 area of sample 0 is all zero
    out = downsample_unit_embedding(unit, (2, 4))
    expected = torch.zeros(2, 5, 2, 4)
    for i in range(2):
        for j in range(4):
            mean = unit[:, :, 3 * i : 3 * i + 3, 2 * j : 2 * j + 2].mean(dim=(2, 3))
            norm = mean.norm(dim=1, keepdim=True)
            expected[:, :, i, j] = torch.where(norm > 0, mean / norm.clamp_min(1e-30), 0.0)
    assert out.dtype == torch.float32
    assert torch.equal(out[0, :, 0, 0], torch.zeros(5))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_downsampling_to_a_size_that_does_not_divide_needs_allow_uneven():
    unit = F.normalize(torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(5)), dim=1)
    with pytest.raises(
        InputError,
        match="a 5x7 embedding cannot be averaged into 3x4 equal areas; "
        "use a size that divides it, e.g. 1x1",
    ):
        downsample_unit_embedding(unit, (3, 4))
    out = downsample_unit_embedding(unit, (3, 4), allow_uneven=True)
    # Adaptive window of output (1, 1): rows [1, 4), columns [1, 4).
    mean = unit[0, :, 1:4, 1:4].mean(dim=(1, 2))
    torch.testing.assert_close(out[0, :, 1, 1], mean / mean.norm(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("embedding", "size", "message"),
    [
        (torch.zeros(1, 3, 4, 4), (8, 4), "cannot downsample a 4x4 embedding to 8x4"),
        (torch.zeros(1, 3, 4, 4), (0, 4), r"size must be two positive integers \(H, W\)"),
        (torch.zeros(3, 4, 4), (2, 2), r"embedding must be a floating-point tensor of shape"),
    ],
)
def test_downsampling_rejects_bad_sizes_and_shapes(embedding, size, message):
    with pytest.raises(InputError, match=message):
        downsample_unit_embedding(embedding, size)
