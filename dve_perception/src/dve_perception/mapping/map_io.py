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
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from dve_perception import __version__
from dve_perception.atomic_file import atomic_write
from dve_perception.errors import InputError, MapFileError
from dve_perception.mapping.map_snapshot import (
    MEMBER_DTYPES,
    SCALAR_FIELDS,
    MapSnapshot,
    member_dtype,
)

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
_CHUNK = 1 << 20


def _digest(array: np.ndarray) -> str:  # sha256 of the raw bytes in C order
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _encode(snapshot: MapSnapshot) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return the header dict and the little-endian arrays to store, in member order."""
    names = [n for n in MEMBER_DTYPES if getattr(snapshot, n) is not None]  # basis only with "pca*"
    encoding = snapshot.feature_encoding
    arrays = {
        n: np.ascontiguousarray(getattr(snapshot, n), dtype=member_dtype(n, encoding))
        for n in names
    }
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "writer_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: getattr(snapshot, k) for k in SCALAR_FIELDS},
        "settings": snapshot.settings,
        "num_voxels": int(snapshot.voxels.shape[0]),
        "feature_dim": int(snapshot.features.shape[1]),
        "arrays": {
            n: {"dtype": member_dtype(n, encoding), "shape": list(a.shape), "sha256": _digest(a)}
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
        want = {"dtype": member_dtype(name, encoding), "shape": shape, "sha256": sha}
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
        **{k: header.get(k) for k in (*SCALAR_FIELDS, "settings")},
    }
    try:
        return MapSnapshot(**fields)
    except InputError as exc:
        raise _corrupt(path, f"invalid contents: {exc}") from exc
