"""A short posed RGB-D recording made from one real RGB-D frame, for the demo.

`make_demo_frames` lifts the frame to a coloured point cloud and renders it again, by z-buffered
forward splatting, from a virtual camera that swings around the middle of the scene. The views
are exact re-projections of measured geometry (no hallucinated content): surfaces the original
camera did not see stay invalid (depth 0, black), as they would for a real sensor.

Frames (see `make_demo_frames`): the world is z-up, with its origin at the original camera
centre, x along the original optical axis, y to the left and z up (ROS body convention). The
original camera's roll and tilt are unknown, so "up" is the original image's up, not gravity.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

from dve_perception.camera import backproject_depth, check_intrinsics, check_pose, transform_points
from dve_perception.errors import InputError
from dve_perception.frames import RGBDFrame, scale_intrinsics
from dve_perception.simulation.camera import look_at

__all__ = ["SAMPLE_INTRINSICS", "make_demo_frames", "render_view", "sample_intrinsics"]

# The bundled frame (data/sample, a Kinect v2 living room) comes without intrinsics. Assumption:
# the Kinect v2 colour camera's factory focal length is about 1060 px at 1920x1080 (published
# calibrations give 1050-1080, fx = fy), and the 1440x1080 image is a horizontal centre crop of
# it: 1440/1080 is 4:3, not the sensor's 16:9, and the crop keeps the rows (and so f) intact.
# Checked on the frame itself: with f = 1060 the fitted left and back walls meet at 89.8 deg
# (87-88 deg at f = 1000 or 1120; 74 deg if the 4:3 image were the 16:9 one squeezed).
_KINECT_V2_FOCAL_PX = 1060.0
_KINECT_V2_HEIGHT_PX = 1080

#: Points closer to the camera than this (metres, along the optical axis) are not rendered.
_NEAR_M = 0.1
#: Back-projected points per output pixel along each axis (at least): with a 2x2 splat any
#: density >= 1 leaves no holes in the original view; the margin covers the mild magnification
#: of surfaces that turn towards the moving camera.
_MIN_POINT_DENSITY = 1.5
#: Splats within this fraction of a pixel's nearest depth count as the same (front) surface:
#: above Kinect-class depth noise (~1 %), below the gaps between objects and what is behind them.
_SURFACE_TOLERANCE = 0.03
#: Optical frame (x right, y down, z forward) -> world (x forward, y left, z up).
_R_WORLD_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def sample_intrinsics(width: int = 1440, height: int = 1080) -> np.ndarray:
    """Assumed intrinsics of the bundled Kinect v2 frame, or of a resized copy of it.

    The frame ships without calibration, so this uses the Kinect v2 colour camera's typical
    factory focal length (about 1060 px at 1080 rows, fx = fy) with the principal point at the
    image centre, treating the image as a horizontal centre crop of the 1920x1080 sensor image.
    An error of a few percent in f only scales the reconstructed room by about as much (and
    bends walls by a degree or two), which does not matter for a demo.

    Args:
        width: image width in pixels; 1440 for the bundled frame.
        height: image height in pixels; 1080 for the bundled frame. f scales with it, so a
            uniformly resized copy of the frame gets matching intrinsics.

    Returns:
        (3, 3) float64 K with fx = fy = 1060 * height / 1080, cx = (width - 1) / 2,
        cy = (height - 1) / 2.

    Raises:
        InputError: a size is not a positive integer.
    """
    _check_size((height, width), "(height, width)")
    return _kinect_v2_intrinsics(width, height)


def _kinect_v2_intrinsics(width: int, height: int) -> np.ndarray:
    f = _KINECT_V2_FOCAL_PX * height / _KINECT_V2_HEIGHT_PX
    return np.array(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


#: Intrinsics assumed for the bundled 1440x1080 sample frame (read-only; see `sample_intrinsics`).
SAMPLE_INTRINSICS = _kinect_v2_intrinsics(1440, 1080)
SAMPLE_INTRINSICS.setflags(write=False)


def render_view(
    points_world: np.ndarray,
    colors: np.ndarray,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a coloured point cloud into a pinhole camera with a z-buffer.

    Each point is splatted onto the 2x2 pixels whose centres surround its projection, so a cloud
    with at least one point per pixel along each axis leaves no holes. Per pixel, only points
    within 3 % of the nearest depth compete (so near surfaces hide far ones), and of those the
    one projecting closest to the pixel centre gives the depth and colour.

    Args:
        points_world: (N, 3) float points in the world frame, metres.
        colors: (N, 3) uint8 RGB colour of each point.
        K: (3, 3) intrinsics of the rendered image.
        T_world_cam: (4, 4) pose of the camera's optical frame in the world.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        (rgb, depth_m): (height, width, 3) uint8 and (height, width) float32 depth along the
        optical axis in metres; pixels no point reaches are black with depth 0. Points closer
        than 0.1 m or behind the camera are ignored.

    Raises:
        InputError: wrong shapes or dtypes, an invalid K or pose, or a non-positive size.
    """
    points, colors = _check_cloud(points_world, colors)
    K, T = check_intrinsics(K), check_pose(T_world_cam)
    _check_size((height, width), "(height, width)")
    u, v, z, source = _project(points, K, T, height, width)
    pixel, centre_dist = _footprint(u, v, width)
    splat = np.tile(np.arange(len(z)), 4)  # the point behind each footprint pixel
    depth = z[splat]
    padded_size = (height + 2) * (width + 2)
    zbuffer = np.full(padded_size, np.inf, dtype=np.float32)
    np.minimum.at(zbuffer, pixel, depth)
    # Among the splats on the front surface of a pixel, the one projecting closest to the pixel
    # centre wins: taking the nearest depth outright would bias noisy surfaces towards the
    # camera (the minimum of ~9 noisy samples) and blur the colours.
    front = depth <= zbuffer[pixel] * np.float32(1.0 + _SURFACE_TOLERANCE)
    pixel, centre_dist, splat = pixel[front], centre_dist[front], splat[front]
    closest = np.full(padded_size, np.inf, dtype=np.float32)
    np.minimum.at(closest, pixel, centre_dist)
    # Exact ties are equally close; whichever assignment lands last wins.
    wins = centre_dist == closest[pixel]
    winner = np.full(padded_size, len(z), dtype=np.int64)  # len(z): no point, see below
    winner[pixel[wins]] = splat[wins]
    winner = winner.reshape(height + 2, width + 2)[1:-1, 1:-1]
    # One extra entry at index len(z) gives empty pixels depth 0 and black.
    depth_m = np.append(z, np.float32(0.0))[winner]
    black = np.append(source, len(colors))
    rgb = np.concatenate([colors, np.zeros((1, 3), dtype=np.uint8)])[black[winner]]
    return rgb, depth_m


