"""Pinhole intrinsics, rigid poses and back-projection, validated at the point of use.

Conventions: the camera frame is the optical frame (x right, y down, z forward, REP 103 `_optical`
frames); a pixel (u, v) is (column, row) with pixel centres at integer coordinates, as in OpenCV
and `sensor_msgs/CameraInfo`; `T_world_cam` maps camera points into the world frame,
`p_world = T_world_cam @ p_cam`.
"""

from __future__ import annotations

import numpy as np
import torch

from dve_perception.errors import InputError

__all__ = ["backproject_depth", "check_intrinsics", "check_pose", "transform_points"]

#: A rotation counts as rigid when R^T R is the identity and det R = 1 to this tolerance; poses
#: that went through float32 messages or quaternion normalisation are off by ~1e-7.
_RIGID_TOLERANCE = 1e-4


def check_intrinsics(K: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate a pinhole camera matrix and return it as a (3, 3) float64 array.

    Raises:
        InputError: wrong shape, non-finite values, non-positive focal lengths, or a last row
            other than (0, 0, 1).
    """
    K = _as_float64("K", K, (3, 3), "intrinsics matrix")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"K must have positive focal lengths fx, fy; got {K[0, 0]}, {K[1, 1]}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0:
        raise InputError(
            f"K must be an upper-triangular pinhole matrix with last row 0 0 1, got\n{K}"
        )
    return K


def check_pose(T_world_cam: np.ndarray | torch.Tensor, name: str = "T_world_cam") -> np.ndarray:
    """Validate a rigid 4x4 transform and return it as a float64 array.

    Raises:
        InputError: wrong shape, NaN/inf, a last row other than (0, 0, 0, 1), or a rotation block
            that is not a proper rotation (scaled, sheared or mirrored).
    """
    T = _as_float64(name, T_world_cam, (4, 4), "homogeneous transform")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{name} must have last row 0 0 0 1, got {T[3].tolist()}")
    R = T[:3, :3]
    orthogonality = np.abs(R.T @ R - np.eye(3)).max()
    if orthogonality > _RIGID_TOLERANCE:
        raise InputError(
            f"{name} is not a rigid transform: its rotation part is not orthonormal "
            f"(|R^T R - I| = {orthogonality:.2e}); check that the pose is a rotation plus "
            "translation without scale or shear"
        )
    if np.linalg.det(R) < 0:
        raise InputError(
            f"{name} is not a rigid transform: its rotation part is a reflection (det R = -1); "
            "check the handedness of the frame conventions"
        )
    return T


def backproject_depth(
    depth_m: torch.Tensor, K: np.ndarray, pixels: torch.Tensor | None = None
) -> torch.Tensor:
    """Lift pixels with depth to 3D points in the camera (optical) frame.

    Args:
        depth_m: (h, w) float depth along the optical axis in metres (z, not ray length).
        K: (3, 3) intrinsics at this resolution (already validated).
        pixels: optional (M,) int64 flat pixel indices (row * w + col) to lift; all if None.

    Returns:
        (M, 3) float32 points p_cam, on depth_m's device.
    """
    h, w = depth_m.shape
    flat = torch.arange(h * w, device=depth_m.device) if pixels is None else pixels
    z = depth_m.reshape(-1)[flat].to(torch.float32)
    u = (flat % w).to(torch.float32)
    v = torch.div(flat, w, rounding_mode="floor").to(torch.float32)
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    y = (v - cy) / fy * z
    x = ((u - cx) * z - skew * y) / fx
    return torch.stack([x, y, z], dim=1)


def transform_points(T: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 transform to (M, 3) points: returns T[:3, :3] @ p + T[:3, 3] per row."""
    rotation = torch.as_tensor(T[:3, :3], dtype=points.dtype, device=points.device)
    translation = torch.as_tensor(T[:3, 3], dtype=points.dtype, device=points.device)
    return points @ rotation.T + translation


def _as_float64(
    name: str, value: np.ndarray | torch.Tensor, shape: tuple[int, ...], what: str
) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{name} must be a numeric {shape} array, got {type(value).__name__}"
        ) from err
    if array.shape != shape:
        raise InputError(f"{name} must be a {shape} {what}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or inf:\n{array}")
    return array
