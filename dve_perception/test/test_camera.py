"""Pose and intrinsics validation and back-projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.camera import backproject_depth, check_intrinsics, check_pose, transform_points
from dve_perception.errors import InputError

K = np.array([[500.0, 0.0, 319.5], [0.0, 400.0, 239.5], [0.0, 0.0, 1.0]])


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_backprojection_inverts_the_pinhole_projection():
    depth = torch.rand(48, 64) * 4 + 0.5
    points = backproject_depth(depth, K).numpy().astype(np.float64)
    projected = (K @ points.T).T
    uv = projected[:, :2] / projected[:, 2:]
    v, u = np.divmod(np.arange(48 * 64), 64)
    np.testing.assert_allclose(uv, np.stack([u, v], axis=1), atol=1e-3)
    np.testing.assert_allclose(points[:, 2], depth.reshape(-1).numpy(), rtol=1e-6)


def test_backprojection_of_selected_pixels_matches_the_full_image():
    depth = torch.rand(10, 12) + 1
    pixels = torch.tensor([0, 5, 37, 119])
    assert torch.equal(backproject_depth(depth, K, pixels), backproject_depth(depth, K)[pixels])


def test_transform_points_applies_rotation_then_translation():
    T = np.eye(4)
    T[:3, :3] = _rotation_z(np.pi / 2)
    T[:3, 3] = [1.0, 2.0, 3.0]
    out = transform_points(T, torch.tensor([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(out.numpy(), [[1.0, 3.0, 3.0]], atol=1e-6)


def test_check_pose_accepts_rigid_transforms_with_float32_noise():
    T = np.eye(4)
    T[:3, :3] = _rotation_z(0.3).astype(np.float32)
    assert check_pose(T).dtype == np.float64


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (np.eye(3), "shape"),
        (np.full((4, 4), np.nan), "NaN or inf"),
        (np.diag([2.0, 2.0, 2.0, 1.0]), "not a rigid transform"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "not a rigid transform"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "last row"),
    ],
)
def test_check_pose_rejects_bad_transforms(matrix, match):
    with pytest.raises(InputError, match=match):
        check_pose(matrix)


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (np.eye(4), "shape"),
        (np.diag([0.0, 1.0, 1.0]), "positive focal"),
        (np.array([[1.0, 0, 0], [0, 1, 0], [0, 1, 1]]), "last row"),
        ("K", "numeric"),
    ],
)
def test_check_intrinsics_rejects_bad_matrices(matrix, match):
    with pytest.raises(InputError, match=match):
        check_intrinsics(matrix)
