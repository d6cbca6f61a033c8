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


def test_channel_first_unit_input_is_summed_by_column_into_the_same_map(monkeypatch):
    from dve_perception.mapping import integrator

    calls = []
    original = integrator.column_means

    def recording(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(integrator, "column_means", recording)
    hwc = _unit_field(5)
    depth = _depth()
    depth[:5] = 0.0  # unused pixels, whose embeddings must not reach any voxel
    hwc[:5] = float("nan")
    maps = []
    for layout in ("channels-last", "channels-first"):
        emap = EmbeddingMap(0.05, embedding_dim=DIM)
        for shift in (0.0, 0.02):  # the second frame fuses into voxels of the first
            T = np.eye(4)
            T[0, 3] = shift
            view = hwc.permute(2, 0, 1)
            if layout == "channels-first":
                view = view.contiguous()
            emap.integrate(view, depth, K, T, assume_unit=True)
        maps.append(_snapshot(emap))
    assert len(calls) == 2  # only the channel-first frames took the column path
    assert torch.equal(maps[0]["keys"], maps[1]["keys"])
    torch.testing.assert_close(maps[0]["weights"], maps[1]["weights"], rtol=0, atol=0)
    # Sums in another order: float32 rounding, then at most one float16 ulp apart.
    torch.testing.assert_close(maps[0]["features"], maps[1]["features"], atol=1e-3, rtol=0)
    assert torch.isfinite(maps[1]["features"]).all()


@pytest.mark.parametrize("case", ["confidence", "float16", "not assume_unit", "strided"])
def test_channel_first_input_needing_per_pixel_work_takes_the_row_path(monkeypatch, case):
    from dve_perception.mapping import integrator

    monkeypatch.setattr(
        integrator,
        "column_means",
        lambda *a, **k: pytest.fail("the column path cannot weight or convert pixels"),
    )
    cf = _unit_field(6).permute(2, 0, 1).contiguous()
    kwargs = {"assume_unit": case != "not assume_unit"}
    if case == "confidence":
        kwargs["confidence"] = torch.full((H, W), 0.5)
    elif case == "float16":
        cf = cf.half()
    elif case == "strided":
        cf = torch.cat([cf, cf], dim=2)[:, :, ::2]  # channel-first values, not contiguous
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    stats = emap.integrate(cf, _depth(), K, np.eye(4), **kwargs)
    assert stats.pixels_used == H * W


@pytest.mark.parametrize("layout", ["channels-last", "channels-first"])
def test_with_assume_unit_a_nan_pixel_costs_only_its_voxel(layout):
    hwc = _unit_field(7)
    maps, stats = [], []
    for poisoned in (False, True):
        field = hwc.clone()
        if poisoned:
            field[0, 1, 3] = float("nan")  # pixel 1: not among the 64 sampled (every 18th)
        view = field.permute(2, 0, 1)
        if layout == "channels-first":
            view = view.contiguous()
        emap = EmbeddingMap(0.05, embedding_dim=DIM)
        stats.append(emap.integrate(view, _depth(), K, np.eye(4), assume_unit=True))
        maps.append(_snapshot(emap))
    assert stats[0].voxels_skipped == 0 and stats[1].voxels_skipped == 1
    assert len(maps[1]["keys"]) == len(maps[0]["keys"]) - 1
    assert torch.isfinite(maps[1]["features"]).all()
    kept = torch.isin(maps[0]["keys"], maps[1]["keys"])
    torch.testing.assert_close(maps[0]["features"][kept], maps[1]["features"], rtol=0, atol=0)


def test_with_assume_unit_zero_embeddings_are_accepted_and_add_no_direction():
    hwc = _unit_field(8)
    hwc[:, :20] = 0.0  # the left half: "the network saw nothing", at valid depth
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    stats = emap.integrate(hwc.permute(2, 0, 1), _depth(), K, np.eye(4), assume_unit=True)
    reference = EmbeddingMap(0.05, embedding_dim=DIM)
    reference.integrate(hwc.permute(2, 0, 1), _depth(), K, np.eye(4))  # drops zero pixels
    assert stats.voxels_skipped > 0  # voxels seeing only zero embeddings
    keys, ref = _snapshot(emap), _snapshot(reference)
    assert torch.equal(keys["keys"], ref["keys"])
    torch.testing.assert_close(keys["features"], ref["features"], rtol=0, atol=1e-3)