def _project(
    points: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v), depth z and index of the points that can reach the image.

    Kept: points farther than `_NEAR_M` in front of the camera that project within one pixel
    of the image (their 2x2 footprint may still cover an image pixel).
    """
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    # p_cam = R^T (p_world - t), spelt out per axis: a BLAS matmul with an inner size of 3 gains
    # nothing and its threads stall when the cores are busy.
    offset = points - t.astype(np.float32)
    x, y, z = (
        offset[:, 0] * float(R[0, i])
        + offset[:, 1] * float(R[1, i])
        + offset[:, 2] * float(R[2, i])
        for i in range(3)
    )
    source = np.flatnonzero(z > _NEAR_M)
    x, y, z = x[source], y[source], z[source]
    # Python floats keep the arithmetic in float32 (NumPy 2 promotion); float64 K entries would not.
    fx, skew, cx, fy, cy = (float(K[i, j]) for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2)))
    u = (fx * x + skew * y) / z + cx
    v = fy * y / z + cy
    keep = (u > -1.0) & (u < width) & (v > -1.0) & (v < height)
    return u[keep], v[keep], z[keep], source[keep]


def _footprint(u: np.ndarray, v: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into a buffer with a one-pixel border of the 2x2 pixels around (u, v).

    The border makes every footprint pixel of a point projecting within one pixel of the image
    valid, so no per-corner bounds masks are needed; the caller cuts the border off.

    Returns:
        (4 M,) int64 indices, corner by corner, and the squared distances from each projection
        to those pixels' centres.
    """
    padded_w = width + 2
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    corner = (v0.astype(np.int64) + 1) * padded_w + u0.astype(np.int64) + 1
    pixel = np.concatenate([corner + offset for offset in (0, 1, padded_w, padded_w + 1)])
    gu, gv = (1.0 - fu) ** 2, (1.0 - fv) ** 2
    fu, fv = fu**2, fv**2
    return pixel, np.concatenate([fu + fv, gu + fv, fu + gv, gu + gv])


