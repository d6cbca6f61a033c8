"""The content of a map file, `MapSnapshot`, and the checks every snapshot passes.

map_io.py writes and reads snapshots; the format is specified in docs/map_format.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dve_perception.errors import InputError
from dve_perception.mapping.fixed_point_codes import MAX_PART, row_bytes
from dve_perception.mapping.map_config import FEATURE_ENCODINGS, PCA_ENCODINGS

__all__ = ["MEMBER_DTYPES", "SCALAR_FIELDS", "MapSnapshot", "member_dtype"]

#: Member name -> on-disk dtype (always little-endian, whatever the writing machine).
MEMBER_DTYPES = {
    "voxels": "<i4",
    "features": "<f2",
    "weights": "<f4",
    "last_seen": "<i8",
    "basis": "<f4",
    "norms": "<f4",
}
_CHUNK = 1 << 20
#: MapSnapshot fields stored in the header JSON besides `settings` (arrays are own members).
SCALAR_FIELDS = (
    "voxel_size_m",
    "embedding_dim",
    "feature_encoding",
    "frame_count",
    "evicted_count",
    "pca_head_dim",
)


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tuples of arrays would raise, not compare
class MapSnapshot:
    """Everything needed to rebuild a voxel embedding map, validated on construction; N may be 0.

    Attributes:
        voxel_size_m: Voxel edge length in metres, finite and > 0.
        embedding_dim: Dimension E of the embeddings the map answers queries in (e.g. 768).
        feature_encoding: "float16" (features are the embeddings, F == E), "pca" (features
            are coefficients in `basis`, F < E) or "pca_int" (the same coefficients as int8
            rows of W bytes, laid out as mapping/fixed_point_codes.py describes).
        voxels: (N, 3) int32 unique voxel indices; centre = (index + 0.5) * voxel_size_m (world).
        features: (N, F) float16 finite running-mean feature per voxel, or (N, W) int8 rows
            with "pca_int".
        weights: (N,) float32 finite fused observation weight per voxel, > 0.
        last_seen: (N,) int64 index of the frame that last observed each voxel.
        basis: (E, F) float32 with orthonormal columns with "pca" and "pca_int", else None.
        frame_count: Frames integrated so far, >= 0.
        evicted_count: Voxels evicted so far, >= 0.
        settings: Other map settings (max_voxels, weight_cap, ...) as JSON scalars (None, bool,
            int, finite float, str) under string keys; stored and returned as-is.
        norms: (N,) float32 finite >= 0, the norm of each voxel's full running mean (>= the norm
            of its coefficients; scores divide by it), with "pca" and "pca_int" (required
            there); None for float16 maps (their norms are those of the features) and for pca
            maps of format 1.
        pca_head_dim: With "pca_int" only: how many leading coefficients are fixed point
            (1..F); W = row_bytes(F, pca_head_dim).

    Raises:
        InputError: A field has a wrong type, dtype, shape or value (named in the message).
    """

    voxel_size_m: float
    embedding_dim: int
    feature_encoding: str
    voxels: np.ndarray
    features: np.ndarray
    weights: np.ndarray
    last_seen: np.ndarray
    basis: np.ndarray | None
    frame_count: int
    evicted_count: int
    settings: dict[str, float | int | str | bool | None]
    norms: np.ndarray | None = None
    pca_head_dim: int | None = None

    def __post_init__(self) -> None:
        _check_scalars(self)
        _check_arrays(self)
        _check_settings(self.settings)


def _check_scalars(snap: MapSnapshot) -> None:
    size = snap.voxel_size_m
    number = isinstance(size, (int, float, np.floating, np.integer)) and not isinstance(size, bool)
    if not (number and math.isfinite(size) and size > 0):
        raise InputError(f"voxel_size_m must be a finite number of metres > 0, got {size!r}")
    object.__setattr__(snap, "voxel_size_m", float(size))  # numpy scalars -> JSON-safe float
    for name, minimum in (("embedding_dim", 1), ("frame_count", 0), ("evicted_count", 0)):
        value = getattr(snap, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
        object.__setattr__(snap, name, int(value))
    if (encoding := snap.feature_encoding) not in FEATURE_ENCODINGS:
        raise InputError(f"feature_encoding must be one of {FEATURE_ENCODINGS}, got {encoding!r}")
    head = snap.pca_head_dim
    if (encoding == "pca_int") != (head is not None):
        raise InputError(f"pca_head_dim belongs to pca_int maps only, got {head!r} with {encoding}")
    if head is not None:
        if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or head < 1:
            raise InputError(f"pca_head_dim must be an int >= 1, got {head!r}")
        object.__setattr__(snap, "pca_head_dim", int(head))


def member_dtype(name: str, encoding: str | None) -> str:
    """The on-disk dtype of member `name` in a map of `encoding`."""
    return "|i1" if name == "features" and encoding == "pca_int" else MEMBER_DTYPES[name]


def _check_array(
    name: str, array: Any, shape: tuple[int | None, ...], encoding: str | None = None
) -> None:
    """Require a native-order ndarray of `name`'s dtype and `shape` (None: any size)."""
    want = np.dtype(member_dtype(name, encoding)).newbyteorder("=")
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name} must be a numpy array of {want}, got {type(array).__name__}")
    if array.dtype != want:
        raise InputError(f"{name} must have dtype {want}, got {array.dtype}; convert with astype")
    got = array.shape
    if len(got) != len(shape) or any(w not in (None, g) for g, w in zip(got, shape, strict=True)):
        raise InputError(f"{name} must have shape {str(shape).replace('None', 'any')}, got {got}")


