"""Recordings stored as a folder of RGB-D images with a TUM trajectory.

Layout::

    recording/
      camera.json   {"width": W, "height": H, "fx": .., "fy": .., "cx": .., "cy": ..,
                     "depth_scale_m": 0.001, "frame_id": "camera_color_optical_frame"}  (depth_scale_m, frame_id optional)
      rgb/<t>.png   colour (PNG or JPEG); the file stem <t> is the time in seconds (e.g. 1305031102.175304 or 12.5)
      depth/<t>.png 16-bit depth, value * depth_scale_m = metres, 0 = invalid, registered to colour
      poses.txt     TUM trajectory of the optical frame in the world (T_world_cam), interpolated at each colour stamp

Colour and depth images are paired by stamp within a slop (their stems need not be equal), and
the pose of each colour image is interpolated from the trajectory at its stamp, exactly as for
/tf in a bag (`dve_perception.sources.tf_tree`). `write_folder_recording` writes this layout from frames.
"""  # noqa: E501

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import InputError, TransformUnavailableError
from dve_perception.frames import RGBDFrame
from dve_perception.images import read_depth, read_rgb, write_png
from dve_perception.sources.frame_source import SkippedFrame, SourceItem
from dve_perception.sources.pairing import pair_by_stamp
from dve_perception.sources.trajectory import (
    format_seconds,
    parse_seconds,
    read_tum_trajectory,
    trajectory_tree,
    write_tum_trajectory,
)

__all__ = ["FolderSource", "write_folder_recording"]

_COLOR_SUFFIXES = (".png", ".jpg", ".jpeg")
_DEFAULT_FRAME_ID = "camera_color_optical_frame"
_WORLD_FRAME = "world"


