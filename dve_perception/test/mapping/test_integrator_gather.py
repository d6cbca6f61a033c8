"""Non-float32 channel-last input: only the usable pixels' rows are converted, same map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.mapping import EmbeddingMap
from dve_perception.mapping import integrator as integrator_module

DIM = 16
H, W = 30, 40
K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 14.5], [0.0, 0.0, 1.0]])
#: Off voxel boundaries, so float rounding cannot split the plane into two voxel layers.
PLANE_DEPTH_M = 1.012


def _frame(seed: int, unit: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float16 (H, W, DIM) frame with every kind of unusable pixel, its depth and confidence.

    Pixels without valid depth or confidence hold NaN embeddings: they must never be read into
    the sums. Without `unit`, a few pixels with valid depth hold zero or NaN embeddings, which
    the normalising path must drop.
    """
    gen = torch.Generator().manual_seed(seed)
    hwc = torch.randn(H, W, DIM, generator=gen)
    if unit:
        hwc = hwc / hwc.norm(dim=2, keepdim=True)
    else:
        hwc = hwc * (0.5 + torch.rand(H, W, 1, generator=gen))  # norms vary per pixel
    depth = torch.full((H, W), PLANE_DEPTH_M)
    confidence = torch.rand(H, W, generator=gen) + 0.01
    depth[:, :7] = 0.0
    depth[3, 10:15] = float("nan")
    depth[5, 10:15] = 50.0  # beyond max_depth_m
    confidence[8:12, 20:30] = 0.0
    unusable = (depth == 0.0) | depth.isnan() | (depth > 10.0) | (confidence == 0.0)
    hwc[unusable] = float("nan")
    if not unit:
        hwc[20, 20:25] = 0.0
        hwc[21, 20:25] = float("nan")
    return hwc.to(torch.float16), depth, confidence


def _snapshot(emap: EmbeddingMap) -> dict[str, torch.Tensor]:
    storage = emap.storage
    order = storage.keys.argsort()
    return {
        "keys": storage.keys[order].clone(),
        "features": storage.features[order].float(),
        "weights": storage.weights[order].clone(),
    }


def _integrate_both(hwc16, depth, confidence, assume_unit):
    """Integrate the float16 frame and its exact float32 copy (two frames each); both maps."""
    results = []
    for hwc in (hwc16, hwc16.to(torch.float32)):  # float16 -> float32 is exact
        emap = EmbeddingMap(0.05, embedding_dim=DIM, max_depth_m=10.0)
        for shift in (0.0, 0.02):  # the second frame fuses into voxels of the first
            T = np.eye(4)
            T[0, 3] = shift
            stats = emap.integrate(
                hwc.permute(2, 0, 1), depth, K, T, confidence, assume_unit=assume_unit
            )
        results.append((_snapshot(emap), stats))
    return results


@pytest.mark.parametrize(
    ("gather_block", "max_fraction"),
    [(7, 1.0), (1024, 1.0), (1024, 0.0)],  # gather in many blocks, in one; convert everything
)
@pytest.mark.parametrize("assume_unit", [True, False])
def test_float16_channel_last_input_gives_the_map_of_the_same_values_in_float32(
    monkeypatch, gather_block, max_fraction, assume_unit
):
    monkeypatch.setattr(integrator_module, "_GATHER_BLOCK", gather_block)
    monkeypatch.setattr(integrator_module, "_GATHER_MAX_FRACTION", max_fraction)
    hwc16, depth, confidence = _frame(seed=0, unit=assume_unit)
    (half, half_stats), (full, full_stats) = _integrate_both(hwc16, depth, confidence, assume_unit)
    assert half_stats == full_stats
    assert torch.equal(half["keys"], full["keys"])
    assert torch.equal(half["weights"], full["weights"])
    assert bool(torch.isfinite(half["features"]).all())
    # The same float32 values summed per voxel: equal up to float rounding of the sums.
    torch.testing.assert_close(half["features"], full["features"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("max_fraction", [1.0, 0.0])  # gather the used rows; convert all
def test_float16_input_uses_exactly_the_pixels_with_valid_depth_confidence_and_embedding(
    monkeypatch, max_fraction
):
    monkeypatch.setattr(integrator_module, "_GATHER_MAX_FRACTION", max_fraction)
    hwc16, depth, confidence = _frame(seed=1, unit=False)
    usable = (depth > 0.0) & (depth <= 10.0) & (confidence > 0.0)  # NaN depth compares False
    nonzero = hwc16.float().norm(dim=2)
    usable &= torch.isfinite(nonzero) & (nonzero > 0.0)
    emap = EmbeddingMap(0.05, embedding_dim=DIM, max_depth_m=10.0)
    stats = emap.integrate(hwc16.permute(2, 0, 1), depth, K, np.eye(4), confidence)
    assert stats.pixels_used == int(usable.sum())
    assert stats.pixels_invalid == H * W - int(usable.sum())
    # Expected mean direction of one voxel, computed directly from its pixels.
    pixel_x = (torch.arange(W) - K[0, 2]) * PLANE_DEPTH_M / K[0, 0]
    pixel_y = (torch.arange(H) - K[1, 2]) * PLANE_DEPTH_M / K[1, 1]
    in_voxel = (
        (torch.floor(pixel_y / 0.05)[:, None] == 0) & (torch.floor(pixel_x / 0.05)[None, :] == 0)
    ) & usable
    rows = hwc16.float()[in_voxel]
    weights = confidence[in_voxel].clamp_max(1.0) / rows.norm(dim=1)
    mean = (weights[:, None] * rows).sum(0)
    key = emap.storage.find(
        integrator_module.pack_voxel_keys(
            torch.tensor([[0, 0, int(np.floor(PLANE_DEPTH_M / 0.05))]])
        )
    )
    stored = emap.storage.features[int(key[0])].float()
    torch.testing.assert_close(stored / stored.norm(), mean / mean.norm(), atol=2e-3, rtol=0)
