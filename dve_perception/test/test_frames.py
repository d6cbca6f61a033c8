"""Frame value objects, and how intrinsics and depth follow the network's output resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.camera import backproject_depth
from dve_perception.errors import InputError
from dve_perception.frames import (
    EmbeddingFrame,
    RGBDFrame,
    sample_depth_at_centres,
    scale_intrinsics,
    to_embedding_frame,
)

K = np.array([[500.0, 0.0, 319.5], [0.0, 510.0, 239.5], [0.0, 0.0, 1.0]])


def _frame(h=480, w=640, depth=None, **kw):
    depth = np.full((h, w), 2.0, np.float32) if depth is None else depth
    return RGBDFrame(np.zeros((h, w, 3), np.uint8), depth, K, 7, **kw)


def _project(K, p):
    uvw = K @ p
    return uvw[:2] / uvw[2]


@pytest.mark.parametrize("s", [0.25, 0.5, 1 / 9, 2.0])
def test_scaled_intrinsics_map_pixel_centres_onto_pixel_centres(s):
    p = np.array([0.3, -0.2, 2.5])
    u, v = _project(K, p)
    u2, v2 = _project(scale_intrinsics(K, s, s), p)
    np.testing.assert_allclose([u2, v2], [(u + 0.5) * s - 0.5, (v + 0.5) * s - 0.5], atol=1e-9)


def test_depth_is_sampled_at_the_centre_of_each_output_pixel():
    depth = torch.arange(1080 * 1440, dtype=torch.float32).reshape(1080, 1440)
    out = sample_depth_at_centres(depth, (120, 160))
    rows, cols = (out // 1440).long(), (out % 1440).long()
    assert rows[:, 0].tolist() == [9 * i + 4 for i in range(120)]
    assert cols[0].tolist() == [9 * j + 4 for j in range(160)]


def test_embedding_pixels_back_project_to_the_points_of_their_source_pixels():
    # A tilted plane: every pixel's depth differs, so a half-pixel error would show.
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)
    n, d = np.array([0.1, -0.2, 1.0]), 2.0  # plane n . p = d
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    depth = (d / (rays @ n)).astype(np.float32)
    frame = _frame(depth=depth)
    out = to_embedding_frame(frame, torch.ones(8, 120, 160))
    points = backproject_depth(out.depth_m, out.K).double().numpy()
    # Output pixel i covers source pixels [4i, 4i + 4) with its centre at 4i + 1.5; nearest
    # sampling takes pixel 4i + 2, so each point is off the plane by at most half a source pixel
    # (about 2 mm here). A cx scaled without the half-pixel shift would be 1.5 pixels off.
    on_plane = np.abs(points @ n - d) / np.linalg.norm(n)
    naive_K = K * np.array([[0.25], [0.25], [1.0]])
    naive = backproject_depth(out.depth_m, naive_K).double().numpy()
    naive_off = np.abs(naive @ n - d) / np.linalg.norm(n)
    assert on_plane.max() < 0.0025
    assert naive_off.max() > 3 * on_plane.max()
    assert out.depth_m.shape == (120, 160) and out.stamp_ns == 7


def test_rgbd_frame_replaces_nan_and_negative_depth_by_zero():
    depth = np.full((4, 5), 1.5, np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, -1.0, np.inf
    frame = _frame(4, 5, depth)
    assert frame.depth_m[0, 0] == frame.depth_m[1, 1] == frame.depth_m[2, 2] == 0.0
    assert np.isnan(depth[0, 0])  # the caller's array is left alone


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rgb": np.zeros((4, 5, 3), np.float32)}, "uint8"),
        ({"depth_m": np.zeros((4, 5), np.uint16)}, "float32 metres"),
        ({"depth_m": np.zeros((4, 6), np.float32)}, "register depth to colour"),
        ({"K": np.eye(4)}, r"\(3, 3\)"),
        ({"stamp_ns": 1.5}, "stamp_ns must be an integer"),
        ({"T_world_cam": np.diag([1.0, 1.0, -1.0, 1.0])}, "reflection"),
    ],
)
def test_rgbd_frame_rejects_malformed_fields(kwargs, match):
    fields = dict(
        rgb=np.zeros((4, 5, 3), np.uint8), depth_m=np.zeros((4, 5), np.float32), K=K, stamp_ns=0
    )
    with pytest.raises(InputError, match=match):
        RGBDFrame(**{**fields, **kwargs})


def test_embedding_frame_needs_depth_at_the_embedding_size():
    with pytest.raises(InputError, match=r"shape \(3, 4\)"):
        EmbeddingFrame(torch.zeros(8, 3, 4), torch.zeros(3, 5), K, 0)
    with pytest.raises(InputError, match="positive and finite"):
        scale_intrinsics(K, 0.0, 1.0)
