"""Unit-norm and float16 inputs, and frames that mix known and new voxels, fuse correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.mapping import EmbeddingMap

DIM = 16
H, W = 30, 40
K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 14.5], [0.0, 0.0, 1.0]])
#: Off voxel boundaries, so float rounding cannot split the plane into two voxel layers.
PLANE_DEPTH_M = 1.012


def _unit_field(seed: int) -> torch.Tensor:
    """(H, W, DIM) float32 random unit embeddings, channel-last."""
    field = torch.randn(H, W, DIM, generator=torch.Generator().manual_seed(seed))
    return field / field.norm(dim=2, keepdim=True)


def _unit(seed: int) -> torch.Tensor:
    vector = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def _snapshot(emap: EmbeddingMap) -> dict[str, torch.Tensor]:
    storage = emap.storage
    order = storage.keys.argsort()
    return {
        "keys": storage.keys[order].clone(),
        "features": storage.features[order].float(),
        "weights": storage.weights[order].clone(),
        "norms": storage.norms[order].clone(),
    }


def _depth() -> torch.Tensor:
    return torch.full((H, W), PLANE_DEPTH_M)


def test_assume_unit_gives_the_same_map_as_normalising_unit_input():
    hwc = _unit_field(0)
    confidence = torch.rand(H, W, generator=torch.Generator().manual_seed(1)) + 0.01
    maps = []
    for assume_unit in (False, True):
        emap = EmbeddingMap(0.05, embedding_dim=DIM)
        for shift in (0.0, 0.02):  # the second frame fuses into voxels of the first
            T = np.eye(4)
            T[0, 3] = shift
            emap.integrate(
                hwc.permute(2, 0, 1), _depth(), K, T, confidence, assume_unit=assume_unit
            )
        maps.append(_snapshot(emap))
    assert torch.equal(maps[0]["keys"], maps[1]["keys"])
    torch.testing.assert_close(maps[0]["weights"], maps[1]["weights"])
    # The norms differ from 1 by float32 rounding only; stored float16 means agree to ~1 ulp.
    torch.testing.assert_close(maps[0]["features"], maps[1]["features"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_float16_unit_input_gives_the_float32_map_up_to_float16_rounding(channels_last):
    hwc = _unit_field(2)
    maps = []
    for dtype, assume_unit in ((torch.float32, False), (torch.float16, True)):
        cast = hwc.to(dtype)
        view = cast.permute(2, 0, 1) if channels_last else cast.permute(2, 0, 1).contiguous()
        emap = EmbeddingMap(0.05, embedding_dim=DIM)
        emap.integrate(view, _depth(), K, np.eye(4), assume_unit=assume_unit)
        maps.append(_snapshot(emap))
    assert torch.equal(maps[0]["keys"], maps[1]["keys"])
    torch.testing.assert_close(maps[0]["weights"], maps[1]["weights"])
    # Input rounding (~5e-4 relative per element) plus one float16 rounding of the mean.
    torch.testing.assert_close(maps[0]["features"], maps[1]["features"], atol=3e-3, rtol=0)


@pytest.mark.parametrize(
    ("scale", "match"),
    [(3.0, r"sampled pixel has norm 3"), (float("nan"), r"sampled pixel has norm (nan|inf)")],
)
def test_assume_unit_refuses_input_that_is_not_unit_and_leaves_the_map_unchanged(scale, match):
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    embedding = (_unit_field(3) * scale).permute(2, 0, 1)
    with pytest.raises(InputError, match=match):
        emap.integrate(embedding, _depth(), K, np.eye(4), assume_unit=True)
    assert len(emap) == 0
    assert emap.storage.frame_count == 0


def test_assume_unit_ignores_zero_embeddings_at_pixels_without_depth():
    hwc = _unit_field(4)
    depth = _depth()
    hwc[:, : W // 2] = 0.0  # a producer that zeroes pixels it also marks invalid by depth
    depth[:, : W // 2] = 0.0
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    stats = emap.integrate(hwc.permute(2, 0, 1), depth, K, np.eye(4), assume_unit=True)
    assert stats.pixels_used == H * (W - W // 2)
    assert bool(torch.isfinite(emap.storage.features.float()).all())


def test_a_frame_mixing_known_and_new_voxels_fuses_each_as_the_weighted_mean():
    # Frame 1 sees the top half of a plane, frame 2 all of it (u2 on top, u3 below). Keys sort
    # by x first, so known (top, smaller y) and new (bottom) voxels alternate in key order.
    u1, u2, u3 = _unit(10), _unit(11), _unit(12)
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    top_depth = _depth()
    top_depth[H // 2 :] = 0.0
    emap.integrate(u1[:, None, None].expand(DIM, H, W), top_depth, K, np.eye(4))
    known = emap.storage.keys.clone()
    second = u2[:, None, None].repeat(1, H, W)
    second[:, H // 2 :] = u3[:, None, None]
    stats = emap.integrate(second, _depth(), K, np.eye(4))
    assert stats.voxels_new > 0 and stats.voxels_observed > stats.voxels_new
    storage = emap.storage
    seen_twice = torch.isin(storage.keys, known)
    # Expected values from the fusion rule, computed here: equal weights average the two.
    both = (u1 + u2) / 2
    features = storage.features.float()
    torch.testing.assert_close(
        features[seen_twice], both.expand(int(seen_twice.sum()), DIM), atol=2e-3, rtol=0
    )
    torch.testing.assert_close(
        features[~seen_twice], u3.expand(int((~seen_twice).sum()), DIM), atol=2e-3, rtol=0
    )
    assert torch.equal(storage.weights[seen_twice], torch.full((int(seen_twice.sum()),), 2.0))
    assert torch.equal(storage.weights[~seen_twice], torch.ones(int((~seen_twice).sum())))
    # The hash index still points every key at its own row.
    assert torch.equal(storage.find(storage.keys), torch.arange(len(storage)))
