"""Back-projection and per-frame fusion into the voxel map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.mapping import EmbeddingMap

DIM = 16
H, W = 30, 40
K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 14.5], [0.0, 0.0, 1.0]])
#: Plane depth chosen off voxel boundaries so float rounding cannot split it into two layers.
PLANE_DEPTH_M = 1.012


def _unit(seed: int) -> torch.Tensor:
    vector = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def _plane_frame(seed: int = 0, depth_m: float = PLANE_DEPTH_M):
    embedding = _unit(seed)[:, None, None].expand(DIM, H, W).clone()
    return embedding, torch.full((H, W), depth_m)


def _pose(translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = translation
    return T


def _snapshot(emap: EmbeddingMap) -> dict[str, torch.Tensor]:
    storage = emap.storage
    order = storage.keys.argsort()
    return {
        "keys": storage.keys[order].clone(),
        "features": storage.features[order].clone(),
        "weights": storage.weights[order].clone(),
    }


def test_fronto_parallel_plane_fills_one_voxel_layer_at_its_depth():
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    stats = emap.integrate(*_plane_frame(), K, _pose())
    centres = emap.points()
    assert stats.pixels_used == H * W
    np.testing.assert_allclose(centres[:, 2], 1.025, atol=1e-6)  # layer [1.00, 1.05)
    # Pixel centres u = 0..39 lie at x = (u - 19.5) * 1.012 / 40 in [-0.493, 0.493]: voxels -10..9.
    assert centres[:, 0].min() == pytest.approx(-0.475) and centres[:, 0].max() == pytest.approx(
        0.475
    )
    assert stats.voxels_new == len(emap) == stats.voxels_observed


def test_invalid_and_out_of_range_depth_is_ignored():
    emap = EmbeddingMap(0.05, embedding_dim=DIM, max_depth_m=3.0)
    embedding, depth = _plane_frame()
    depth[0, :] = 0.0
    depth[1, :] = float("nan")
    depth[2, :] = float("inf")
    depth[3, :] = 3.5  # beyond max_depth_m
    depth[4, :] = 0.05  # closer than min_depth_m
    stats = emap.integrate(embedding, depth, K, _pose())
    assert stats.pixels_invalid == 5 * W
    assert np.all(np.isclose(emap.points()[:, 2], 1.025))


def test_zero_confidence_and_zero_embedding_pixels_are_ignored():
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    embedding, depth = _plane_frame()
    embedding[:, :, :10] = 0.0
    confidence = torch.ones(H, W)
    confidence[:, 30:] = 0.0
    stats = emap.integrate(embedding, depth, K, _pose(), confidence=confidence)
    assert stats.pixels_used == H * 20


def test_a_frame_is_averaged_per_voxel_with_confidence_weights():
    emap = EmbeddingMap(1.0, embedding_dim=DIM)  # one big voxel holds the whole frame
    a, b = _unit(1), _unit(2)
    embedding = torch.empty(DIM, H, W)
    embedding[:, :, : W // 2] = 3.0 * a[:, None, None]  # raw norms must not matter
    embedding[:, :, W // 2 :] = b[:, None, None]
    confidence = torch.ones(H, W)
    confidence[:, W // 2 :] = 0.5
    emap.integrate(
        embedding, torch.full((H, W), 0.3), K, _pose((0.5, 0.5, 0.0)), confidence=confidence
    )
    expected = (a + 0.5 * b) / (a + 0.5 * b).norm()
    storage = emap.storage
    assert len(storage) == 1
    torch.testing.assert_close(storage.features[0].float(), expected, atol=2e-3, rtol=0)
    assert storage.weights[0].item() == pytest.approx(0.75)


def test_fusion_does_not_depend_on_frame_order():
    frames = [(_plane_frame(seed), _pose((0.013 * seed, 0.0, 0.0))) for seed in range(4)]
    maps = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        emap = EmbeddingMap(0.05, embedding_dim=DIM, weight_cap=1000.0)
        for i in order:
            (embedding, depth), pose = frames[i]
            emap.integrate(embedding, depth, K, pose)
        maps.append(_snapshot(emap))
    assert torch.equal(maps[0]["keys"], maps[1]["keys"])
    torch.testing.assert_close(maps[0]["weights"], maps[1]["weights"])
    # Each update rounds to float16 (~5e-4 relative), so the orders agree to a few roundings.
    torch.testing.assert_close(
        maps[0]["features"].float(), maps[1]["features"].float(), atol=3e-3, rtol=0
    )


def test_translating_the_pose_translates_the_map():
    shift = np.array([0.5, -0.25, 1.0])  # whole voxels
    maps = []
    for translation in ((0.0, 0.0, 0.0), shift):
        emap = EmbeddingMap(0.05, embedding_dim=DIM)
        emap.integrate(*_plane_frame(), K, _pose(translation))
        maps.append(emap.points())
    moved = np.sort(maps[0] + shift.astype(np.float32), axis=0)
    np.testing.assert_allclose(np.sort(maps[1], axis=0), moved, atol=1e-5)


def test_rotated_camera_sees_the_plane_in_the_rotated_direction():
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # optical z -> world x (REP 103 base frame)
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    emap.integrate(*_plane_frame(), K, T)
    np.testing.assert_allclose(emap.points()[:, 0], 1.025, atol=1e-6)


def test_channels_last_embedding_gives_the_same_map():
    embedding = torch.randn(H, W, DIM)
    depth = torch.full((H, W), PLANE_DEPTH_M)
    maps = []
    for view in (embedding.permute(2, 0, 1), embedding.permute(2, 0, 1).contiguous()):
        emap = EmbeddingMap(0.05, embedding_dim=DIM)
        emap.integrate(view, depth, K, _pose())
        maps.append(_snapshot(emap))
    for name in maps[0]:
        torch.testing.assert_close(maps[0][name], maps[1][name])


def test_numpy_inputs_are_accepted():
    embedding, depth = _plane_frame()
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    stats = emap.integrate(embedding.numpy(), depth.numpy(), K, _pose())
    assert stats.pixels_used == H * W


def _bad_pose_nan():
    T = _pose()
    T[0, 3] = np.nan
    return T


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"T_world_cam": _bad_pose_nan()}, "NaN or inf"),
        ({"T_world_cam": np.diag([1.0, 1.0, 2.0, 1.0])}, "not a rigid transform"),
        ({"depth_m": torch.ones(H, W + 1)}, "depth_m is"),
        ({"embedding": torch.ones(DIM + 1, H, W)}, "embedding must have shape"),
        ({"embedding": torch.ones(H, W)}, "embedding must have shape"),
        ({"embedding": torch.ones(DIM, H, W, dtype=torch.int32)}, "floating-point"),
        ({"confidence": torch.ones(H, 3)}, "confidence is"),
        ({"K": np.eye(4)}, "shape"),
    ],
)
def test_bad_input_raises_and_leaves_the_map_unchanged(change, match):
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    embedding, depth = _plane_frame()
    emap.integrate(embedding, depth, K, _pose())
    before, frames = _snapshot(emap), emap.storage.frame_count
    arguments = {
        "embedding": embedding,
        "depth_m": depth,
        "K": K,
        "T_world_cam": _pose((0.3, 0, 0)),
    }
    arguments.update(change)
    with pytest.raises(InputError, match=match):
        emap.integrate(**arguments)
    after = _snapshot(emap)
    assert emap.storage.frame_count == frames
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_an_empty_frame_adds_nothing_but_counts_as_a_frame():
    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    embedding, depth = _plane_frame()
    stats = emap.integrate(embedding, torch.zeros_like(depth), K, _pose())
    assert stats.pixels_used == 0 and len(emap) == 0
    assert emap.stats()["frames"] == 1


def test_concurrent_queries_during_integration_see_consistent_maps():
    import threading

    emap = EmbeddingMap(0.05, embedding_dim=DIM)
    errors: list[BaseException] = []

    def query_loop() -> None:
        try:
            for _ in range(50):
                result = emap.query(_unit(0))
                assert result.cosine.shape[0] == result.points_m.shape[0]
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)

    reader = threading.Thread(target=query_loop)
    reader.start()
    for step in range(20):
        emap.integrate(*_plane_frame(step), K, _pose((0.05 * step, 0.0, 0.0)))
    reader.join()
    assert errors == []


@pytest.mark.gpu
def test_the_map_on_cuda_matches_the_map_on_cpu():
    maps = []
    for device in ("cpu", "cuda"):
        emap = EmbeddingMap(0.05, embedding_dim=DIM, device=device)
        for step in range(3):
            embedding, depth = _plane_frame(step)
            emap.integrate(embedding.to(device), depth.to(device), K, _pose((0.02 * step, 0, 0)))
        maps.append({name: t.cpu() for name, t in _snapshot(emap).items()})
        result = emap.query(_unit(1))
        assert result.cosine.shape == (len(emap),)
    assert torch.equal(maps[0]["keys"], maps[1]["keys"])
    torch.testing.assert_close(
        maps[0]["features"].float(), maps[1]["features"].float(), atol=2e-3, rtol=0
    )
