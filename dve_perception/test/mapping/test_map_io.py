"""Map snapshots survive save/load bit-exactly, and every damaged or foreign file is refused."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dve_perception.errors import InputError, MapFileError
from dve_perception.mapping import map_io
from dve_perception.mapping.map_io import MapSnapshot, load_map, read_map_header, save_map

ARRAYS = ("voxels", "features", "weights", "last_seen", "basis")
SETTINGS = {"max_voxels": 200_000, "weight_cap": 50.0, "note": "lab", "flag": True, "x": None}


def make_snapshot(n=50, encoding="float16", embedding_dim=16, seed=0) -> MapSnapshot:
    rng = np.random.default_rng(seed)
    cells = rng.choice(20**3, size=n, replace=False)
    voxels = (np.stack(np.unravel_index(cells, (20, 20, 20)), axis=1) - 10).astype(np.int32)
    f = embedding_dim if encoding == "float16" else 4
    features = rng.standard_normal((n, f)).astype(np.float16)
    if n >= 3:  # bit patterns a lossy or float-converting path would change
        features[0, 0], features[1, 0], features[2, 0] = -0.0, np.float16(6e-8), np.float16(-1e-5)
    pca = encoding == "pca"
    basis = np.linalg.qr(rng.standard_normal((embedding_dim, f), np.float32))[0] if pca else None
    return MapSnapshot(
        voxel_size_m=0.05,
        embedding_dim=embedding_dim,
        feature_encoding=encoding,
        voxels=voxels,
        features=features,
        weights=rng.uniform(0.5, 20.0, n).astype(np.float32),
        last_seen=rng.integers(0, 1000, n).astype(np.int64),
        basis=basis,
        frame_count=1000,
        evicted_count=7,
        settings=dict(SETTINGS),
    )


def assert_same(a: MapSnapshot, b: MapSnapshot) -> None:
    for field in dataclasses.fields(MapSnapshot):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            assert x.tobytes() == y.tobytes(), field.name  # bit-exact, incl. -0.0 and subnormals
        else:
            assert x == y and type(x) is type(y), field.name


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def header_of(path: Path) -> dict:
    return json.loads(np.load(io.BytesIO(members(path)["header.npy"])).tobytes())


def rewrite(path: Path, header: dict | bytes | None = None, **arrays: np.ndarray) -> None:
    contents = members(path)
    if header is not None:
        text = header if isinstance(header, bytes) else json.dumps(header).encode()
        contents["header.npy"] = npy(np.frombuffer(text, np.uint8))
    contents.update({f"{name}.npy": npy(array) for name, array in arrays.items()})
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def data_span(path: Path, member: str) -> tuple[int, int]:
    """Return the file offsets [start, end) of `member`'s stored bytes (after its local header)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local = struct.unpack("<4s5H3L2H", file.read(30))
    start = info.header_offset + 30 + local[-2] + local[-1]
    return start, start + info.compress_size


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, MapSnapshot]:
    snapshot = make_snapshot(encoding="pca")
    return save_map(tmp_path / "scene.dvemap", snapshot), snapshot


@pytest.mark.parametrize(
    ("n", "encoding", "embedding_dim"),
    [(50, "float16", 768), (50, "pca", 32), (0, "float16", 768), (0, "pca", 16)],
)
def test_round_trip_is_bit_exact(tmp_path, n, encoding, embedding_dim):
    snapshot = make_snapshot(n, encoding, embedding_dim)
    assert_same(load_map(save_map(tmp_path / "m.dvemap", snapshot)), snapshot)


def test_saving_over_an_existing_file_replaces_it_whatever_the_file_is_called(tmp_path):
    path = save_map(str(tmp_path / "map.bin"), make_snapshot(seed=1))
    save_map(path, make_snapshot(n=20, seed=2))
    assert_same(load_map(str(path)), make_snapshot(n=20, seed=2))
    assert path == tmp_path / "map.bin" and os.listdir(tmp_path) == ["map.bin"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # like any new file, not 0600


def test_file_is_a_plain_npz_readable_without_dve_perception_as_documented(saved):
    path, snapshot = saved
    with np.load(path, allow_pickle=False) as npz:  # the recipe of docs/map_format.md
        header = json.loads(npz["header"].tobytes().decode("utf-8"))
        arrays = {name: npz[name] for name in header["arrays"]}
    assert header["format"] == map_io.FORMAT_NAME and header["format_version"] == 3
    assert header["num_voxels"] == 50 and header["feature_dim"] == 4
    for name, array in arrays.items():
        assert array.tobytes() == getattr(snapshot, name).tobytes()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(path).infolist())


