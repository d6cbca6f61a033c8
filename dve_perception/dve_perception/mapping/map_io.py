"""Save and load voxel embedding map snapshots: versioned, checksummed, atomic, never pickled.

A map file is an uncompressed `.npz` readable by `np.load(path, allow_pickle=False)`, specified in
docs/map_format.md. Saving renames a finished temporary file into place (a crash keeps the old
file); loading checks format, version, shapes, dtypes and a sha256 per array, or raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from dve_perception import __version__
from dve_perception.atomic_file import atomic_write
from dve_perception.errors import InputError, MapFileError
from dve_perception.mapping.fixed_point_codes import row_bytes

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MapSnapshot",
    "load_map",
    "read_map_header",
    "save_map",
]

#: The `format` field of every map header; any other value marks a foreign file.
FORMAT_NAME = "dve_perception.voxel_embedding_map"
#: The newest format version this module writes and reads. 2 added `norms` (|mean|) to pca maps;
#: version 1 files (without them) still load, scored by the norms of their coefficients. 3 added
#: the "pca_int" encoding (int8 feature rows) and the `pca_head_dim` header field.
FORMAT_VERSION = 3
FEATURE_ENCODINGS = ("float16", "pca", "pca_int")
_PCA = ("pca", "pca_int")

# Member name -> on-disk dtype (always little-endian, whatever the writing machine).
_DTYPES = {
    "voxels": "<i4",
    "features": "<f2",
    "weights": "<f4",
    "last_seen": "<i8",
    "basis": "<f4",
    "norms": "<f4",
}
_CHUNK = 1 << 20
# MapSnapshot fields stored in the header JSON besides `settings` (arrays are members of their own).
_SCALARS = (
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


def _dtype(name: str, encoding: str | None) -> str:
    """The on-disk dtype of member `name` in a map of `encoding`."""
    return "|i1" if name == "features" and encoding == "pca_int" else _DTYPES[name]


def _check_array(
    name: str, array: Any, shape: tuple[int | None, ...], encoding: str | None = None
) -> None:
    """Require a native-order ndarray of `name`'s dtype and `shape` (None: any size)."""
    want = np.dtype(_dtype(name, encoding)).newbyteorder("=")
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
        if snap.feature_encoding not in _PCA:
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
    width = row_bytes(coefficients, head)
    if rows.shape[1] != width:
        raise InputError(
            f"pca_int rows of {coefficients} coefficients ({head} fixed point) have {width} "
            f"bytes, got {rows.shape[1]}"
        )
    scale_at = head + coefficients
    scales = np.ascontiguousarray(rows[:, scale_at : scale_at + 2]).view(np.uint16)
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