def make_demo_frames(
    rgb: np.ndarray,
    depth_mm: np.ndarray,
    K: np.ndarray,
    *,
    num_frames: int = 8,
    size: tuple[int, int] = (360, 480),
    max_angle_deg: float = 12.0,
    frame_id: str = "camera_color_optical_frame",
    start_stamp_ns: int = 1_000_000_000,
    period_ns: int = 100_000_000,
) -> list[RGBDFrame]:
    """Render a short posed recording from one RGB-D frame by moving a virtual camera.

    World frame: z-up, origin at the original camera centre, x along its optical axis, y left
    (the original optical frame rotated to the ROS body convention). Trajectory: the camera
    stays on a sphere around a pivot on the original optical axis at the median scene depth,
    always looking at the pivot; frame i has phase p = 2 pi i / num_frames, yaw
    max_angle * sin(p) and elevation (max_angle / 6) * (1 - cos p): a closed loop that starts at
    the original view, swings to +max_angle, rises by up to max_angle / 3 while it crosses to
    -max_angle, and comes back down. Frame 0 is therefore the original view at `size`.

    The frame is subsampled before lifting (every s-th pixel, keeping >= 1.5 points per output
    pixel along each axis): 1440x1080 -> 360x480 uses every 2nd pixel, ~390k points.

    Args:
        rgb: (H, W, 3) uint8 colour image, registered to the depth image.
        depth_mm: (H, W) uint16 depth in millimetres, 0 = invalid.
        K: (3, 3) intrinsics at (H, W), e.g. `SAMPLE_INTRINSICS` for the bundled frame.
        num_frames: number of frames (>= 1).
        size: (height, width) of the rendered frames; K is scaled to it.
        max_angle_deg: largest yaw away from the original view, degrees, in [0, 45].
        frame_id: optical frame name stored in each frame.
        start_stamp_ns: stamp of frame 0; frame i is stamped start + i * period.
        period_ns: time between frames in nanoseconds (> 0).

    Returns:
        `num_frames` RGBDFrames with T_world_cam set; depth 0 where the original camera saw
        nothing (disoccluded surfaces and the space outside its field of view).

    Raises:
        InputError: rgb and depth sizes differ, wrong dtypes, depth without a valid pixel, or
            a parameter out of range.
    """
    _check_frame_inputs(rgb, depth_mm, num_frames, max_angle_deg, start_stamp_ns, period_ns)
    K = check_intrinsics(K)
    _check_size(size, "size")
    height, width = int(size[0]), int(size[1])
    (H, W) = depth_mm.shape
    points, colors, pivot_depth = _lift(rgb, depth_mm, K, _stride(H, W, height, width))
    K_out = scale_intrinsics(K, width / W, height / H)
    poses = _loop(pivot_depth, num_frames, math.radians(max_angle_deg))
    frames = []
    for i, T_world_cam in enumerate(poses):
        view_rgb, view_depth = render_view(points, colors, K_out, T_world_cam, height, width)
        frames.append(
            RGBDFrame(
                rgb=view_rgb,
                depth_m=view_depth,
                K=K_out,
                stamp_ns=int(start_stamp_ns) + i * int(period_ns),
                frame_id=frame_id,
                T_world_cam=T_world_cam,
            )
        )
    return frames


