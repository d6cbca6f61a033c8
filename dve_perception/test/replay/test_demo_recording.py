from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.camera import backproject_depth, check_pose, transform_points
from dve_perception.cli.sample import bundled_sample
from dve_perception.errors import InputError
from dve_perception.frames import sample_depth_at_centres, scale_intrinsics
from dve_perception.images import read_depth, read_rgb
from dve_perception.replay.demo_recording import (
    SAMPLE_INTRINSICS,
    make_demo_frames,
    render_view,
    sample_intrinsics,
)

H, W = 120, 160
K_SYNTH = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
OUT = (60, 80)


def synthetic_frame() -> tuple[np.ndarray, np.ndarray]:
    """A slanted checkered wall 3-3.4 m away with a red box face 2 m away in front of it."""
    v, u = np.mgrid[0:H, 0:W]
    depth_mm = (3000.0 + 2.5 * u).astype(np.uint16)
    box = (v >= 40) & (v < 80) & (u >= 60) & (u < 100)
    depth_mm[box] = 2000
    depth_mm[:4, :4] = 0  # a few invalid pixels, as a real sensor has
    checker = ((u // 8 + v // 8) % 2).astype(np.uint8)
    rgb = np.stack([40 + 160 * checker, 80 + 100 * checker, np.full_like(checker, 200)], -1)
    rgb[box] = (220, 30, 30)
    return rgb.astype(np.uint8), depth_mm


def world_cloud(depth_mm: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> torch.Tensor:
    depth = torch.from_numpy(depth_mm.astype(np.float32) / 1000.0)
    valid = torch.nonzero(depth.reshape(-1) > 0).reshape(-1)
    return transform_points(T_world_cam, backproject_depth(depth, K, valid))


def nearest_distances(query: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    # Brute force in chunks keeps the distance matrix small without needing scipy.
    parts = [torch.cdist(chunk, reference).min(dim=1).values for chunk in query.split(512)]
    return torch.cat(parts).numpy()


def surface_errors(
    points_world: torch.Tensor, depth_mm: np.ndarray, K: np.ndarray, T_world_cam0: np.ndarray
) -> np.ndarray:
    """|z - measured depth| of points seen from the original camera, on their nearest pixel."""
    p = (points_world.numpy().astype(np.float64) - T_world_cam0[:3, 3]) @ T_world_cam0[:3, :3]
    u = np.rint(K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < depth_mm.shape[1]) & (v >= 0) & (v < depth_mm.shape[0])
    return np.abs(p[inside, 2] - depth_mm[v[inside], u[inside]] / 1000.0)


def test_sample_intrinsics_assume_a_1060_px_kinect_focal_length_and_a_centred_crop():
    assert SAMPLE_INTRINSICS[0, 0] == SAMPLE_INTRINSICS[1, 1] == 1060.0
    assert (SAMPLE_INTRINSICS[0, 2], SAMPLE_INTRINSICS[1, 2]) == (719.5, 539.5)
    np.testing.assert_array_equal(sample_intrinsics(1440, 1080), SAMPLE_INTRINSICS)
    np.testing.assert_allclose(
        sample_intrinsics(480, 360), scale_intrinsics(SAMPLE_INTRINSICS, 1 / 3, 1 / 3)
    )
    with pytest.raises(InputError, match="positive integers"):
        sample_intrinsics(0, 1080)


def test_the_first_frame_reproduces_the_downsampled_original_view():
    rgb, depth_mm = synthetic_frame()
    (frame,) = make_demo_frames(rgb, depth_mm, K_SYNTH, num_frames=1, size=OUT)
    reference = sample_depth_at_centres(torch.from_numpy(depth_mm / np.float32(1000.0)), OUT)
    reference = reference.numpy()
    valid = reference > 0
    assert np.mean(np.abs(frame.depth_m - reference)[valid] < 0.01) >= 0.9
    np.testing.assert_allclose(frame.K, scale_intrinsics(K_SYNTH, 0.5, 0.5))
    rows, cols = np.arange(OUT[0]) * 2 + 1, np.arange(OUT[1]) * 2 + 1
    same_colour = np.all(frame.rgb == rgb[rows][:, cols], axis=-1)
    assert same_colour[valid].mean() >= 0.9


def test_views_from_a_moved_camera_lie_on_the_original_point_cloud():
    rgb, depth_mm = synthetic_frame()
    frames = make_demo_frames(rgb, depth_mm, K_SYNTH, num_frames=4, size=OUT, max_angle_deg=12.0)
    moved = frames[1]
    assert np.linalg.norm(moved.T_world_cam[:3, 3] - frames[0].T_world_cam[:3, 3]) > 0.3
    original = world_cloud(depth_mm, K_SYNTH, frames[0].T_world_cam)
    depth = torch.from_numpy(moved.depth_m)
    valid = torch.nonzero(depth.reshape(-1) > 0).reshape(-1)
    rendered = transform_points(moved.T_world_cam, backproject_depth(depth, moved.K, valid))
    # The original cloud is ~3 cm apart at 3 m, which bounds how close a nearest neighbour is.
    distances = nearest_distances(rendered, original)
    assert np.median(distances) < 0.02
    assert np.quantile(distances, 0.95) < 0.05
    # Along the original camera's rays the rendered points sit on the measured surface.
    errors = surface_errors(rendered, depth_mm, K_SYNTH, frames[0].T_world_cam)
    assert np.median(errors) < 0.005 and np.mean(errors < 0.01) > 0.9


@pytest.mark.parametrize("near_first", [True, False])
def test_a_near_point_hides_a_far_point_on_the_same_pixel(near_first):
    K = np.array([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])
    near, far = ([0.0, 0.0, 1.0], (200, 0, 0)), ([0.0, 0.0, 2.0], (0, 0, 200))
    order = [near, far] if near_first else [far, near]
    points = np.array([p for p, _ in order], dtype=np.float32)
    colors = np.array([c for _, c in order], dtype=np.uint8)
    rgb, depth = render_view(points, colors, K, np.eye(4), 5, 5)
    # The point projects onto the pixel centre (2, 2); its 2x2 splat covers rows/cols 2-3.
    np.testing.assert_array_equal(depth[2:4, 2:4], np.ones((2, 2), np.float32))
    assert (rgb[2:4, 2:4] == (200, 0, 0)).all()
    assert (depth[:2] == 0).all() and (rgb[:2] == 0).all()


def test_points_behind_or_too_close_to_the_camera_are_not_rendered():
    K = np.array([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])
    points = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 0.05], [50.0, 0.0, 1.0]], dtype=np.float32)
    rgb, depth = render_view(points, np.full((3, 3), 255, np.uint8), K, np.eye(4), 5, 5)
    assert depth.dtype == np.float32 and rgb.dtype == np.uint8
    assert not depth.any() and not rgb.any()


def test_frames_are_level_posed_stamped_and_look_at_one_pivot():
    rgb, depth_mm = synthetic_frame()
    frames = make_demo_frames(
        rgb, depth_mm, K_SYNTH, size=OUT, frame_id="cam", start_stamp_ns=5, period_ns=10
    )
    assert [f.stamp_ns for f in frames] == [5 + 10 * i for i in range(8)]
    assert all(f.frame_id == "cam" and f.size == OUT for f in frames)
    # World: x along the original optical axis, y left, z up, origin at the original camera.
    expected = np.eye(4)
    expected[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    np.testing.assert_allclose(frames[0].T_world_cam, expected, atol=1e-12)
    positions = np.array([f.T_world_cam[:3, 3] for f in frames])
    assert len(np.unique(positions.round(6), axis=0)) == 8
    pivot = np.array([np.median(depth_mm[depth_mm > 0]) / 1000.0, 0.0, 0.0])
    for frame in frames:
        T = check_pose(frame.T_world_cam)
        assert abs(T[2, 0]) < 1e-9  # image x axis horizontal: the camera stays level
        to_pivot = pivot - T[:3, 3]
        assert np.linalg.norm(np.cross(T[:3, 2], to_pivot)) < 2e-3  # axis passes the pivot


def test_the_bundled_sample_gives_eight_posed_frames_with_mostly_valid_depth():
    rgb_path, depth_path = bundled_sample()
    rgb, depth_mm = read_rgb(rgb_path), read_depth(depth_path)
    frames = make_demo_frames(rgb, depth_mm, SAMPLE_INTRINSICS)
    assert len(frames) == 8
    stamps = [f.stamp_ns for f in frames]
    assert stamps[0] == 1_000_000_000 and all(np.diff(stamps) == 100_000_000)
    for frame in frames:
        assert frame.size == (360, 480) and frame.T_world_cam is not None
        check_pose(frame.T_world_cam)
        assert (frame.depth_m > 0).mean() > 0.6
    reference = sample_depth_at_centres(torch.from_numpy(depth_mm / np.float32(1000.0)), (360, 480))
    valid = reference.numpy() > 0
    error = np.abs(frames[0].depth_m - reference.numpy())[valid]
    # Kinect noise: diagonal neighbours already differ by > 1 cm on ~16 % of this frame's pixels.
    assert np.mean(error < 0.01) > 0.85 and np.median(error) < 0.005


def _bad(**changes: object) -> dict:
    rgb, depth_mm = synthetic_frame()
    args = {"rgb": rgb, "depth_mm": depth_mm, "K": K_SYNTH, "num_frames": 2, "size": OUT}
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"depth_mm": np.ones((H, W + 1), np.uint16)}, "depth image is 120x161"),
        ({"depth_mm": np.ones((H, W), np.float32)}, "uint16"),
        ({"rgb": np.ones((H, W, 3), np.float32)}, r"\(H, W, 3\) uint8"),
        ({"depth_mm": np.zeros((H, W), np.uint16)}, "no valid pixel"),
        ({"num_frames": 0}, "num_frames must be a positive integer"),
        ({"size": (0, 80)}, "size must be two positive integers"),
        ({"max_angle_deg": 90.0}, r"max_angle_deg must be a number in \[0, 45\]"),
    ],
)
def test_bad_inputs_raise_input_error(changes, message):
    args = _bad(**changes)
    with pytest.raises(InputError, match=message):
        make_demo_frames(args.pop("rgb"), args.pop("depth_mm"), args.pop("K"), **args)


def test_render_view_rejects_colours_that_do_not_match_the_points():
    points = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match="one row per point"):
        render_view(points, np.zeros((3, 3), np.uint8), K_SYNTH, np.eye(4), 10, 10)
