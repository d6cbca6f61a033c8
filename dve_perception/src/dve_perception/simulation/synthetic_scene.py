"""A box-world room and exact ray casting of it.

The scene is a rectangular room centred at the world origin with the floor at z = 0 (world z up),
four walls of one shared "wall" label and no ceiling, plus axis-aligned boxes standing on the
floor. Rendering is exact and vectorised ray casting, so the hit points are known to float
precision and ground truth never has to be recovered by back-projecting depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from dve_perception.camera import check_pose
from dve_perception.errors import InputError
from dve_perception.simulation.camera import (
    _as_point,
    _check_image_size,
    _validated_intrinsics,
)

__all__ = ["Box", "RenderedFrame", "SyntheticScene", "make_room_scene", "render"]

#: Hits closer than this along the ray (metres of camera depth) are ignored, so a camera placed
#: exactly on a surface does not see that surface.
_MIN_DEPTH_M = 1e-9

# Layout of `make_room_scene`: (name, size_m, centre_xy_m). The boxes sit in a ring of radius
# ~1 m around an empty centre, well inside the default 2 m orbit, so every top and side face is
# seen from the front by some orbit camera and across the empty centre by others.
_ROOM_SIZE_M = (6.0, 5.0, 2.5)
_ROOM_OBJECTS = (
    ("table", (0.6, 1.0, 0.75), (1.05, 0.0)),
    ("cabinet", (0.5, 0.4, 1.0), (0.3, 1.1)),
    ("stool", (0.35, 0.35, 0.45), (-0.75, 0.75)),
    ("storage crate", (0.6, 0.4, 0.35), (-0.95, -0.3)),
    ("trash bin", (0.3, 0.3, 0.5), (-0.3, -1.1)),
    ("red mug box", (0.3, 0.3, 0.3), (0.55, -1.0)),
)


@dataclass(frozen=True, eq=False)
class Box:
    """An axis-aligned box in the world frame (compared by identity: it holds arrays).

    Attributes:
        name: human-readable object name, e.g. "table".
        label: semantic label id, an index into `SyntheticScene.label_names`.
        center_m: (3,) float64 read-only centre in the world frame, metres.
        size_m: (3,) float64 read-only full extents along world x, y, z, metres (> 0).
    """

    name: str
    label: int
    center_m: np.ndarray
    size_m: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"Box name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.label, Integral) or self.label < 0:
            raise InputError(f"Box {self.name!r}: label must be an int >= 0, got {self.label!r}")
        size = np.array(self.size_m, dtype=np.float64)
        if size.shape != (3,) or not np.isfinite(size).all() or (size <= 0.0).any():
            raise InputError(
                f"Box {self.name!r}: size_m must be three positive extents in metres, "
                f"got {self.size_m!r}"
            )
        center = _as_point(self.center_m, f"Box {self.name!r} center_m")
        size.flags.writeable = False
        center.flags.writeable = False
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "size_m", size)
        object.__setattr__(self, "center_m", center)

    @property
    def min_m(self) -> np.ndarray:
        """(3,) float64 lower corner in the world frame, metres."""
        return self.center_m - self.size_m / 2.0

    @property
    def max_m(self) -> np.ndarray:
        """(3,) float64 upper corner in the world frame, metres."""
        return self.center_m + self.size_m / 2.0


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A room with a floor, four walls (no ceiling) and boxes, plus one prototype per label.

    The room is centred at the world origin: x in [-sx/2, sx/2], y in [-sy/2, sy/2], floor at
    z = 0 and walls up to z = wall height. All walls share the label named "wall".

    Attributes:
        boxes: objects standing on the floor, inside the room footprint.
        room_size_m: (3,) float64 read-only (x extent, y extent, wall height), metres.
        label_names: label id -> name; contains "floor", "wall" and every box's label.
        prototypes: (num_labels, D) float32 read-only unit rows, the "true" embedding per label.
    """

    boxes: tuple[Box, ...]
    room_size_m: np.ndarray
    label_names: tuple[str, ...]
    prototypes: np.ndarray

    def __post_init__(self) -> None:
        room = np.array(self.room_size_m, dtype=np.float64)
        if room.shape != (3,) or not np.isfinite(room).all() or (room <= 0.0).any():
            raise InputError(
                f"room_size_m must be three positive extents (x, y, wall height) in metres, "
                f"got {self.room_size_m!r}"
            )
        names = tuple(self.label_names)
        if len(set(names)) != len(names) or "floor" not in names or "wall" not in names:
            raise InputError(f"label_names must be unique and include 'floor' and 'wall': {names}")
        protos = np.array(self.prototypes, dtype=np.float32)
        if protos.ndim != 2 or protos.shape[0] != len(names):
            raise InputError(
                f"prototypes must be (num_labels={len(names)}, D), got shape {protos.shape}"
            )
        if not np.allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-4):
            raise InputError("prototypes must have unit-norm rows")
        boxes = tuple(self.boxes)
        reserved = {names.index("floor"), names.index("wall")}
        for box in boxes:
            if not isinstance(box, Box):
                raise InputError(f"boxes must be Box instances, got {type(box).__name__}")
            if box.label >= len(names) or box.label in reserved:
                raise InputError(
                    f"Box {box.name!r}: label {box.label} must index label_names and not be the "
                    "floor or wall label"
                )
            inside = (np.abs(box.min_m[:2]) <= room[:2] / 2).all() and (
                np.abs(box.max_m[:2]) <= room[:2] / 2
            ).all()
            if not inside or box.min_m[2] < 0.0:
                raise InputError(
                    f"Box {box.name!r} (min {box.min_m.tolist()}, max {box.max_m.tolist()}) must "
                    f"lie inside the room footprint of size {room[:2].tolist()} and above z = 0"
                )
        room.flags.writeable = False
        protos.flags.writeable = False
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "room_size_m", room)
        object.__setattr__(self, "label_names", names)
        object.__setattr__(self, "prototypes", protos)

    @property
    def embedding_dim(self) -> int:
        """Dimension D of the prototypes."""
        return int(self.prototypes.shape[1])

    @property
    def floor_label(self) -> int:
        """Label id of the floor."""
        return self.label_names.index("floor")

    @property
    def wall_label(self) -> int:
        """Label id shared by the four walls."""
        return self.label_names.index("wall")

    def label_id(self, name: str) -> int:
        """Label id of `name`; raises InputError listing the known names if it is unknown."""
        if name not in self.label_names:
            raise InputError(f"unknown label {name!r}; known labels: {list(self.label_names)}")
        return self.label_names.index(name)

    def surface_label_ids(self) -> tuple[int, ...]:
        """Label ids carried by some surface: floor, wall, then each box in order."""
        return (self.floor_label, self.wall_label, *(box.label for box in self.boxes))


