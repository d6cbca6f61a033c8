"""Camera trajectories in the TUM RGB-D format, read exactly and interpolated like /tf.

A TUM trajectory is a text file with one pose per line, `timestamp tx ty tz qx qy qz qw`: the
time in seconds, the position in metres and the orientation as a unit quaternion (x, y, z, w),
together T_world_cam. Lines starting with '#' and blank lines are ignored. Timestamps are parsed
as decimals, so "1305031102.175304" becomes exactly 1305031102175304000 ns (a float64 would be
off by up to a hundred nanoseconds). `trajectory_tree` turns the poses into a `TransformTree`, so
poses from a file are interpolated by the same code as poses from /tf.
"""

from __future__ import annotations

import os
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from dve_perception.atomic_file import atomic_write
from dve_perception.camera import check_pose
from dve_perception.errors import InputError
from dve_perception.messages.conversions import matrix_to_transform_fields, pose_to_matrix
from dve_perception.sources.tf_tree import TransformTree

__all__ = [
    "format_seconds",
    "parse_seconds",
    "read_tum_trajectory",
    "trajectory_tree",
    "write_tum_trajectory",
]

_NS_PER_S = Decimal(1_000_000_000)


def parse_seconds(text: str) -> int:
    """Parse a decimal time in seconds ("12.5", "1305031102.175304") to integer nanoseconds.

    Digits beyond nanoseconds are rounded half to even.

    Raises:
        InputError: not a finite decimal number.
    """
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise InputError(f"{text!r} is not a time in seconds (expected e.g. 12.5)")
    return int((value * _NS_PER_S).to_integral_value(rounding=ROUND_HALF_EVEN))


def format_seconds(stamp_ns: int) -> str:
    """Format integer nanoseconds as seconds with 9 decimals: 12500000000 -> "12.500000000"."""
    return f"{Decimal(int(stamp_ns)).scaleb(-9):.9f}"


def read_tum_trajectory(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory file.

    Args:
        path: the text file.

    Returns:
        (stamps_ns (N,) int64 sorted ascending, T_world_cam (N, 4, 4) float64).

    Raises:
        InputError: missing or unreadable file, a line without 8 numbers, a zero quaternion, a
            duplicate timestamp, or no poses at all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read trajectory {path}: {err}") from err
    stamps: list[int] = []
    poses: list[np.ndarray] = []
    first_line: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        stamp_ns, T = _parse_line(path, number, fields)
        if stamp_ns in first_line:
            raise InputError(
                f"{path}:{number}: timestamp {fields[0]} repeats line {first_line[stamp_ns]}; "
                "a trajectory needs one pose per time"
            )
        first_line[stamp_ns] = number
        stamps.append(stamp_ns)
        poses.append(T)
    if not stamps:
        raise InputError(
            f"trajectory {path} has no poses; expected lines 'timestamp tx ty tz qx qy qz qw'"
        )
    stamps_arr = np.array(stamps, dtype=np.int64)
    order = np.argsort(stamps_arr, kind="stable")
    return stamps_arr[order], np.stack(poses)[order]


def write_tum_trajectory(
    path: str | os.PathLike[str], stamps_ns: np.ndarray, T_world_cam: np.ndarray
) -> Path:
    """Write poses as a TUM trajectory, atomically.

    Timestamps get exactly 9 decimals (lossless for integer nanoseconds); positions and
    quaternions are written with full float64 precision.

    Args:
        path: the output file (its directory must exist).
        stamps_ns: (N,) integer stamps in nanoseconds.
        T_world_cam: (N, 4, 4) rigid transforms.

    Returns:
        The path written.

    Raises:
        InputError: mismatched lengths or a non-rigid pose.
    """
    stamps = np.asarray(stamps_ns)
    T = np.asarray(T_world_cam, dtype=np.float64)
    if stamps.ndim != 1 or T.shape != (len(stamps), 4, 4):
        raise InputError(f"need (N,) stamps and (N, 4, 4) poses, got {stamps.shape} and {T.shape}")
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for stamp, pose in zip(stamps, T, strict=True):
        translation, quaternion = matrix_to_transform_fields(check_pose(pose))
        values = " ".join(repr(v) for v in (*translation, *quaternion))
        lines.append(f"{format_seconds(int(stamp))} {values}")
    path = Path(path)
    with atomic_write(path) as file:
        file.write(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def trajectory_tree(
    stamps_ns: np.ndarray, T_world_cam: np.ndarray, world_frame: str, camera_frame: str
) -> TransformTree:
    """Put a trajectory into a `TransformTree` as the dynamic edge world_frame -> camera_frame.

    Raises:
        InputError: bad shapes, poses or frame names.
    """
    tree = TransformTree()
    tree.add_samples(world_frame, camera_frame, np.asarray(stamps_ns), T_world_cam)
    return tree


def _parse_line(path: Path, number: int, fields: list[str]) -> tuple[int, np.ndarray]:
    if len(fields) != 8:
        raise InputError(
            f"{path}:{number}: expected 8 values 'timestamp tx ty tz qx qy qz qw', got "
            f"{len(fields)}: {' '.join(fields)!r}"
        )
    try:
        stamp_ns = parse_seconds(fields[0])
        values = [float(v) for v in fields[1:]]
        return stamp_ns, pose_to_matrix(values[:3], values[3:])
    except (InputError, ValueError) as err:
        raise InputError(f"{path}:{number}: {err}") from err