def _check_arrays(snap: MapSnapshot) -> None:
    _check_array("voxels", snap.voxels, (None, 3))
    n = snap.voxels.shape[0]
    _check_array("features", snap.features, (n, None), snap.feature_encoding)
    _check_array("weights", snap.weights, (n,))
    _check_array("last_seen", snap.last_seen, (n,))
    f, e = snap.features.shape[1], snap.embedding_dim
    if snap.feature_encoding == "float16" and (f != e or snap.basis is not None):
        raise InputError(
            f"float16 features need {e} (embedding_dim) columns and basis None, got {f} columns "
            f"and basis {type(snap.basis).__name__}"
        )
    if snap.feature_encoding == "pca":
        _check_basis(snap.basis, e, f)
    if snap.feature_encoding == "pca_int":
        _check_basis(snap.basis, e, None)
        _check_int_rows(snap.features, snap.basis.shape[1], snap.pca_head_dim)
        if snap.norms is None:
            raise InputError("pca_int maps need norms (the norm of each full running mean)")
    if snap.norms is not None:
        if snap.feature_encoding not in PCA_ENCODINGS:
            raise InputError("norms belong to pca maps, got them with float16 features")
        _check_array("norms", snap.norms, (n,))
        if not (np.all(np.isfinite(snap.norms)) and np.all(snap.norms >= 0)):
            raise InputError("norms must be finite and >= 0, got NaN, inf or negative values")
    if snap.feature_encoding != "pca_int" and not _all_finite_float16(snap.features):
        raise InputError("features must be finite, got NaN or inf")
    if not (np.all(np.isfinite(snap.weights)) and np.all(snap.weights > 0)):
        raise InputError("weights must be finite and > 0, got NaN, inf or values <= 0")
    _check_unique_rows(snap.voxels)


def _check_basis(basis: Any, e: int, f: int | None) -> None:
    """An (e, f) float32 basis with orthonormal columns, 1 <= f < e (f None: any such f)."""
    if f is not None and not 1 <= f < e:
        raise InputError(f"pca features need 1..{e - 1} columns (< embedding_dim), got {f}")
    _check_array("basis", basis, (e, f))
    f = basis.shape[1]
    if not 1 <= f < e:
        raise InputError(f"a pca basis needs 1..{e - 1} columns (< embedding_dim), got {f}")
    error = np.abs(basis.T.astype(np.float64) @ basis - np.eye(f)).max()
    if not error <= 1e-3:  # also catches NaN
        raise InputError(f"basis columns must be orthonormal, got max |B.T B - I| {error:.2g}")


def _check_int_rows(rows: np.ndarray, coefficients: int, head: int) -> None:
    """pca_int rows: the width of the layout, finite scales >= 0, zero padding."""
    if not 1 <= head <= coefficients:
        raise InputError(f"pca_head_dim must be in 1..{coefficients} (the basis size), got {head}")
    if max(head, coefficients - head) > MAX_PART:
        raise InputError(
            f"pca_int parts hold at most {MAX_PART} coefficients, got {head} + "
            f"{coefficients - head}"
        )
    width = row_bytes(coefficients, head)
    if rows.shape[1] != width:
        raise InputError(
            f"pca_int rows of {coefficients} coefficients ({head} fixed point) have {width} "
            f"bytes, got {rows.shape[1]}"
        )
    scale_at = head + coefficients
    scales = np.ascontiguousarray(rows[:, scale_at : scale_at + 2]).view("<u2")
    # float16 bits: sign bit set (negative) or exponent all ones (inf, NaN) are invalid scales.
    if scales.size and not (scales.max() < 0x7C00):
        raise InputError("pca_int rows hold a negative, infinite or NaN scale")
    if np.any(rows[:, scale_at + 2 :]):
        raise InputError("pca_int rows have non-zero padding bytes")


def _all_finite_float16(features: np.ndarray) -> bool:
    # A bit test in chunks is 5x faster than np.isfinite on float16 (no float conversion) and
    # needs little memory: exponent bits all ones (>= 0x7C00 without the sign) is inf or NaN.
    bits = features.reshape(-1).view(np.uint16)
    chunks = (bits[i : i + _CHUNK] & 0x7FFF for i in range(0, bits.size, _CHUNK))
    return all(chunk.max() < 0x7C00 for chunk in chunks)


def _check_unique_rows(voxels: np.ndarray) -> None:
    order = np.lexsort(voxels.T[::-1])  # ~4x faster than np.unique(axis=0)
    same = np.flatnonzero(np.all(voxels[order[1:]] == voxels[order[:-1]], axis=1))
    if same.size:
        a, b = sorted(order[same[0] : same[0] + 2].tolist())
        raise InputError(
            f"voxels must hold each voxel index once, got {voxels[a].tolist()} at rows {a} and "
            f"{b}; merge duplicate voxels before saving"
        )


def _check_settings(settings: Any) -> None:
    if not isinstance(settings, dict):
        raise InputError(f"settings must be a dict of JSON scalars, got {type(settings).__name__}")
    for key, value in settings.items():
        finite = isinstance(value, float) and math.isfinite(value)
        scalar = finite or value is None or isinstance(value, (bool, int, str))
        if not isinstance(key, str) or not scalar:
            raise InputError(f"settings must map str keys to JSON scalars, got {key!r}: {value!r}")
