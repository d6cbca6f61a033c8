"""The cosine embedding loss on valid pixels and centre-sampling target downscaling."""

from __future__ import annotations

import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.training.losses import cosine_embedding_loss, downscale_target


def _torch_official(pred, target, valid):
    """The official loss: torch's CosineEmbeddingLoss (target +1) over the valid pixels."""
    x = pred.permute(0, 2, 3, 1)[valid]
    y = target.permute(0, 2, 3, 1)[valid]
    return torch.nn.CosineEmbeddingLoss(reduction="sum")(x, y, torch.ones(len(x))) / len(x)


def test_matches_torch_cosine_embedding_loss_over_valid_pixels():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 5, 7, generator=g)
    target = torch.randn(2, 6, 5, 7, generator=g)
    valid = torch.rand(2, 5, 7, generator=g) > 0.3
    got = cosine_embedding_loss(pred, target, valid)
    assert torch.allclose(got, _torch_official(pred, target, valid), atol=1e-6)


def test_zero_target_vectors_are_excluded_like_void_pixels():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(1, 4, 3, 3, generator=g)
    target = torch.randn(1, 4, 3, 3, generator=g)
    target[0, :, 0, :] = 0.0  # first row is void
    expected_valid = torch.ones(1, 3, 3, dtype=torch.bool)
    expected_valid[0, 0, :] = False
    got = cosine_embedding_loss(pred, target)
    assert torch.allclose(got, _torch_official(pred, target, expected_valid), atol=1e-6)


def test_loss_is_zero_for_parallel_and_two_for_opposite_vectors():
    pred = torch.randn(1, 5, 2, 2)
    assert cosine_embedding_loss(pred, 3.0 * pred).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_embedding_loss(pred, -pred).item() == pytest.approx(2.0, abs=1e-6)


def test_no_valid_pixels_gives_zero_with_a_working_backward():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = cosine_embedding_loss(pred, torch.zeros(1, 3, 2, 2))
    assert loss.ndim == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_downscale_samples_pixel_centres():
    # A 1x8 row of ids 0..7 reduced 4x must pick source columns 2 and 6 (centres), not 0 and 4.
    ids = torch.arange(8).view(1, 1, 8).expand(1, 8, 8)
    out = downscale_target(ids, (2, 2))
    assert out.dtype == ids.dtype
    assert out.tolist() == [[[2, 6], [2, 6]]]


def test_downscale_keeps_segment_vectors_unblended():
    # Two segments with orthogonal unit vectors; every downscaled vector is one of the two.
    target = torch.zeros(1, 2, 8, 8)
    target[0, 0, :, :3] = 1.0
    target[0, 1, :, 3:] = 1.0
    out = downscale_target(target, (2, 2))
    assert set(map(tuple, out.permute(0, 2, 3, 1).reshape(-1, 2).tolist())) <= {(1, 0), (0, 1)}


def test_reduced_res_prediction_uses_the_downscaled_target_and_mask():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(1, 4, 8, 8, generator=g)
    valid = torch.rand(1, 8, 8, generator=g) > 0.5
    pred = torch.randn(1, 4, 2, 2, generator=g)
    rows = cols = torch.tensor([2, 6])  # centres of the 4x4 blocks
    small_t = target[:, :, rows][:, :, :, cols]
    small_v = valid[:, rows][:, :, cols]
    if not small_v.any():
        small_v[0, 0, 0] = valid[0, 2, 2] = True
    expected = _torch_official(pred, small_t, small_v)
    assert torch.allclose(cosine_embedding_loss(pred, target, valid), expected, atol=1e-6)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(InputError, match="differ in batch or embedding size"):
        cosine_embedding_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(InputError, match="smaller than pred"):
        cosine_embedding_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))
    with pytest.raises(InputError, match="must be \\(B, D, H, W\\)"):
        cosine_embedding_loss(torch.zeros(3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(InputError, match="valid must be"):
        cosine_embedding_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.ones(1, 3, 3))


def test_downscale_rejects_upscaling_and_bad_ranks():
    with pytest.raises(InputError, match="cannot downscale"):
        downscale_target(torch.zeros(1, 2, 2), (4, 4))
    with pytest.raises(InputError, match="must be \\(B, D, H, W\\) or \\(B, H, W\\)"):
        downscale_target(torch.zeros(2, 2), (1, 1))