def test_read_map_header_describes_a_file_without_reading_its_arrays(saved):
    path, _ = saved
    flip_byte(path, data_span(path, "features.npy")[1] - 1)  # arrays are damaged, header is not
    header = read_map_header(path)
    assert header["format"] == map_io.FORMAT_NAME and header["format_version"] == 3
    assert header["voxel_size_m"] == 0.05 and header["feature_encoding"] == "pca"
    assert header["embedding_dim"] == 16 and header["num_voxels"] == 50
    assert header["frame_count"] == 1000 and header["evicted_count"] == 7
    assert header["writer_version"] == map_io.__version__ and "+00:00" in header["created_at"]
    assert set(header["arrays"]) == set(ARRAYS)


def disk_full(*args):
    raise OSError(28, "No space left on device")


def crash_midway_through_features(file, array, **kwargs):
    if array.dtype == np.float16:
        file.write(array.tobytes()[: array.nbytes // 2])
        raise KeyboardInterrupt  # a BaseException, as SystemExit would be
    REAL_WRITE_ARRAY(file, array, **kwargs)


REAL_WRITE_ARRAY = np.lib.format.write_array


@pytest.mark.parametrize(
    ("target", "sabotage", "error", "message"),
    [
        ("os.replace", disk_full, MapFileError, "No space left on device; old file kept"),
        ("os.fsync", disk_full, MapFileError, "cannot write map file .*No space left on device"),
        ("numpy.lib.format.write_array", crash_midway_through_features, KeyboardInterrupt, None),
    ],
    ids=["rename-fails", "fsync-fails", "interrupted-while-writing-features"],
)
def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temp_file(
    tmp_path, monkeypatch, target, sabotage, error, message
):
    path = save_map(tmp_path / "m.dvemap", make_snapshot(seed=1))
    before = path.read_bytes()
    monkeypatch.setattr(target, sabotage)
    with pytest.raises(error, match=message):
        save_map(path, make_snapshot(seed=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.dvemap"]


def test_a_writer_killed_midway_leaves_the_previous_file_loadable(tmp_path):
    path = save_map(tmp_path / "m.dvemap", make_snapshot(seed=1))
    before = path.read_bytes()
    script = (  # dies like SIGKILL (no cleanup) after writing part of the first array
        "import os, sys, numpy as np; from test_map_io import make_snapshot, save_map\n"
        "np.lib.format.write_array = lambda f, a, **k: (f.write(a.tobytes()[:9]), os._exit(9))\n"
        "save_map(sys.argv[1], make_snapshot(seed=2))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=env, timeout=60)
    assert result.returncode == 9
    assert path.read_bytes() == before
    assert_same(load_map(path), make_snapshot(seed=1))
    leftovers = [name for name in os.listdir(tmp_path) if name != "m.dvemap"]
    assert [name.startswith(".m.dvemap.") for name in leftovers] == [True]  # documented as stale


@pytest.mark.parametrize(
    ("name", "message"),
    [("nothing.dvemap", "nothing.dvemap: No such file or directory"), (".", "Is a directory")],
)
def test_load_rejects_a_missing_file_or_a_directory(tmp_path, name, message):
    with pytest.raises(MapFileError, match=f"cannot read map file .*{message}; check the path"):
        load_map(tmp_path / name)


def test_save_into_a_missing_directory_fails_clearly(tmp_path):
    with pytest.raises(MapFileError, match="absent is not an existing directory; create it"):
        save_map(tmp_path / "absent" / "m.dvemap", make_snapshot())
    assert not (tmp_path / "absent").exists()


def test_save_rejects_something_that_is_not_a_snapshot(tmp_path):
    with pytest.raises(InputError, match="needs a MapSnapshot, got dict"):
        save_map(tmp_path / "m.dvemap", {"voxels": np.zeros((0, 3))})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        *[(lambda data, k=k: data[:k], "truncated or corrupted") for k in (0, 3, 40, 2500, -1)],
        (lambda data: b"\x89PNG\r\n\x1a\n" + bytes(200), "not a dve_perception map file.*npz"),
        (lambda _: np.random.default_rng(0).bytes(500), "not a dve_perception map file.*npz"),
    ],
    ids=["empty", "first-3-bytes", "first-40", "first-2500", "all-but-last-byte", "png", "random"],
)
def test_load_rejects_a_truncated_file_or_one_that_is_not_a_zip_archive(saved, damage, message):
    path, _ = saved
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(MapFileError, match=message):
        load_map(path)


@pytest.mark.parametrize("name", ARRAYS)
def test_load_reports_a_checksum_mismatch_for_a_flipped_byte_in_array_data(saved, name):
    path, _ = saved
    flip_byte(path, data_span(path, f"{name}.npy")[1] - 1)  # last byte: array data, not npy header
    with pytest.raises(MapFileError, match=f"member '{name}'.*checksum mismatch"):
        load_map(path)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (lambda w: w + np.float32(1), r"member 'weights' checksum mismatch \(sha256\)"),
        (lambda w: w[:-1], r"member 'weights': holds <f4 \(49,\), expected <f4 \[50\]"),
        (lambda w: w.astype(np.float64), r"member 'weights': holds <f8 \(50,\), expected <f4"),
    ],
    ids=["changed-values", "shorter", "other-dtype"],
)
def test_load_rejects_a_member_that_disagrees_with_the_header_despite_valid_zip_crcs(
    saved, weights, message
):
    path, snapshot = saved
    rewrite(path, weights=weights(snapshot.weights))
    with pytest.raises(MapFileError, match=message):
        load_map(path)


def test_load_never_returns_damaged_data_whichever_byte_is_flipped(tmp_path):
    snapshot = make_snapshot(n=5, encoding="pca", embedding_dim=6)
    path = save_map(tmp_path / "m.dvemap", snapshot)
    original = path.read_bytes()
    for offset in range(0, len(original), 3):
        flip_byte(path, offset)
        with contextlib.suppress(MapFileError):
            assert_same(load_map(path), snapshot)  # e.g. a flipped zip timestamp is harmless
        path.write_bytes(original)


def test_load_rejects_a_foreign_npz_without_a_header(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, points=np.zeros((4, 3)))
    with pytest.raises(MapFileError, match="not a dve_perception map file.*without a 'header'"):
        load_map(path)


def changed(**fields):
    return lambda header: {**header, **fields}


def without_basis(header: dict) -> dict:
    del header["arrays"]["basis"]
    return header


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (changed(format="someone.else"), "not a dve_perception map file.*'someone.else'"),
        (changed(format_version=4), r"newer dve_perception \(format 4, this reads up to 3\); upgr"),
        *[
            (changed(format_version=v), "corrupted: format_version is .*, expected an int >= 1")
            for v in (0, -1, "1", 1.0, True, None)
        ],
        (changed(num_voxels=49), "corrupted: header describes 'voxels' as .*expected"),
        (without_basis, r"corrupted: header lists arrays .*expected \[.*'basis'"),
        (lambda _: b"\xff\xfe not json", "not a dve_perception map file.*header .* not UTF-8 JSON"),
    ],
)
def test_load_rejects_a_foreign_newer_or_inconsistent_header(saved, edit, message):
    path, _ = saved
    rewrite(path, header=edit(header_of(path)))
    for read in (load_map, read_map_header):
        with pytest.raises(MapFileError, match=message):
            read(path)


