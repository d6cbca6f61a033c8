"""Replay from real recording files: rosbag2 bags (with /tf) and folders give the same map.

These check back-projection, intrinsics scaling and the direction of TF end to end: a wrong
transform direction, a missing optical rotation or a mis-scaled K puts voxels off the surfaces.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dve_perception.mapping import MapConfig
from dve_perception.replay.replay_loop import ReplayOptions, run_replay
from dve_perception.simulation import (
    LabelColorEmbedder,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
    render_frames,
)
from dve_perception.sources import open_source, write_bag, write_folder_recording

H, W = 72, 96
VOXEL_M = 0.05
WORLD_OFFSET_M = np.array([0.0123, 0.0171, 0.0219])  # keeps room faces off voxel boundaries


@pytest.fixture(scope="module")
def room():
    scene = make_room_scene(seed=0)
    K = pinhole_intrinsics(W, H)
    poses = orbit_trajectory(scene, 8, seed=2)
    frames = []
    for frame in render_frames(scene, K, poses, H, W):
        T = frame.T_world_cam.copy()
        T[:3, 3] += WORLD_OFFSET_M
        frames.append(replace(frame, T_world_cam=T))
    truth = set()
    for pose in poses:
        view = render(scene, K, pose, H, W)
        points = view.points_world[view.hit_mask] + WORLD_OFFSET_M
        truth |= set(map(tuple, np.floor(points / VOXEL_M).astype(np.int64)))
    return scene, frames, truth


def _replay(scene, path, out, **source_options):
    options = ReplayOptions(map_config=MapConfig(voxel_size_m=VOXEL_M), progress=False)
    source = open_source(path, **source_options)
    return run_replay(source, LabelColorEmbedder(scene), out, options=options)


def _fraction_near_surface(points, truth) -> float:
    voxels = np.floor(points / VOXEL_M).astype(np.int64)
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    near = [any((v[0] + a, v[1] + b, v[2] + c) in truth for a, b, c in offsets) for v in voxels]
    return float(np.mean(near))


@pytest.mark.parametrize(
    ("storage", "distro", "tf_layout", "depth_encoding"),
    [
        ("mcap", "humble", "chain", "16UC1"),
        ("sqlite3", "jazzy", "direct", "32FC1"),
    ],
)
def test_bag_replay_puts_voxels_on_the_scene_surfaces(
    room, tmp_path, storage, distro, tf_layout, depth_encoding
):
    scene, frames, truth = room
    bag = write_bag(
        tmp_path / "bag",
        frames,
        storage=storage,
        distro=distro,
        tf_layout=tf_layout,
        depth_encoding=depth_encoding,
    )
    result = _replay(scene, bag, tmp_path, distro=distro)
    assert len(open_source(bag, distro=distro)) == len(frames)  # the progress bar's total
    assert result.summary["frames"]["used"] == len(frames)
    assert len(result.map) > 300
    assert _fraction_near_surface(result.map.points(), truth) == 1.0


def test_a_bag_with_a_mislabelled_optical_frame_is_caught_by_the_surface_check(room, tmp_path):
    # Reading the chain layout but stopping at camera_link (x forward, not z forward) must put
    # voxels off the surfaces; otherwise the check above could not see a TF mistake.
    scene, frames, truth = room
    bag = write_bag(tmp_path / "bag", frames, tf_layout="chain")
    result = _replay(scene, bag, tmp_path, camera_frame="camera_link")
    assert _fraction_near_surface(result.map.points(), truth) < 0.5


def test_folder_and_bag_sources_give_the_same_map(room, tmp_path):
    scene, frames, _ = room
    bag = write_bag(tmp_path / "bag", frames, tf_layout="chain")
    folder = write_folder_recording(tmp_path / "folder", frames)
    from_bag = _replay(scene, bag, tmp_path / "out_bag").map
    from_folder = _replay(scene, folder, tmp_path / "out_folder").map
    assert len(open_source(folder)) == len(frames)
    a, b = from_bag.storage, from_folder.storage
    order_a = np.lexsort(a.voxels.numpy().T)
    order_b = np.lexsort(b.voxels.numpy().T)
    # Depth is stored in millimetres in both; poses go through TF (chain, float64) and TUM text
    # (9 decimals): the same voxels, and features equal to float16 rounding.
    np.testing.assert_array_equal(a.voxels.numpy()[order_a], b.voxels.numpy()[order_b])
    np.testing.assert_allclose(
        a.features.float().numpy()[order_a], b.features.float().numpy()[order_b], atol=2e-3
    )
