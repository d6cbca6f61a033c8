"""Pinhole intrinsics, camera poses and trajectories for the synthetic scenes.

Conventions: the camera optical frame has x right, y down, z forward; the world has z up.
`T_world_cam` maps camera-frame points into the world (p_world = T_world_cam @ p_cam). Pixel
(u, v) is (column, row) with pixel centres at integer coordinates (OpenCV), so the ray of pixel
(u, v) is ((u - cx) / fx, (v - cy) / fy, 1) in the camera frame.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import TYPE_CHECKING

import numpy as np

from dve_perception.camera import check_intrinsics
from dve_perception.errors import InputError

if TYPE_CHECKING:  # synthetic_scene imports this module's validators
    from dve_perception.simulation.synthetic_scene import SyntheticScene

__all__ = ["look_at", "orbit_trajectory", "pinhole_intrinsics"]

#: World up direction (z up).
_WORLD_UP = np.array([0.0, 0.0, 1.0])
#: Poses from `orbit_trajectory` keep at least this distance from walls and boxes.
_POSE_MARGIN_M = 0.1


def pinhole_intrinsics(width: int, height: int, horizontal_fov_deg: float = 69.0) -> np.ndarray:
    """Intrinsics of an ideal pinhole camera with square pixels and a centred principal point.

    The image spans u in [-0.5, width - 0.5] (pixel centres at integers), so the horizontal
    field of view covers `width` pixels: fx = width / (2 tan(fov / 2)).

    Args:
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        horizontal_fov_deg: horizontal field of view in degrees, in (0, 180). The default matches
            an Intel RealSense D435 colour camera.

    Returns:
        (3, 3) float64 K with fx = fy, cx = (width - 1) / 2, cy = (height - 1) / 2, zero skew.

    Raises:
        InputError: a size is not a positive integer or the field of view is out of range.
    """
    _check_image_size(height, width)
    if not isinstance(horizontal_fov_deg, Real) or not 0.0 < horizontal_fov_deg < 180.0:
        raise InputError(
            f"horizontal_fov_deg must be a number in (0, 180), got {horizontal_fov_deg!r}"
        )
    f = width / (2.0 * math.tan(math.radians(horizontal_fov_deg) / 2.0))
    return np.array(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def look_at(eye_world: np.ndarray, target_world: np.ndarray) -> np.ndarray:
    """Pose of a camera at `eye_world` whose optical axis points at `target_world`.

    The camera is level: its x axis (image right) is horizontal and its y axis (image down) has a
    negative world-z component, as for a camera held upright.

    Args:
        eye_world: (3,) camera centre in the world frame, metres.
        target_world: (3,) point the optical axis passes through, world frame, metres.

    Returns:
        (4, 4) float64 T_world_cam, a rigid transform with det(R) = +1 whose third rotation
        column (camera z) is the unit vector from eye to target.

    Raises:
        InputError: a point is not a finite (3,) vector, eye and target coincide, or the
            camera would look straight up or down (the roll is then undefined).
    """
    eye = _as_point(eye_world, "eye_world")
    target = _as_point(target_world, "target_world")
    forward = target - eye
    distance = float(np.linalg.norm(forward))
    if distance < 1e-9:
        raise InputError(f"look_at: eye_world and target_world coincide at {eye.tolist()}")
    z_cam = forward / distance
    # Camera x = forward x up: horizontal and pointing to the image right of a level camera.
    x_cam = np.cross(z_cam, _WORLD_UP)
    x_norm = float(np.linalg.norm(x_cam))
    if x_norm < 1e-6:
        raise InputError(
            f"look_at: the view direction {z_cam.tolist()} is vertical (straight up or down), "
            "so the camera roll is undefined; move the target sideways"
        )
    x_cam /= x_norm
    y_cam = np.cross(z_cam, x_cam)  # completes a right-handed frame; points down in the world
    T_world_cam = np.eye(4)
    T_world_cam[:3, 0] = x_cam
    T_world_cam[:3, 1] = y_cam
    T_world_cam[:3, 2] = z_cam
    T_world_cam[:3, 3] = eye
    return T_world_cam


def orbit_trajectory(
    scene: SyntheticScene,
    num_frames: int,
    radius_m: float = 2.0,
    height_m: float = 1.5,
    target_height_m: float = 0.4,
    seed: int = 0,
) -> list[np.ndarray]:
    """Camera poses circling the room centre and looking into the room, with seeded jitter.

    Camera k sits at angle 2 pi k / num_frames (+- 0.05 rad) on a circle of `radius_m` (+- 0.1 m)
    at `height_m` (+- 0.1 m) and looks at a point within 0.3 m of the room centre at
    `target_height_m` (+- 0.1 m). With the defaults and `make_room_scene`, 24 frames observe
    most of every box's top and side faces.

    Args:
        scene: the scene (for its room size and boxes).
        num_frames: number of poses (>= 1).
        radius_m: nominal horizontal distance of the cameras from the room centre, metres.
        height_m: nominal camera height above the floor, metres.
        target_height_m: nominal height of the look-at points, metres.
        seed: seed of the jitter; the same seed gives the same poses.

    Returns:
        `num_frames` (4, 4) float64 T_world_cam optical-frame poses.

    Raises:
        InputError: `num_frames` < 1, or a camera would come within 0.1 m of a wall or box, or
            leave the space between floor and wall top.
    """
    if not isinstance(num_frames, Integral) or num_frames < 1:
        raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
    rng = np.random.default_rng(seed)
    angles = 2.0 * math.pi * np.arange(num_frames) / num_frames
    angles = angles + rng.uniform(-0.05, 0.05, num_frames)
    radii = radius_m + rng.uniform(-0.1, 0.1, num_frames)
    heights = height_m + rng.uniform(-0.1, 0.1, num_frames)
    targets = np.column_stack(
        [
            rng.uniform(-0.3, 0.3, (num_frames, 2)),
            target_height_m + rng.uniform(-0.1, 0.1, num_frames),
        ]
    )
    half = scene.room_size_m[:2] / 2.0 - _POSE_MARGIN_M
    poses = []
    for k in range(num_frames):
        eye = np.array([radii[k] * math.cos(angles[k]), radii[k] * math.sin(angles[k]), heights[k]])
        in_room = (np.abs(eye[:2]) <= half).all() and 0.0 < eye[2] < scene.room_size_m[2]
        in_box = any(
            ((eye >= b.min_m - _POSE_MARGIN_M) & (eye <= b.max_m + _POSE_MARGIN_M)).all()
            for b in scene.boxes
        )
        if not in_room or in_box:
            raise InputError(
                f"orbit camera {k} at {np.round(eye, 3).tolist()} is outside the room (size "
                f"{scene.room_size_m.tolist()}) or within {_POSE_MARGIN_M} m of a wall or box; "
                f"use a smaller radius_m (got {radius_m}) or a height_m between floor and wall top"
            )
        poses.append(look_at(eye, targets[k]))
    return poses


def _check_image_size(height: object, width: object) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value <= 0:
            raise InputError(f"image {name} must be a positive integer, got {value!r}")


def _as_point(value: object, name: str) -> np.ndarray:
    point = np.asarray(value, dtype=np.float64)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise InputError(f"{name} must be a finite (3,) vector in metres, got {value!r}")
    return point


def _validated_intrinsics(K: object) -> np.ndarray:
    """Return K as a float64 array after checking it is a zero-skew pinhole matrix."""
    K_arr = np.asarray(K, dtype=np.float64)
    # The ray formula ((u - cx) / fx, (v - cy) / fy, 1) assumes exactly this layout; the rest
    # (shape, finite, positive focal lengths) is the core check.
    if K_arr.shape == (3, 3) and (
        K_arr[0, 1] != 0.0 or K_arr[1, 0] != 0.0 or not np.array_equal(K_arr[2], [0.0, 0.0, 1.0])
    ):
        raise InputError(
            f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (zero skew), got {K_arr.tolist()}"
        )
    return check_intrinsics(K_arr)