def test_load_never_unpickles_an_object_array(saved, monkeypatch):
    path, _ = saved
    monkeypatch.setattr(pickle, "load", pytest.fail)  # fails the test if anything unpickles
    monkeypatch.setattr(pickle, "loads", pytest.fail)
    rewrite(path, features=np.empty((50, 4), dtype=object))
    with pytest.raises(MapFileError, match="member 'features' holds pickled Python objects"):
        load_map(path)
    header = np.array([{"format": map_io.FORMAT_NAME}], dtype=object)
    np.savez(path.with_suffix(".npz"), header=header, allow_pickle=True)
    with pytest.raises(MapFileError, match="member 'header' holds pickled Python objects"):
        load_map(path.with_suffix(".npz"))


def test_load_wraps_invalid_contents_into_a_map_file_error(saved):
    path, snapshot = saved
    voxels = snapshot.voxels.copy()
    voxels[7] = voxels[3]
    header = header_of(path)
    header["arrays"]["voxels"]["sha256"] = map_io._digest(voxels)
    rewrite(path, header=header, voxels=voxels)
    with pytest.raises(MapFileError, match="invalid contents: voxels must hold each voxel index"):
        load_map(path)


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("voxels", lambda v: np.concatenate([v[:-1], v[:1]]), "each voxel index once"),
        ("voxels", lambda v: v.astype(np.float64), "voxels must have dtype int32, got float64"),
        ("voxels", lambda v: v[:, :2], r"voxels must have shape \(any, 3\)"),
        ("voxels", lambda v: v.tolist(), "voxels must be a numpy array"),
        ("features", lambda f: f.astype(np.float32), "features must have dtype float16"),
        ("features", lambda f: np.where(f > 1, np.float16(np.inf), f), "features must be finite"),
        ("weights", lambda w: w[:-1], r"weights must have shape \(50,\), got \(49,\)"),
        ("weights", lambda w: np.where(w > 5, np.float32(np.nan), w), "weights must be finite"),
        ("weights", np.zeros_like, "weights must be finite and > 0"),
        ("last_seen", lambda t: t.astype(np.int32), "last_seen must have dtype int64"),
        ("voxel_size_m", 0.0, "voxel_size_m must be a finite number of metres > 0"),
        ("voxel_size_m", float("nan"), "voxel_size_m must be a finite number"),
        ("voxel_size_m", "0.05", "voxel_size_m must be a finite number"),
        ("feature_encoding", "int8", "feature_encoding must be one of .*got 'int8'"),
        ("basis", np.eye(16, 16, dtype=np.float32), "basis None"),
        ("embedding_dim", 768, r"need 768 \(embedding_dim\) columns"),
        ("embedding_dim", 0, "embedding_dim must be an int >= 1, got 0"),
        ("frame_count", -1, "frame_count must be an int >= 0, got -1"),
        ("evicted_count", 1.5, "evicted_count must be an int >= 0, got 1.5"),
        ("settings", {"weight_cap": float("nan")}, "settings must map str keys to JSON scalars"),
        ("settings", {"sizes": [1, 2]}, "settings must map str keys to JSON scalars"),
        ("settings", {1: 2}, "settings must map str keys"),
        ("settings", None, "settings must be a dict"),
    ],
)
def test_snapshot_rejects_invalid_float16_fields(field, change, message):
    rejects(make_snapshot(), field, change, message)


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("basis", lambda b: b[:, :3], r"basis must have shape \(16, 4\), got \(16, 3\)"),
        ("basis", None, "basis must be a numpy array"),
        ("basis", lambda b: b * 2, "basis columns must be orthonormal"),
        ("basis", lambda b: b.astype(np.float64), "basis must have dtype float32"),
        ("embedding_dim", 4, r"pca features need 1..3 columns"),
    ],
)
def test_snapshot_rejects_invalid_pca_fields(field, change, message):
    rejects(make_snapshot(encoding="pca"), field, change, message)


def rejects(snapshot: MapSnapshot, field: str, change, message: str) -> None:
    value = change(getattr(snapshot, field)) if callable(change) else change
    with pytest.raises(InputError, match=message):
        dataclasses.replace(snapshot, **{field: value})


def test_snapshot_accepts_numpy_scalars_and_stores_python_numbers(tmp_path):
    snapshot = dataclasses.replace(
        make_snapshot(), voxel_size_m=np.float32(0.25), frame_count=np.int64(3)
    )
    assert type(snapshot.voxel_size_m) is float and type(snapshot.frame_count) is int
    assert_same(load_map(save_map(tmp_path / "m.dvemap", snapshot)), snapshot)