class FolderSource:
    """Posed RGB-D frames from a recording folder (layout in the module docstring).

    Opening reads camera.json, lists the images and reads the trajectory; images are read while
    iterating. Each colour image gives an `RGBDFrame`, or a `SkippedFrame` with reason
    "no depth within slop", "no pose" (stamp outside the trajectory), "unreadable image" or
    "size mismatch" (depth and colour, or colour and camera.json, differ in size).

    Args:
        path: the recording folder.
        slop_s: the largest accepted time difference between paired colour and depth, seconds.
        poses: a TUM trajectory to use instead of <path>/poses.txt.

    Raises:
        InputError: missing folder, camera.json, rgb/, depth/ or trajectory; bad camera.json;
            an image name that is not a time in seconds; no colour images.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        slop_s: float = 0.02,
        poses: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"recording folder {self.path} does not exist or is not a folder")
        if not (isinstance(slop_s, (int, float)) and math.isfinite(slop_s) and slop_s >= 0):
            raise InputError(f"slop_s must be a non-negative number of seconds, got {slop_s!r}")
        camera = _read_camera_json(self.path / "camera.json")
        self.size: tuple[int, int] = camera["size"]
        self.K: np.ndarray = camera["K"]
        self.depth_scale_m: float = camera["depth_scale_m"]
        self.frame_id: str = camera["frame_id"]
        self._color = _list_images(self.path / "rgb", _COLOR_SUFFIXES)
        self._depth = _list_images(self.path / "depth", (".png",))
        if not self._color:
            raise InputError(
                f"{self.path / 'rgb'} has no colour images; expected files named <t>.png or "
                "<t>.jpg with <t> the time in seconds"
            )
        self.poses_path = Path(poses) if poses is not None else self.path / "poses.txt"
        if not self.poses_path.is_file():
            raise InputError(
                f"trajectory {self.poses_path} does not exist; a recording folder needs "
                "poses.txt (TUM: 'timestamp tx ty tz qx qy qz qw'), or pass --poses (poses=)"
            )
        stamps, T = read_tum_trajectory(self.poses_path)
        self._num_poses = len(stamps)
        self._tree = trajectory_tree(stamps, T, _WORLD_FRAME, self.frame_id)
        color_stamps = np.array([s for s, _ in self._color], dtype=np.int64)
        depth_stamps = np.array([s for s, _ in self._depth], dtype=np.int64)
        self._pairs = pair_by_stamp(color_stamps, depth_stamps, round(slop_s * 1e9))
        self._skips: Counter[str] = Counter()
        self._frames = 0

    def __iter__(self) -> Iterator[SourceItem]:
        """Yield one frame or skip per colour image, in stamp order."""
        self._skips.clear()
        self._frames = 0
        for (stamp_ns, color_path), depth_index in zip(self._color, self._pairs, strict=True):
            item = self._item(stamp_ns, color_path, depth_index)
            if isinstance(item, SkippedFrame):
                self._skips[item.reason] += 1
            else:
                self._frames += 1
            yield item

    def __len__(self) -> int:
        """Return the number of items iteration yields (one per colour image)."""
        return len(self._color)

    def describe(self) -> dict[str, object]:
        """Return the folder, camera and image counts (and skips of the last iteration)."""
        return {
            "kind": "folder",
            "path": str(self.path),
            "frame_id": self.frame_id,
            "size": list(self.size),
            "poses": str(self.poses_path),
            "color_images": len(self._color),
            "depth_images": len(self._depth),
            "trajectory_poses": self._num_poses,
            "paired": sum(p is not None for p in self._pairs),
            "frames": self._frames,
            "skipped": dict(self._skips),
        }

    def _item(self, stamp_ns: int, color_path: Path, depth_index: int | None) -> SourceItem:
        if depth_index is None:
            return SkippedFrame(
                stamp_ns, "no depth within slop", f"{color_path.name}: no depth image within slop"
            )
        try:
            T_world_cam = self._tree.lookup(_WORLD_FRAME, self.frame_id, stamp_ns)
        except TransformUnavailableError as err:
            return SkippedFrame(stamp_ns, "no pose", f"{color_path.name}: {err}")
        depth_path = self._depth[depth_index][1]
        try:
            rgb = read_rgb(color_path)
            depth_raw = read_depth(depth_path)
        except InputError as err:
            return SkippedFrame(stamp_ns, "unreadable image", str(err))
        sizes = {"colour": rgb.shape[:2], "depth": depth_raw.shape, "camera.json": self.size}
        if len({tuple(s) for s in sizes.values()}) > 1:
            found = ", ".join(f"{k} {s[0]}x{s[1]}" for k, s in sizes.items())
            return SkippedFrame(stamp_ns, "size mismatch", f"{color_path.name}: {found}")
        depth_m = (depth_raw.astype(np.float64) * self.depth_scale_m).astype(np.float32)
        return RGBDFrame(rgb, depth_m, self.K, stamp_ns, self.frame_id, T_world_cam)


def write_folder_recording(
    path: str | os.PathLike[str], frames: Iterable[RGBDFrame], *, depth_scale_m: float = 0.001
) -> Path:
    """Write frames as a recording folder (layout in the module docstring).

    Depth is stored as round(depth_m / depth_scale_m) in 16 bits; depths beyond the 16-bit
    range are stored as 0 (invalid) rather than clipped to a wrong distance.

    Args:
        path: the folder to create or fill (rgb/, depth/, camera.json, poses.txt are written).
        frames: frames sharing K, size and frame_id, each with T_world_cam.
        depth_scale_m: metres per depth unit (0.001: millimetres).

    Returns:
        The folder.

    Raises:
        InputError: no frames, frames that differ in K, size or frame_id, a frame without a
            pose, two frames with the same stamp, K with skew, or a bad depth_scale_m.
    """
    if not (isinstance(depth_scale_m, (int, float)) and 0 < depth_scale_m < math.inf):
        raise InputError(f"depth_scale_m must be a positive number, got {depth_scale_m!r}")
    root = Path(path)
    for sub in ("rgb", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    first: RGBDFrame | None = None
    stamps: list[int] = []
    poses: list[np.ndarray] = []
    for index, frame in enumerate(frames):
        if first is None:
            first = frame
        _check_consistent(first, frame, index, set(stamps))
        stem = format_seconds(frame.stamp_ns)
        write_png(root / "rgb" / f"{stem}.png", frame.rgb)
        units = np.round(frame.depth_m.astype(np.float64) / depth_scale_m)
        units = np.where(units <= np.iinfo(np.uint16).max, units, 0)
        write_png(root / "depth" / f"{stem}.png", units.astype(np.uint16))
        stamps.append(frame.stamp_ns)
        poses.append(frame.T_world_cam)
    if first is None:
        raise InputError("write_folder_recording needs at least one frame, got none")
    if first.K[0, 1] != 0:
        raise InputError(f"camera.json cannot store a K with skew ({first.K[0, 1]}); got {first.K}")
    (height, width), K = first.size, first.K
    camera = {
        "width": width,
        "height": height,
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "depth_scale_m": float(depth_scale_m),
        "frame_id": first.frame_id or _DEFAULT_FRAME_ID,
    }
    with atomic_write(root / "camera.json") as file:
        file.write((json.dumps(camera, indent=2) + "\n").encode("utf-8"))
    write_tum_trajectory(root / "poses.txt", np.array(stamps, dtype=np.int64), np.stack(poses))
    return root


def _check_consistent(first: RGBDFrame, frame: RGBDFrame, index: int, seen: set[int]) -> None:
    if frame.T_world_cam is None:
        raise InputError(f"frame {index} (stamp {frame.stamp_ns}) has no T_world_cam")
    if frame.size != first.size or frame.frame_id != first.frame_id:
        raise InputError(
            f"frame {index} is {frame.size} in {frame.frame_id!r} but frame 0 is {first.size} "
            f"in {first.frame_id!r}; a recording folder holds one camera"
        )
    if not np.array_equal(frame.K, first.K):
        raise InputError(f"frame {index} has K\n{frame.K}\nbut frame 0 has\n{first.K}")
    if frame.stamp_ns in seen:
        raise InputError(f"frame {index} repeats stamp {frame.stamp_ns} ns")


def _read_camera_json(path: Path) -> dict:
    """Read and validate camera.json into size, K, depth_scale_m and frame_id."""
    if not path.is_file():
        raise InputError(
            f"{path} does not exist; a recording folder needs camera.json with width, height, "
            "fx, fy, cx, cy (and optionally depth_scale_m, frame_id)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy") if k not in data]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; got keys {sorted(data)}")
    for key in ("width", "height"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{path}: {key} must be a positive integer, got {value!r}")
    numbers = {}
    for key in ("fx", "fy", "cx", "cy", "depth_scale_m"):
        value = data.get(key, 0.001)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: {key} must be a number, got {value!r}")
        positive = key not in ("cx", "cy")
        if not math.isfinite(value) or (positive and value <= 0):
            need = "a positive" if positive else "a finite"
            raise InputError(f"{path}: {key} must be {need} number, got {value!r}")
        numbers[key] = float(value)
    frame_id = data.get("frame_id", _DEFAULT_FRAME_ID)
    if not isinstance(frame_id, str) or not frame_id:
        raise InputError(f"{path}: frame_id must be a non-empty string, got {frame_id!r}")
    K = np.array(
        [[numbers["fx"], 0.0, numbers["cx"]], [0.0, numbers["fy"], numbers["cy"]], [0, 0, 1.0]]
    )
    return {
        "size": (data["height"], data["width"]),
        "K": K,
        "depth_scale_m": numbers["depth_scale_m"],
        "frame_id": frame_id,
    }


def _list_images(folder: Path, suffixes: tuple[str, ...]) -> list[tuple[int, Path]]:
    """(stamp_ns, path) of the images in a folder, sorted by stamp."""
    if not folder.is_dir():
        raise InputError(
            f"{folder} does not exist; a recording folder needs rgb/ and depth/ with images "
            "named <t>.png, <t> the time in seconds"
        )
    images: dict[int, Path] = {}
    for file in folder.iterdir():
        if file.name.startswith(".") or file.suffix.lower() not in suffixes:
            continue  # hidden files and other files (notes, thumbnails) are not frames
        try:
            stamp_ns = parse_seconds(file.stem)
        except InputError as err:
            raise InputError(
                f"{file}: the file name must be the time in seconds (e.g. 12.5{file.suffix}): {err}"
            ) from err
        if stamp_ns in images:
            raise InputError(f"{file} and {images[stamp_ns]} have the same time")
        images[stamp_ns] = file
    return sorted(images.items())