def _lift(
    rgb: np.ndarray, depth_mm: np.ndarray, K: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """World points and colours of every `stride`-th valid pixel, and the median depth."""
    H, W = depth_mm.shape
    # Start half a stride in, so the kept pixels sit in the middle of the blocks they stand for.
    rows = np.arange(stride // 2, H, stride)
    cols = np.arange(stride // 2, W, stride)
    flat = (rows[:, None] * W + cols[None, :]).reshape(-1)
    flat = flat[depth_mm.reshape(-1)[flat] > 0]
    if flat.size == 0:
        raise InputError(
            f"depth image has too few valid pixels to render views: none of the pixels on the "
            f"every-{stride}th-pixel sampling grid is non-zero; pass a denser depth image"
        )
    depth_m = torch.from_numpy(depth_mm.astype(np.float32) / np.float32(1000.0))
    p_cam = backproject_depth(depth_m, K, torch.from_numpy(flat))
    T_world_cam0 = np.eye(4)
    T_world_cam0[:3, :3] = _R_WORLD_OPTICAL
    points = transform_points(T_world_cam0, p_cam).numpy()
    colors = rgb.reshape(-1, 3)[flat]
    return points, colors, float(np.median(p_cam[:, 2].numpy()))


def _loop(radius_m: float, num_frames: int, max_angle_rad: float) -> list[np.ndarray]:
    """Poses on a sphere of `radius_m` around the pivot (radius_m, 0, 0), looking at it."""
    pivot = np.array([radius_m, 0.0, 0.0])
    poses = []
    for i in range(num_frames):
        phase = 2.0 * math.pi * i / num_frames
        yaw = max_angle_rad * math.sin(phase)
        elevation = max_angle_rad / 6.0 * (1.0 - math.cos(phase))
        offset = np.array(
            [
                -math.cos(elevation) * math.cos(yaw),
                -math.cos(elevation) * math.sin(yaw),
                math.sin(elevation),
            ]
        )
        # look_at uses world z as up, so every view stays level like the original one.
        poses.append(look_at(pivot + radius_m * offset, pivot))
    return poses


def _stride(H: int, W: int, height: int, width: int) -> int:
    """Largest pixel stride that keeps >= _MIN_POINT_DENSITY points per output pixel per axis."""
    return max(1, int(min(H / height, W / width) / _MIN_POINT_DENSITY))


def _check_frame_inputs(
    rgb: object,
    depth_mm: object,
    num_frames: object,
    max_angle_deg: object,
    start_stamp_ns: object,
    period_ns: object,
) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise InputError(f"rgb must be an (H, W, 3) uint8 array, got {_describe(rgb)}")
    if rgb.shape[2] != 3:
        raise InputError(f"rgb must be an (H, W, 3) uint8 array, got {_describe(rgb)}")
    if not isinstance(depth_mm, np.ndarray) or depth_mm.dtype != np.uint16 or depth_mm.ndim != 2:
        raise InputError(
            f"depth_mm must be an (H, W) uint16 array of millimetres, got {_describe(depth_mm)}"
        )
    if depth_mm.shape != rgb.shape[:2] or depth_mm.size == 0:
        raise InputError(
            f"depth image is {depth_mm.shape[0]}x{depth_mm.shape[1]} but the colour image is "
            f"{rgb.shape[0]}x{rgb.shape[1]}; they must be registered at the same size"
        )
    if not depth_mm.any():
        raise InputError("depth image has no valid pixel (all zero); nothing to render")
    if isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 1:
        raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not isinstance(max_angle_deg, Real) or not 0.0 <= max_angle_deg <= 45.0:
        raise InputError(f"max_angle_deg must be a number in [0, 45], got {max_angle_deg!r}")
    if isinstance(start_stamp_ns, bool) or not isinstance(start_stamp_ns, Integral):
        raise InputError(f"start_stamp_ns must be an integer, got {start_stamp_ns!r}")
    if isinstance(period_ns, bool) or not isinstance(period_ns, Integral) or period_ns <= 0:
        raise InputError(f"period_ns must be a positive integer, got {period_ns!r}")


def _check_cloud(points: object, colors: object) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or not np.issubdtype(points.dtype, np.number):
        raise InputError(f"points_world must be an (N, 3) float array, got {_describe(points)}")
    colors = np.asarray(colors)
    if colors.dtype != np.uint8 or colors.shape != points.shape:
        raise InputError(
            f"colors must be an (N, 3) uint8 array with one row per point ({points.shape[0]}), "
            f"got {_describe(colors)}"
        )
    return points.astype(np.float32, copy=False), colors


def _check_size(size: object, name: str) -> None:
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    if not ok or not all(
        isinstance(n, Integral) and not isinstance(n, bool) and n > 0 for n in size
    ):
        raise InputError(f"{name} must be two positive integers, got {size!r}")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