def _digest(array: np.ndarray) -> str:  # sha256 of the raw bytes in C order
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _encode(snapshot: MapSnapshot) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return the header dict and the little-endian arrays to store, in member order."""
    names = [n for n in _DTYPES if getattr(snapshot, n) is not None]  # basis only with "pca*"
    encoding = snapshot.feature_encoding
    arrays = {
        n: np.ascontiguousarray(getattr(snapshot, n), dtype=_dtype(n, encoding)) for n in names
    }
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "writer_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: getattr(snapshot, k) for k in _SCALARS},
        "settings": snapshot.settings,
        "num_voxels": int(snapshot.voxels.shape[0]),
        "feature_dim": int(snapshot.features.shape[1]),
        "arrays": {
            n: {"dtype": _dtype(n, encoding), "shape": list(a.shape), "sha256": _digest(a)}
            for n, a in arrays.items()
        },
    }
    return header, arrays


def _write_npz(file: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    # ZIP_STORED: fp16 embeddings barely compress. At 100k voxels x 768, zlib level 1 saves 7.5%
    # of 150 MB but takes ~7 s, while a whole uncompressed save takes ~0.4 s.
    text = json.dumps(header, allow_nan=False, indent=1).encode("utf-8")
    members = {"header": np.frombuffer(text, np.uint8), **arrays}  # header first: cheap read
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in members.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def save_map(path: str | os.PathLike[str], snapshot: MapSnapshot) -> Path:
    """Write `snapshot` to `path` atomically: readers see the old file or the new one, never a mix.

    Args:
        path: The file to write (conventionally `*.dvemap`); its directory must exist.
        snapshot: The map to store.

    Returns:
        `path` as a Path.

    Raises:
        InputError: `snapshot` is not a MapSnapshot.
        MapFileError: The directory is missing, `path` is a directory, or the write failed (disk
            full, no permission); the previous file at `path`, if any, is left unchanged.
    """
    if not isinstance(snapshot, MapSnapshot):
        raise InputError(f"save_map needs a MapSnapshot, got {type(snapshot).__name__}")
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise MapFileError(
            f"cannot save map to {target}: {directory} is not an existing directory; create it"
        )
    header, arrays = _encode(snapshot)
    try:
        with atomic_write(target) as file:
            _write_npz(file, header, arrays)
    except OSError as exc:
        raise MapFileError(f"cannot write map file {target}: {exc}; old file kept") from exc
    return target


def _corrupt(path: Path, what: str) -> MapFileError:
    return MapFileError(f"map file {path} is truncated or corrupted: {what}; use a backup copy")


def _foreign(path: Path, what: str) -> MapFileError:
    return MapFileError(f"{path} is not a dve_perception map file (foreign file?): {what}")


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
        return zipfile.ZipFile(path)
    except OSError as exc:  # missing, a directory, no permission
        raise MapFileError(f"cannot read map file {path}: {exc.strerror}; check the path") from exc
    except Exception as exc:  # BadZipFile, NotImplementedError (bad zip version), ValueError, ...
        if b"PK\x03\x04".startswith(magic):  # empty, or a zip that lost its end (cut short)
            what = f"zip directory unreadable ({exc})" if magic else "the file is empty"
            raise _corrupt(path, what) from exc
        what = f"expected a NumPy .npz (zip) archive, got a file starting with {magic!r}"
        raise _foreign(path, what) from exc


def _read_member(archive: zipfile.ZipFile, path: Path, name: str, spec: dict) -> np.ndarray:
    """Read `name`.npy, checking it against `spec` (dtype, shape (None: any 1-D), sha256)."""
    dtype, shape = spec["dtype"], spec["shape"]
    try:
        info = archive.getinfo(f"{name}.npy")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            got_shape, fortran, got_dtype = read_header(member)
            if got_dtype.hasobject:  # loading these needs pickle, which can run any code
                raise _foreign(path, f"member {name!r} holds pickled Python objects, never loaded")
            shape = list(got_shape) if shape is None and len(got_shape) == 1 else shape
            if (got_dtype.str, list(got_shape), fortran) != (dtype, shape, False):
                raise ValueError(f"holds {got_dtype.str} {got_shape}, expected {dtype} {shape}")
            if info.file_size - member.tell() != math.prod(got_shape) * got_dtype.itemsize:
                raise ValueError(f"has the wrong length for {got_dtype.str} {got_shape}")
            array = np.empty(got_shape, got_dtype)  # allocated only once its size is confirmed
            flat = memoryview(array.reshape(-1).view(np.uint8))
            for start in range(0, array.nbytes, 16 * _CHUNK):
                part = flat[start : start + 16 * _CHUNK]
                if member.readinto(part) != len(part):
                    raise EOFError("ends early")
            member.read(1)  # reaching the end makes zipfile verify the member's CRC-32
    except Exception as exc:  # bad bytes raise BadZipFile, zlib.error, ValueError, EOFError, ...
        if isinstance(exc, MapFileError):
            raise
        what = "checksum mismatch (CRC-32)" if "CRC" in str(exc) else str(exc)
        raise _corrupt(path, f"member {name!r}: {what}") from exc
    if "sha256" in spec and _digest(array) != spec["sha256"]:
        raise _corrupt(path, f"member {name!r} checksum mismatch (sha256)")
    return array.astype(array.dtype.newbyteorder("="), copy=False)  # native order for numpy


def _parse_header(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    names = archive.namelist()
    if "header.npy" not in names:
        raise _foreign(path, f"an .npz without a 'header' member, members are {names[:8]}")
    raw = _read_member(archive, path, "header", {"dtype": "|u1", "shape": None})
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except ValueError as exc:  # includes UnicodeDecodeError
        raise _foreign(path, "its header member is not UTF-8 JSON") from exc
    got = header.get("format") if isinstance(header, dict) else type(header).__name__
    if got != FORMAT_NAME:
        raise _foreign(path, f"an .npz whose header format is {got!r}, expected {FORMAT_NAME!r}")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _corrupt(path, f"format_version is {version!r}, expected an int >= 1")
    if version > FORMAT_VERSION:
        raise MapFileError(
            f"map file {path} was written by a newer dve_perception (format {version}, this "
            f"reads up to {FORMAT_VERSION}); upgrade dve_perception to read it"
        )
    _check_array_specs(header, path)
    return header


def _check_array_specs(header: dict[str, Any], path: Path) -> None:
    """Check that header["arrays"] lists exactly the members the header's sizes imply."""
    n, f, e = header.get("num_voxels"), header.get("feature_dim"), header.get("embedding_dim")
    shapes = {"voxels": [n, 3], "features": [n, f], "weights": [n], "last_seen": [n]}
    specs = header.get("arrays")
    encoding = header.get("feature_encoding")
    if encoding == "pca":
        shapes["basis"] = [e, f]
        # Optional from format 2 on (absent: the norms of the coefficients, as in format 1).
        if header.get("format_version", 1) >= 2 and isinstance(specs, dict) and "norms" in specs:
            shapes["norms"] = [n]
    if encoding == "pca_int":  # the basis size is its own; the rows' width is checked later
        basis = specs.get("basis") if isinstance(specs, dict) else None
        shape = basis.get("shape") if isinstance(basis, dict) else None
        coefficients = shape[1] if isinstance(shape, list) and len(shape) == 2 else None
        shapes["basis"], shapes["norms"] = [e, coefficients], [n]
    if not isinstance(specs, dict) or sorted(specs) != sorted(shapes):
        got = sorted(specs) if isinstance(specs, dict) else specs
        raise _corrupt(path, f"header lists arrays {got}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        spec = specs[name] if isinstance(specs[name], dict) else {}
        sha = str(spec.get("sha256"))
        want = {"dtype": _dtype(name, encoding), "shape": shape, "sha256": sha}
        if {k: spec.get(k) for k in want} != want:
            raise _corrupt(path, f"header describes {name!r} as {spec}, expected {want}")


def read_map_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the header of a map file without reading its arrays (cheap, for describing files).

    Args:
        path: A map file written by `save_map`.

    Returns:
        The header dict of docs/map_format.md: format, format_version, writer_version, created_at
        (ISO 8601 UTC), voxel_size_m, embedding_dim, feature_encoding, num_voxels, feature_dim,
        frame_count, evicted_count, settings, arrays (name -> {dtype, shape, sha256}).

    Raises:
        MapFileError: The file is missing, not a map, foreign, corrupted or from a newer format.
    """
    path = Path(path)
    with _open_archive(path) as archive:
        return _parse_header(archive, path)


def load_map(path: str | os.PathLike[str]) -> MapSnapshot:
    """Read a map file written by `save_map`, verifying every array against its sha256.

    Args:
        path: The map file.

    Returns:
        The snapshot, bit-identical to the one saved.

    Raises:
        MapFileError: The file is missing, not a map file, foreign, truncated, corrupted
            (checksum mismatch, inconsistent sizes, invalid contents) or from a newer format.
    """
    path = Path(path)
    with _open_archive(path) as archive:
        header = _parse_header(archive, path)
        arrays = {n: _read_member(archive, path, n, s) for n, s in header["arrays"].items()}
    fields = {
        "basis": None,
        "norms": None,
        "pca_head_dim": None,
        **arrays,
        **{k: header.get(k) for k in (*_SCALARS, "settings")},
    }
    try:
        return MapSnapshot(**fields)
    except InputError as exc:
        raise _corrupt(path, f"invalid contents: {exc}") from exc