def make_room_scene(seed: int = 0, embedding_dim: int = 768) -> SyntheticScene:
    """The standard test room: 6 x 5 m, 2.5 m walls, six boxes of 0.3-1.0 m on the floor.

    Labels: 0 "floor", 1 "wall", then one label per box named after it ("table", "cabinet",
    "stool", "storage crate", "trash bin", "red mug box"). Boxes do not touch each other or the
    walls. The geometry is fixed; only the prototypes depend on `seed`.

    Args:
        seed: seed of the random prototypes.
        embedding_dim: prototype dimension D (768 for the CLIP-aligned embeddings).

    Returns:
        The scene, with (8, embedding_dim) float32 unit prototypes drawn uniformly on the sphere
        (nearly orthogonal in high dimension).
    """
    if not isinstance(embedding_dim, Integral) or embedding_dim <= 0:
        raise InputError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    names = ("floor", "wall", *(name for name, _, _ in _ROOM_OBJECTS))
    boxes = tuple(
        Box(name, label, np.array([x, y, size[2] / 2.0]), np.array(size))
        for label, (name, size, (x, y)) in enumerate(_ROOM_OBJECTS, start=2)
    )
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((len(names), embedding_dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    return SyntheticScene(boxes, np.array(_ROOM_SIZE_M), names, protos.astype(np.float32))


@dataclass(frozen=True, eq=False)
class RenderedFrame:
    """One exact RGB-D-like observation of a synthetic scene.

    Attributes:
        depth_m: (h, w) float32 camera-frame z of the hit in metres (not ray length); 0 = no hit.
        labels: (h, w) int32 label id of the hit surface; -1 = no hit.
        points_world: (h, w, 3) float32 exact hit points in the world frame, metres; NaN = no hit.
        K: (3, 3) float64 intrinsics used to render.
        T_world_cam: (4, 4) float64 camera pose (p_world = T_world_cam @ p_cam).
    """

    depth_m: np.ndarray
    labels: np.ndarray
    points_world: np.ndarray
    K: np.ndarray
    T_world_cam: np.ndarray

    @property
    def hit_mask(self) -> np.ndarray:
        """(h, w) bool, True where the ray hit a surface."""
        return self.labels >= 0


def render(
    scene: SyntheticScene, K: np.ndarray, T_world_cam: np.ndarray, height: int, width: int
) -> RenderedFrame:
    """Ray cast the scene from one camera; the nearest of floor, walls and boxes wins.

    The floor is seen from above only and the walls from inside only (a cut-away room), each
    clipped to the room footprint and wall height; boxes are opaque from outside (a camera inside
    one sees through it). Rays that leave the room over the walls hit nothing.

    Args:
        scene: the scene.
        K: (3, 3) zero-skew pinhole intrinsics; pixel centres at integer (u, v).
        T_world_cam: (4, 4) rigid camera pose, optical frame (x right, y down, z forward).
        height: image height h in pixels.
        width: image width w in pixels.

    Returns:
        The rendered frame (see `RenderedFrame`).

    Raises:
        InputError: bad sizes, a K that is not (3, 3) zero-skew pinhole, or a non-rigid pose.
    """
    _check_image_size(height, width)
    K = _validated_intrinsics(K)
    T_world_cam = check_pose(T_world_cam)
    R, origin = T_world_cam[:3, :3], T_world_cam[:3, 3]
    x_cam = (np.arange(width) - K[0, 2]) / K[0, 0]
    y_cam = (np.arange(height) - K[1, 2]) / K[1, 1]
    # World ray per pixel, one (h*w,) array per axis, with camera-frame z component 1: the ray
    # parameter t of a hit is then exactly its camera depth.
    dirs = [
        (x_cam[None, :] * R[a, 0] + y_cam[:, None] * R[a, 1] + R[a, 2]).ravel() for a in range(3)
    ]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_t, best_label, hit_axis, hit_value = _cast_room(scene, origin, dirs)
        for box in scene.boxes:
            rays = _candidate_rays(box, K, T_world_cam, height, width)
            if rays.size == 0:
                continue
            t_enter, enter_axis = _slab_entry(box, origin, [d[rays] for d in dirs])
            closer = t_enter < best_t[rays]  # misses have t_enter = inf
            idx, t_enter, axes = rays[closer], t_enter[closer], enter_axis[closer]
            d_on_axis = np.choose(axes, [dirs[0][idx], dirs[1][idx], dirs[2][idx]])
            best_t[idx] = t_enter
            best_label[idx] = box.label
            hit_axis[idx] = axes
            # A ray travelling towards +axis enters through the lower face.
            hit_value[idx] = np.where(d_on_axis > 0.0, box.min_m[axes], box.max_m[axes])

        hit = best_label >= 0
        points = np.empty((height * width, 3), dtype=np.float32)
        for a in range(3):
            coord = origin[a] + best_t * dirs[a]  # inf or nan at misses, overwritten below
            np.copyto(coord, hit_value, where=hit_axis == a)
            np.copyto(coord, np.nan, where=~hit)
            points[:, a] = coord
    depth = np.where(hit, best_t, 0.0)
    return RenderedFrame(
        depth_m=depth.reshape(height, width).astype(np.float32),
        labels=best_label.reshape(height, width),
        points_world=points.reshape(height, width, 3),
        K=K,
        T_world_cam=T_world_cam,
    )


def _cast_room(scene: SyntheticScene, origin: np.ndarray, dirs: list[np.ndarray]) -> tuple:
    """Nearest hit of each ray with the floor (seen from above) and the walls (from inside).

    Returns:
        Per ray: ray parameter (inf = no hit), label id (-1), axis of the hit plane (-1), and
        the plane coordinate along that axis, used to snap hit points exactly onto the plane.
    """
    half_x, half_y = scene.room_size_m[:2] / 2.0
    bounds = ((-half_x, half_x), (-half_y, half_y), (0.0, scene.room_size_m[2]))
    n = dirs[0].size
    best_t = np.full(n, np.inf)
    best_label = np.full(n, -1, dtype=np.int32)
    hit_axis = np.full(n, -1, dtype=np.int8)
    hit_value = np.zeros(n)
    # A ray can only see the inside face of the x wall and of the y wall it travels towards, so
    # three plane tests cover the floor and all four walls. A ray parallel to a plane gets
    # t = +-inf or nan, which fails the comparisons below.
    planes = (
        (2, 0.0, scene.floor_label),
        (0, np.where(dirs[0] > 0.0, half_x, -half_x), scene.wall_label),
        (1, np.where(dirs[1] > 0.0, half_y, -half_y), scene.wall_label),
    )
    for axis, value, label in planes:
        t = (value - origin[axis]) / dirs[axis]
        hit = (t > _MIN_DEPTH_M) & (t < best_t)
        if axis == 2:
            hit &= dirs[2] < 0.0  # the floor is seen from above only
        for other in (o for o in range(3) if o != axis):
            coord = origin[other] + t * dirs[other]
            hit &= (coord >= bounds[other][0]) & (coord <= bounds[other][1])
        np.copyto(best_t, t, where=hit)
        np.copyto(best_label, label, where=hit)
        np.copyto(hit_axis, axis, where=hit)
        np.copyto(hit_value, value, where=hit)
    return best_t, best_label, hit_axis, hit_value


def _candidate_rays(
    box: Box, K: np.ndarray, T_world_cam: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Flat indices of the pixels whose rays may hit `box`: its projected bounding rectangle.

    The projection of a convex box lies in the convex hull of its projected corners, so the
    corners' bounding rectangle is conservative; casting only those rays is most of the speed.
    """
    corners = np.array(np.meshgrid(*zip(box.min_m, box.max_m, strict=True))).reshape(3, -1)
    R, origin = T_world_cam[:3, :3], T_world_cam[:3, 3]
    corners_cam = R.T @ (corners - origin[:, None])
    z = corners_cam[2]
    if (z <= _MIN_DEPTH_M).all():
        return np.zeros(0, dtype=np.intp)  # entirely behind the camera
    if (z <= _MIN_DEPTH_M).any():
        cols, rows = np.arange(width), np.arange(height)  # straddles the image plane: no bound
    else:
        u = K[0, 0] * corners_cam[0] / z + K[0, 2]
        v = K[1, 1] * corners_cam[1] / z + K[1, 2]
        cols = np.arange(max(math.floor(u.min()), 0), min(math.ceil(u.max()), width - 1) + 1)
        rows = np.arange(max(math.floor(v.min()), 0), min(math.ceil(v.max()), height - 1) + 1)
    return np.add.outer(rows * width, cols).ravel()


def _slab_entry(box: Box, origin: np.ndarray, dirs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Ray parameter (inf on a miss) and axis of the face where each ray enters `box`."""
    t_enter = np.full(dirs[0].shape, -np.inf)
    t_exit = np.full(dirs[0].shape, np.inf)
    enter_axis = np.zeros(dirs[0].shape, dtype=np.int8)
    for a in range(3):
        # A zero direction component becomes a tiny one so the slab test needs no special case
        # (the ray is then parallel to that slab and enters it at -inf if inside, else never).
        inv = 1.0 / np.where(dirs[a] == 0.0, 1e-300, dirs[a])
        t_lo = (box.min_m[a] - origin[a]) * inv
        t_hi = (box.max_m[a] - origin[a]) * inv
        t_near = np.minimum(t_lo, t_hi)
        enter_axis[t_near > t_enter] = a
        np.maximum(t_enter, t_near, out=t_enter)
        np.minimum(t_exit, np.maximum(t_lo, t_hi), out=t_exit)
    # A camera inside the box (t_enter <= 0) sees through it: boxes are opaque from outside only.
    hit = (t_enter <= t_exit) & (t_enter > _MIN_DEPTH_M)
    return np.where(hit, t_enter, np.inf), enter_axis
