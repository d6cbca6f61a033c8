"""Write coloured point clouds as binary PLY files (readable by open3d, MeshLab, CloudCompare).

PLY is a tiny, stable format; writing it with numpy avoids making open3d (600 MB with its
dependencies) a requirement of the core just to save points. Files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import InputError

__all__ = ["read_ply", "write_ply"]

_PLY_TYPES = {np.dtype("<f4"): "float", np.dtype("u1"): "uchar", np.dtype("<i4"): "int"}
_NUMPY_TYPES = {name: dtype for dtype, name in _PLY_TYPES.items()}


def write_ply(
    path: str | os.PathLike,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    scalars: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write points with optional RGB colours and float scalar fields as a binary PLY.

    Args:
        path: output file; written via a temporary file and renamed, so it is never partial.
        points: (N, 3) float positions in metres.
        colors: (N, 3) uint8 RGB, or None.
        scalars: extra per-point float32 properties by name (e.g. {"score": ...}).

    Returns:
        The path written.

    Raises:
        InputError: mismatched lengths, wrong shapes, or invalid property names.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {points.shape}")
    fields = [(axis, points[:, i].astype("<f4")) for i, axis in enumerate("xyz")]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != points.shape or colors.dtype != np.uint8:
            raise InputError(
                f"colors must be (N, 3) uint8 like points, got {colors.dtype} {colors.shape}"
            )
        fields += [(name, colors[:, i]) for i, name in enumerate(("red", "green", "blue"))]
    for name, values in (scalars or {}).items():
        values = np.asarray(values, dtype="<f4").reshape(-1)
        if not name.isidentifier() or values.shape[0] != points.shape[0]:
            raise InputError(f"scalar {name!r} must be a valid name with {points.shape[0]} values")
        fields.append((name, values))
    record = np.empty(points.shape[0], dtype=[(name, v.dtype) for name, v in fields])
    for name, values in fields:
        record[name] = values
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {points.shape[0]}"]
    header += [f"property {_PLY_TYPES[v.dtype]} {name}" for name, v in fields]
    with atomic_write(path) as file:
        file.write(("\n".join([*header, "end_header"]) + "\n").encode("ascii"))
        file.write(record.tobytes())
    return Path(path)


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a binary little-endian PLY written by `write_ply`: property name -> (N,) array."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise InputError(f"{path} is not a PLY file")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise InputError(f"{path}: only binary little-endian PLY is supported")
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    dtype = [
        (parts[2], _NUMPY_TYPES[parts[1]])
        for parts in (line.split() for line in lines)
        if parts[0] == "property"
    ]
    record = np.frombuffer(raw, dtype=dtype, count=count, offset=end + len(b"end_header\n"))
    return {name: record[name].copy() for name, _ in dtype}
