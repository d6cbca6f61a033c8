"""Engine keys, plan names, sidecars and stale-engine detection; none of it needs TensorRT."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types

import pytest
import torch
from engine_fixtures import SIZE, write_export_stub
from pycuda_fake import install, make_pycuda

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError
from dve_perception.perception.backends import engine_cache
from dve_perception.perception.backends.engine_cache import (
    EngineKey,
    Platform,
    StaleEngineError,
    check_engine,
    current_key,
    onnx_sha256,
    plan_path,
    platform_info,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from dve_perception.perception.backends.fused_outputs import FusedOutputs
from dve_perception.perception.backends.onnx_props import read_onnx_export_metadata

SHA = "ab" * 32
FIELDS = dict(
    gpu_name="Orin",
    compute_capability="8.7",
    multiprocessors=16,
    tensorrt_version="10.3.0",
    onnx_sha256=SHA,
    precision="fp16",
    input_size=(64, 96),
    max_batch=1,
)


@pytest.fixture
def key() -> EngineKey:
    return EngineKey(**FIELDS)


def write_plan(tmp_path, key, content=b"plan bytes", name="m.plan"):
    plan = tmp_path / name
    plan.write_bytes(content)
    write_sidecar(plan, key, hashlib.sha256(content).hexdigest(), onnx_path="/models/m.onnx")
    return plan


def test_fingerprint_is_the_sha256_of_the_sorted_compact_json_of_the_fields(key):
    canonical = (
        '{"compute_capability":"8.7","gpu_name":"Orin","input_size":[64,96],"max_batch":1,'
        f'"multiprocessors":16,"onnx_sha256":"{SHA}","precision":"fp16",'
        '"tensorrt_version":"10.3.0"}'
    )
    assert key.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()


def test_fingerprint_ignores_the_order_fields_are_given_in(key):
    reordered = EngineKey(**dict(reversed(list(FIELDS.items()))))
    from_json = EngineKey.from_dict(json.loads(json.dumps(dict(sorted(key.to_dict().items())))))
    assert reordered.fingerprint() == key.fingerprint() == from_json.fingerprint()
    assert from_json == key


CHANGES = [
    ("gpu_name", "NVIDIA GeForce RTX 4090", "this machine has"),
    ("compute_capability", "8.9", "this machine has"),
    ("multiprocessors", 8, "this machine has"),  # an AGX Orin's plan on an Orin NX
    ("tensorrt_version", "10.4.0", "this machine has"),
    ("onnx_sha256", "cd" * 32, "requested"),
    ("precision", "fp32", "requested"),
    ("input_size", (480, 640), "requested"),
    ("max_batch", 4, "requested"),
]


@pytest.mark.parametrize(("field", "value", "side"), CHANGES)
def test_each_field_changes_the_fingerprint_and_is_named_when_stale(
    tmp_path, key, field, value, side
):
    other = dataclasses.replace(key, **{field: value})
    assert other.fingerprint() != key.fingerprint()
    plan = write_plan(tmp_path, key)
    with pytest.raises(StaleEngineError) as info:
        check_engine(plan, other)
    message = str(info.value)
    assert f"{field} built for {getattr(key, field)!r}, {side} {getattr(other, field)!r}" in message
    assert "dve-perception build-engine --onnx /models/m.onnx --force" in message


def test_every_differing_field_is_named_at_once(tmp_path, key):
    plan = write_plan(tmp_path, key)
    moved = dataclasses.replace(key, gpu_name="Thor", tensorrt_version="10.7.0")
    with pytest.raises(StaleEngineError, match="gpu_name built for 'Orin'.*tensorrt_version"):
        check_engine(plan, moved)


def test_a_matching_plan_passes_and_returns_its_record(tmp_path, key):
    plan = write_plan(tmp_path, key, content=b"x" * 10)
    record = check_engine(plan, key)
    assert record.key == key
    assert record.plan_sha256 == hashlib.sha256(b"x" * 10).hexdigest()
    assert check_engine(plan, key, data=b"x" * 10) == record


def test_plan_names_say_model_precision_gpu_and_tensorrt(tmp_path, key):
    name = plan_path(tmp_path, key, "tiny model/v2").name
    assert name == f"tiny_model_v2_fp16_sm87_trt10.3.0_{key.fingerprint()[:12]}.plan"
    assert plan_path(tmp_path, key, "m").parent == tmp_path


def test_sidecar_round_trips_key_hash_source_and_export_metadata(tmp_path, key):
    metadata = write_export_stub(tmp_path / "m.onnx", fused=FusedOutputs(normalize=True))
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"p")
    path = write_sidecar(plan, key, "f" * 64, onnx_path=tmp_path / "m.onnx", metadata=metadata)
    assert path == sidecar_path(plan) == tmp_path / "m.plan.json"
    record = read_sidecar(plan)
    assert (record.key, record.plan_sha256) == (key, "f" * 64)
    assert record.onnx_path == str(tmp_path / "m.onnx")
    assert record.export_metadata == metadata
    assert record.created_utc.endswith("+00:00")


def test_a_plan_without_sidecar_was_not_built_by_dve_perception(tmp_path, key):
    plan = tmp_path / "foreign.plan"
    plan.write_bytes(b"trtexec output")
    with pytest.raises(StaleEngineError, match="has no sidecar foreign.plan.json.*not built by"):
        check_engine(plan, key)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "unreadable"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": 99}', "format 99, this version reads 1"),
        ('{"format": 1, "key": {"gpu_name": "x"}, "plan_sha256": "0"}', "fields missing"),
    ],
)
def test_a_corrupt_sidecar_reads_as_stale(tmp_path, key, content, match):
    plan = write_plan(tmp_path, key)
    sidecar_path(plan).write_text(content)
    with pytest.raises(StaleEngineError, match=match):
        check_engine(plan, key)


def test_modified_plan_bytes_are_detected(tmp_path, key):
    plan = write_plan(tmp_path, key, content=b"original")
    plan.write_bytes(b"tampered")
    with pytest.raises(StaleEngineError, match="was modified after dve_perception built it"):
        check_engine(plan, key)


def test_a_missing_plan_is_a_missing_file_not_a_stale_one(tmp_path, key):
    with pytest.raises(CheckpointError, match="does not exist; build it") as info:
        check_engine(tmp_path / "none.plan", key)
    assert not isinstance(info.value, StaleEngineError)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("precision", "int8", "precision must be one of"),
        ("compute_capability", "87", "must look like '8.7'"),
        ("onnx_sha256", "xyz", "64 hex digits"),
        ("input_size", (64,), r"input_size must be \(H, W\)"),
        ("input_size", (0, 64), r"input_size must be \(H, W\)"),
        ("max_batch", 0, "max_batch must be a positive integer"),
        ("multiprocessors", 0, "multiprocessors must be a positive integer"),
    ],
)
def test_malformed_keys_are_refused(field, value, match):
    with pytest.raises(ConfigError, match=match):
        EngineKey(**{**FIELDS, field: value})


def test_onnx_hash_streams_the_whole_file(tmp_path):
    path = tmp_path / "big.onnx"
    data = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several chunks
    path.write_bytes(data)
    assert onnx_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(CheckpointError, match="missing.onnx does not exist"):
        onnx_sha256(tmp_path / "missing.onnx")


def test_export_metadata_is_read_without_onnx_exactly_as_onnx_reads_it(tmp_path, monkeypatch):
    import onnx

    from dve_perception.perception.backends.export_metadata import ExportMetadata

    path = tmp_path / "m.onnx"
    write_export_stub(path, height=32, width=64, fused=FusedOutputs(normalize=True, half=True))
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    monkeypatch.setitem(sys.modules, "onnx", None)  # the reader must not need it
    assert read_onnx_export_metadata(path) == ExportMetadata.from_props(props)


def test_files_that_are_not_dve_perception_exports_are_refused(tmp_path):
    import onnx
    from onnx import helper

    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), str(plain))
    with pytest.raises(CheckpointError, match="no dve_perception export metadata"):
        read_onnx_export_metadata(plain)
    truncated = tmp_path / "cut.onnx"
    write_export_stub(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="is not an ONNX model"):
        read_onnx_export_metadata(truncated)


def test_current_key_hashes_the_file_and_takes_the_size_from_its_metadata(tmp_path):
    path = tmp_path / "m.onnx"
    write_export_stub(path)
    key = current_key(
        path, "fp32", trt_version="10.3.0", platform=Platform("Orin", "8.7", 16), max_batch=2
    )
    assert key.onnx_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (key.input_size, key.precision, key.max_batch) == (SIZE, "fp32", 2)


def test_platform_comes_from_torch_cuda_when_it_has_a_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(
            name=f"GPU{i}", major=8, minor=6 + i, multi_processor_count=14 + i
        ),
    )
    assert platform_info(1) == Platform("GPU1", "8.7", 15)
    with pytest.raises(ConfigError, match="CUDA device 2 requested, but there are 2"):
        platform_info(2)


def test_platform_falls_back_to_pycuda_when_torch_has_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    install(monkeypatch, pycuda_modules=make_pycuda("Orin", (8, 7), multiprocessors=14))
    assert engine_cache.platform_info(0) == Platform("Orin", "8.7", 14)


def test_no_gpu_anywhere_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailableError, match="torch sees none and pycuda is not"):
        platform_info()
    install(monkeypatch, pycuda_modules=make_pycuda(count=0))
    with pytest.raises(BackendUnavailableError, match="pycuda finds none"):
        platform_info()
