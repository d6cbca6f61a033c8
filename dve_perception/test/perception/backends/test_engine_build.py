"""Engine builds against a strict fake of the TensorRT 10 API, the engine cache, build-engine."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import sys

import pytest
import trt_fake
from engine_fixtures import PLATFORM, SIZE, make_trt, write_export_stub
from pycuda_fake import install

from dve_perception.cli import main as cli
from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError
from dve_perception.perception.backends import engine_cache
from dve_perception.perception.backends.engine_build import (
    EngineBuildError,
    build_engine,
    ensure_engine,
    import_tensorrt,
)
from dve_perception.perception.backends.engine_cache import (
    StaleEngineError,
    check_engine,
    read_sidecar,
    sidecar_path,
)

H, W = SIZE


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "tiny.onnx"
    write_export_stub(path)
    return path


def build(onnx_file, plan, trt, **kwargs):
    return build_engine(onnx_file, plan, trt=trt, platform=PLATFORM, **kwargs)


def last_build(trt):
    return trt._fake_state.builds[-1]


def test_fp16_build_sets_the_flag_workspace_and_batch_profile(tmp_path, onnx_file):
    trt = make_trt()
    key = build(onnx_file, tmp_path / "e.plan", trt, workspace_gb=2.5, max_batch=4)
    done = last_build(trt)
    assert done["parsed"] == str(onnx_file)
    assert done["network_flags"] == 0  # TensorRT 10: explicit batch is implied
    assert trt_fake.BuilderFlag.FP16 in done["flags"]
    assert done["pool_limits"] == {trt_fake.MemoryPoolType.WORKSPACE: int(2.5 * 2**30)}
    assert done["profiles"] == [
        {
            "rgb": ((1, 3, H, W), (1, 3, H, W), (4, 3, H, W)),
            "depth": ((1, 1, H, W), (1, 1, H, W), (4, 1, H, W)),
        }
    ]
    assert (key.precision, key.max_batch, key.tensorrt_version) == ("fp16", 4, "10.3.0")


def test_fp32_build_has_neither_fp16_nor_tf32(tmp_path, onnx_file):
    trt = make_trt()
    build(onnx_file, tmp_path / "e.plan", trt, precision="fp32")
    assert not last_build(trt)["flags"] & {trt_fake.BuilderFlag.FP16, trt_fake.BuilderFlag.TF32}


def test_plan_and_sidecar_hold_what_tensorrt_serialised(tmp_path, onnx_file):
    trt = make_trt()
    plan = tmp_path / "sub" / "e.plan"
    key = build(onnx_file, plan, trt)
    data = plan.read_bytes()
    assert data.startswith(trt_fake.PLAN_MAGIC)
    assert json.loads(data[len(trt_fake.PLAN_MAGIC) :])["version"] == "10.3.0"
    record = read_sidecar(plan)
    assert record.key == key
    assert record.plan_sha256 == hashlib.sha256(data).hexdigest()
    assert record.onnx_path == str(onnx_file.resolve())
    assert (record.export_metadata.height, record.export_metadata.width) == SIZE
    assert check_engine(plan, key).key == key
    assert sorted(p.name for p in plan.parent.iterdir()) == ["e.plan", "e.plan.json"]


def test_timing_cache_is_read_before_and_written_after_the_build(tmp_path, onnx_file):
    trt = make_trt()
    cache = tmp_path / "timing.cache"
    previous = trt_fake.CACHE_MAGIC + b"10.3.0\nold;"
    cache.write_bytes(previous)
    build(onnx_file, tmp_path / "e.plan", trt, timing_cache=cache)
    assert last_build(trt)["timing_cache_in"] == previous
    assert cache.read_bytes() == previous + b"timings;"


def test_a_missing_timing_cache_starts_empty_and_is_created(tmp_path, onnx_file):
    trt = make_trt()
    cache = tmp_path / "new" / "timing.cache"
    build(onnx_file, tmp_path / "e.plan", trt, timing_cache=cache)
    assert last_build(trt)["timing_cache_in"] == b""
    assert cache.read_bytes() == trt_fake.CACHE_MAGIC + b"10.3.0\ntimings;"


def test_a_foreign_timing_cache_is_replaced_by_an_empty_one(tmp_path, onnx_file, caplog):
    trt = make_trt()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(trt_fake.CACHE_MAGIC + b"8.6.1\nold;")
    build(onnx_file, tmp_path / "e.plan", trt, timing_cache=cache)
    assert last_build(trt)["timing_cache_in"] == b""
    assert "does not fit this GPU/TensorRT; starting empty" in caplog.text


@pytest.mark.parametrize("content", [b"", b"\x00truncated"])
def test_an_unreadable_timing_cache_is_replaced_by_an_empty_one(
    tmp_path, onnx_file, caplog, content
):
    # TensorRT returns no cache at all for bytes it cannot read (not a mismatch: a null).
    trt = make_trt()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00truncated" if content else b"")
    plan = tmp_path / "e.plan"
    build(onnx_file, plan, trt, timing_cache=cache)
    assert last_build(trt)["timing_cache_in"] == b""
    assert ("starting empty" in caplog.text) == bool(content)
    assert cache.read_bytes() == trt_fake.CACHE_MAGIC + b"10.3.0\ntimings;"
    assert plan.is_file()


def test_a_refused_optimisation_profile_is_a_build_error(tmp_path, onnx_file):
    trt = make_trt()
    trt._fake_state.profile_invalid = True
    with pytest.raises(
        EngineBuildError, match=r"refused the optimisation profile \(batch 1\.\.2\)"
    ):
        build(onnx_file, tmp_path / "e.plan", trt, max_batch=2)
    assert not (tmp_path / "e.plan").exists()


def test_builds_and_runtimes_share_one_tensorrt_logger(tmp_path, onnx_file):
    from dve_perception.perception.backends.engine_build import tensorrt_logger

    trt = make_trt()
    build(onnx_file, tmp_path / "a.plan", trt)
    build(onnx_file, tmp_path / "b.plan", trt, precision="fp32")
    loggers = {id(entry["logger"]) for entry in trt._fake_state.builds}
    assert loggers == {id(tensorrt_logger(trt))}
    assert tensorrt_logger(make_trt()) is not tensorrt_logger(trt)  # one per tensorrt module


def test_parser_errors_are_reported_with_their_text(tmp_path, onnx_file):
    trt = make_trt()
    trt._fake_state.parse_errors = ["Unsupported operator GridSample", "Invalid weights"]
    with pytest.raises(EngineBuildError, match="cannot parse .*GridSample.*; .*Invalid weights"):
        build(onnx_file, tmp_path / "e.plan", trt)


def test_a_build_that_returns_nothing_blames_memory_and_leaves_the_old_plan(tmp_path, onnx_file):
    trt = make_trt()
    plan = tmp_path / "e.plan"
    build(onnx_file, plan, trt)
    before = plan.read_bytes(), sidecar_path(plan).read_bytes()
    trt._fake_state.build_returns_none = True
    with pytest.raises(EngineBuildError, match="usual cause is GPU memory.*smaller --workspace-gb"):
        build(onnx_file, plan, trt, workspace_gb=1.0)
    assert (plan.read_bytes(), sidecar_path(plan).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.plan", "e.plan.json", "tiny.onnx"]


def test_slow_fp16_platforms_get_a_warning(tmp_path, onnx_file, caplog):
    trt = make_trt()
    trt._fake_state.fast_fp16 = False
    build(onnx_file, tmp_path / "e.plan", trt)
    assert "no fast FP16" in caplog.text
    assert trt_fake.BuilderFlag.FP16 in last_build(trt)["flags"]


def test_the_deprecated_fp16_query_of_newer_tensorrt_does_not_warn(tmp_path, onnx_file):
    build(onnx_file, tmp_path / "e.plan", make_trt("10.7.0"))  # DeprecationWarning is an error


def test_tensorrt_without_an_fp16_flag_refuses_fp16(tmp_path, onnx_file):
    trt = make_trt("11.0.0")
    trt.BuilderFlag = enum.Enum("BuilderFlag", {"TF32": 6})
    with pytest.raises(ConfigError, match="no FP16 builder flag.*--precision fp32"):
        build(onnx_file, tmp_path / "e.plan", trt)


def test_dynamic_height_or_width_is_refused(tmp_path, onnx_file):
    trt = trt_fake.make_tensorrt(
        network_io=[trt_fake.IOTensor("rgb", True, (-1, 3, -1, W))], compute=dict
    )
    with pytest.raises(EngineBuildError, match="only the batch axis may be dynamic"):
        build(onnx_file, tmp_path / "e.plan", trt)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"precision": "int8"}, "precision must be one of"),
        ({"workspace_gb": 0}, "workspace_gb must be a positive"),
        ({"workspace_gb": "4"}, "workspace_gb must be a number"),
        ({"max_batch": 0}, "max_batch must be a positive integer"),
    ],
)
def test_bad_build_options_are_refused(tmp_path, onnx_file, options, match):
    with pytest.raises(ConfigError, match=match):
        build(onnx_file, tmp_path / "e.plan", make_trt(), **options)


def test_a_missing_onnx_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="gone.onnx does not exist"):
        build(tmp_path / "gone.onnx", tmp_path / "e.plan", make_trt())


def test_without_tensorrt_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="python3-libnvinfer.*pypi.nvidia.com"):
        import_tensorrt()


def ensure(onnx_file, cache, trt, **kwargs):
    return ensure_engine(onnx_file, cache, trt=trt, platform=PLATFORM, **kwargs)


def test_ensure_engine_builds_once_then_reuses(tmp_path, onnx_file):
    trt = make_trt()
    first = ensure(onnx_file, tmp_path / "cache", trt)
    second = ensure(onnx_file, tmp_path / "cache", trt)
    assert first.built and not second.built
    assert first.plan_path == second.plan_path
    assert first.plan_path.parent == tmp_path / "cache"
    assert len(trt._fake_state.builds) == 1
    assert ensure(onnx_file, tmp_path / "cache", trt, force=True).built


@pytest.mark.parametrize("change", ["onnx", "precision", "trt_version", "batch"])
def test_ensure_engine_rebuilds_for_a_changed_model_precision_tensorrt_or_batch(
    tmp_path, onnx_file, change
):
    first = ensure(onnx_file, tmp_path, make_trt())
    trt, kwargs = make_trt(), {}
    if change == "onnx":
        write_export_stub(onnx_file, seed=1)
    elif change == "precision":
        kwargs["precision"] = "fp32"
    elif change == "trt_version":
        trt = make_trt("10.4.0")
    else:
        kwargs["max_batch"] = 2
    second = ensure(onnx_file, tmp_path, trt, **kwargs)
    assert second.built and second.plan_path != first.plan_path
    assert first.plan_path.is_file()  # other engines in the cache are left alone


def test_ensure_engine_rebuilds_a_modified_plan(tmp_path, onnx_file, caplog):
    trt = make_trt()
    plan = ensure(onnx_file, tmp_path, trt).plan_path
    plan.write_bytes(b"tampered")
    again = ensure(onnx_file, tmp_path, trt)
    assert again.built and again.plan_path == plan
    assert "rebuilding" in caplog.text and "was modified" in caplog.text
    assert check_engine(plan, again.key)


def test_ensure_engine_without_building_raises_instead(tmp_path, onnx_file):
    trt = make_trt()
    with pytest.raises(CheckpointError, match="no engine .* build it with"):
        ensure(onnx_file, tmp_path, trt, build=False)
    plan = ensure(onnx_file, tmp_path, trt).plan_path
    plan.write_bytes(b"tampered")
    with pytest.raises(StaleEngineError, match="was modified"):
        ensure(onnx_file, tmp_path, trt, build=False)
    with pytest.raises(ConfigError, match="force=True rebuilds"):
        ensure(onnx_file, tmp_path, trt, build=False, force=True)


@pytest.fixture
def fake_machine(monkeypatch):
    """tensorrt importable (the fake) and a GPU to build for."""
    trt = make_trt()
    install(monkeypatch, trt_module=trt)
    monkeypatch.setattr(engine_cache, "platform_info", lambda index=0: PLATFORM)
    return trt


def test_cli_build_engine_prints_the_plan_path_and_then_reuses_it(
    tmp_path, onnx_file, fake_machine, capsys, caplog
):
    caplog.set_level(logging.INFO, "dve_perception")
    argv = ["build-engine", "--onnx", str(onnx_file), "--models-dir", str(tmp_path / "models")]
    assert cli.main([*argv, "--precision", "fp32", "--max-batch", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(str(tmp_path / "models" / "engines" / "tiny_fp32_sm87_trt10.3.0_"))
    assert read_sidecar(printed).key.max_batch == 2
    assert "built the engine for fp32, Orin (sm 8.7), TensorRT 10.3.0" in caplog.text
    assert cli.main([*argv, "--precision", "fp32", "--max-batch", "2"]) == 0
    assert capsys.readouterr().out.strip() == printed
    assert "reused the cached engine" in caplog.text
    assert len(fake_machine._fake_state.builds) == 1


def test_cli_build_engine_passes_cache_dir_workspace_and_timing_cache(
    tmp_path, onnx_file, fake_machine, capsys
):
    argv = ["build-engine", "--onnx", str(onnx_file), "--cache-dir", str(tmp_path / "c")]
    extra = ["--workspace-gb", "0.5", "--timing-cache", str(tmp_path / "t.cache"), "--force"]
    assert cli.main([*argv, *extra]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "c" / "tiny_fp16_"))
    assert last_build(fake_machine)["pool_limits"][trt_fake.MemoryPoolType.WORKSPACE] == 2**29
    assert (tmp_path / "t.cache").is_file()


def test_cli_build_engine_without_tensorrt_prints_one_line_and_exits_2(
    tmp_path, onnx_file, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli.main(["build-engine", "--onnx", str(onnx_file)]) == cli.EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dve-perception build-engine: error: TensorRT engines need")
