"""The TensorRT backend: constructor errors, tensor binding by address, the pycuda path end to end
on fakes, and (on a TensorRT machine) a real engine against onnxruntime."""

from __future__ import annotations

import sys

import pytest
import torch
import trt_fake
from engine_fixtures import (
    DIM,
    PLATFORM,
    SIZE,
    compute,
    expected_main,
    inputs,
    make_trt,
    network_io,
    write_export_stub,
)
from pycuda_fake import install, make_pycuda
from trt_fake import DataType, IOTensor

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from dve_perception.perception.backends.engine_build import ensure_engine
from dve_perception.perception.backends.engine_cache import StaleEngineError, sidecar_path
from dve_perception.perception.backends.export_metadata import OUTPUT_NAME
from dve_perception.perception.backends.fused_outputs import (
    LABELS_OUTPUT,
    SCORES_OUTPUT,
    FusedOutputs,
)
from dve_perception.perception.backends.tensorrt_backend import TensorRTBackend
from dve_perception.perception.backends.tensorrt_bindings import (
    TensorRTExecutionError,
    TorchBindings,
    describe_io,
)


def build_plan(tmp_path, trt, *, fused=None, max_batch=1):
    onnx_file = tmp_path / "tiny.onnx"
    write_export_stub(onnx_file, fused=fused)
    return ensure_engine(onnx_file, tmp_path, trt=trt, platform=PLATFORM, max_batch=max_batch)


@pytest.fixture
def gpu(monkeypatch):
    """A machine with (fake) TensorRT 10.3 and an Orin reached through (fake) pycuda."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trt, pycuda = make_trt(), make_pycuda("Orin", (8, 7))
    install(monkeypatch, trt_module=trt, pycuda_modules=pycuda)
    return trt, pycuda[1]._fake_state


@pytest.fixture
def plan(tmp_path, gpu):
    return build_plan(tmp_path, gpu[0]).plan_path


def test_pycuda_io_runs_the_engine_and_returns_cpu_tensors(plan, gpu):
    backend = TensorRTBackend(plan, io="pycuda")
    assert (backend.fixed_size, backend.embedding_dim, backend.max_batch) == (SIZE, DIM, 1)
    assert backend.output_names == (OUTPUT_NAME,)
    assert backend.device == torch.device("cpu")
    assert backend.record.key.gpu_name == "Orin"
    for seed in (0, 1):  # the second run reuses the buffers
        rgb, depth = inputs(seed=seed)
        torch.testing.assert_close(backend.infer(rgb, depth), expected_main(rgb, depth))
    driver = gpu[1]
    assert driver.live_allocations == 3  # rgb, depth, output: allocated once
    assert driver.context_stack == []  # pushed around each call, popped again
    assert [e["stream"] for e in gpu[0]._fake_state.executions] == [0x5157, 0x5157]


def test_close_frees_buffers_and_context_and_later_calls_fail(plan, gpu):
    backend = TensorRTBackend(plan, io="pycuda")
    backend.infer(*inputs())
    backend.close()
    backend.close()  # idempotent
    assert (gpu[1].live_allocations, gpu[1].retained) == (0, 0)
    assert gpu[1].dead_context_cleanups == 0
    with pytest.raises(InputError, match="was closed"):
        backend.infer(*inputs())


def test_inputs_are_checked_against_the_engine_size_and_batch(tmp_path, gpu):
    backend = TensorRTBackend(build_plan(tmp_path, gpu[0]).plan_path, io="pycuda")
    with pytest.raises(InputError, match="built for 64x96 inputs, got 32x96"):
        backend.infer(*inputs(height=32))
    with pytest.raises(InputError, match="batches up to 1, got 2.*--max-batch 2"):
        backend.infer(*inputs(batch=2))
    larger = TensorRTBackend(
        build_plan(tmp_path, gpu[0], max_batch=2).plan_path, io="pycuda", check_key=True
    )
    rgb, depth = inputs(batch=2)
    torch.testing.assert_close(larger.infer(rgb, depth), expected_main(rgb, depth))


def test_fused_outputs_come_from_the_sidecar_and_keep_their_dtypes(tmp_path, gpu, monkeypatch):
    def fused_compute(feeds):
        main = compute(feeds)[OUTPUT_NAME]
        scores = main[:, :2]
        return {OUTPUT_NAME: main, SCORES_OUTPUT: scores, LABELS_OUTPUT: scores.argmax(axis=1)}

    h, w = SIZE
    extra = (
        IOTensor(SCORES_OUTPUT, False, (-1, 2, h, w)),
        IOTensor(LABELS_OUTPUT, False, (-1, h, w), DataType.INT32),
    )
    trt = trt_fake.make_tensorrt(network_io=network_io(extra=extra), compute=fused_compute)
    install(monkeypatch, trt_module=trt)
    fused = FusedOutputs(normalize=True, num_classes=2, argmax=True)
    backend = TensorRTBackend(build_plan(tmp_path, trt, fused=fused).plan_path, io="pycuda")
    assert backend.fused == fused
    rgb, depth = inputs()
    outputs = backend.infer_outputs(rgb, depth)
    assert list(outputs) == [OUTPUT_NAME, SCORES_OUTPUT, LABELS_OUTPUT]
    scores = expected_main(rgb, depth)[:, :2]
    assert outputs[LABELS_OUTPUT].dtype == torch.int32
    assert torch.equal(outputs[LABELS_OUTPUT], scores.argmax(dim=1).int())
    torch.testing.assert_close(outputs[SCORES_OUTPUT], scores)


def test_an_engine_whose_outputs_disagree_with_its_sidecar_is_refused(tmp_path, gpu):
    plan = build_plan(tmp_path, gpu[0], fused=FusedOutputs(normalize=True, publish_size=(8, 8)))
    with pytest.raises(CheckpointError, match="sidecar's export metadata declares"):
        TensorRTBackend(plan.plan_path, io="pycuda")
    # The bindings (stream, buffers) made before the check went before the context did.
    assert (gpu[1].retained, gpu[1].live_allocations, gpu[1].dead_context_cleanups) == (0, 0, 0)


def test_without_tensorrt_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "x.plan").write_bytes(b"plan")
    with pytest.raises(BackendUnavailableError, match="tensorrt Python module.*JetPack"):
        TensorRTBackend(tmp_path / "x.plan")


def test_a_missing_plan_is_named(tmp_path, gpu):
    with pytest.raises(CheckpointError, match="x.plan does not exist; build it"):
        TensorRTBackend(tmp_path / "x.plan", io="pycuda")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"io": "numpy"}, ConfigError, "io must be one of"),
        ({"device": "cpu"}, ConfigError, "TensorRT runs on CUDA devices"),
        ({"io": "torch"}, BackendUnavailableError, "needs a CUDA-enabled torch.*io='pycuda'"),
    ],
)
def test_bad_device_or_io_choices_are_refused(plan, kwargs, error, match):
    with pytest.raises(error, match=match):
        TensorRTBackend(plan, **kwargs)


def test_pycuda_io_without_pycuda_says_what_to_install(plan, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailableError, match="io='pycuda' needs pycuda"):
        TensorRTBackend(plan, io="pycuda")


def test_a_plan_from_another_tensorrt_version_is_stale(plan, gpu, monkeypatch):
    install(monkeypatch, trt_module=make_trt("10.4.0"))
    with pytest.raises(StaleEngineError, match="tensorrt_version built for '10.3.0', this machine"):
        TensorRTBackend(plan, io="pycuda")
    assert gpu[1].retained == 0  # the context taken for loading was given back


def test_a_plan_from_another_gpu_is_stale_and_names_both(plan, gpu, monkeypatch):
    install(monkeypatch, pycuda_modules=make_pycuda("NVIDIA GeForce RTX 4090", (8, 9)))
    with pytest.raises(StaleEngineError, match="gpu_name built for 'Orin'.*'8.7', this machine"):
        TensorRTBackend(plan, io="pycuda")
    # Same name and capability, another module (an Orin NX): still another GPU for the plan.
    install(monkeypatch, pycuda_modules=make_pycuda("Orin", (8, 7), multiprocessors=8))
    with pytest.raises(StaleEngineError, match="multiprocessors built for 16, this machine has 8"):
        TensorRTBackend(plan, io="pycuda")


def test_a_plan_without_sidecar_is_refused_unless_the_check_is_off(plan, gpu):
    sidecar_path(plan).unlink()
    with pytest.raises(StaleEngineError, match="no sidecar"):
        TensorRTBackend(plan, io="pycuda")
    backend = TensorRTBackend(plan, io="pycuda", check_key=False)
    assert backend.record is None and backend.fused == FusedOutputs()


def test_bytes_tensorrt_cannot_deserialise_are_a_clear_error(tmp_path, gpu, monkeypatch):
    junk = tmp_path / "junk.plan"
    junk.write_bytes(b"not an engine")
    with pytest.raises(CheckpointError, match="cannot deserialise .*junk.plan.*--force"):
        TensorRTBackend(junk, io="pycuda", check_key=False)
    plan = build_plan(tmp_path, gpu[0]).plan_path
    install(monkeypatch, trt_module=make_trt("10.4.0"))  # unchecked: TensorRT itself refuses
    with pytest.raises(CheckpointError, match="TensorRT 10.4.0 cannot deserialise"):
        TensorRTBackend(plan, io="pycuda", check_key=False)


def test_an_engine_without_the_export_inputs_is_refused(tmp_path, gpu, monkeypatch):
    trt = trt_fake.make_tensorrt(network_io=network_io()[::2], compute=compute)  # no depth
    install(monkeypatch, trt_module=trt)
    plan = build_plan(tmp_path, trt).plan_path
    with pytest.raises(CheckpointError, match=r"inputs \['rgb'\].*has inputs \['rgb', 'depth'\]"):
        TensorRTBackend(plan, io="pycuda")


def fake_context(io_tensors, trt=None):
    """An execution context and I/O description from a plan the fake builder made."""
    trt = trt or trt_fake.make_tensorrt(network_io=io_tensors, compute=compute)
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt.Logger())
    assert parser.parse_from_file(__file__)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for tensor in (t for t in io_tensors if t.is_input):
        rest = tensor.shape[1:]
        profile.set_shape(tensor.name, (1, *rest), (1, *rest), (2, *rest))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(
        builder.build_serialized_network(network, config)
    )
    return trt, engine.create_execution_context(), describe_io(engine, trt)


def feeds(batch=1):
    rgb, depth = inputs(batch=batch)
    return {"rgb": rgb, "depth": depth}


class RecordingStream:
    """Stands in for `SideStream`: runs the engine with handle 42 and records what it ran."""

    def __init__(self) -> None:
        self.enqueued = 0

    def enqueue(self, execute):
        self.enqueued += 1
        return execute(42)


def torch_bindings(context, specs, allocated, stream=None):
    def allocate(shape, dtype):
        allocated.append(torch.empty(shape, dtype=dtype))
        return allocated[-1]

    stream = stream or RecordingStream()
    return TorchBindings(context, specs, allocate, stream, torch.device("cpu"))


def test_side_stream_waits_for_the_caller_runs_the_engine_then_makes_the_caller_wait(
    monkeypatch,
):
    from dve_perception.perception.backends.tensorrt_bindings import SideStream

    events = []

    class FakeStream:
        def __init__(self, name, handle):
            self.name, self.cuda_stream = name, handle

        def wait_stream(self, other):
            events.append(f"{self.name} waits for {other.name}")

    caller = FakeStream("caller", 0)  # torch's default stream: handle 0
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream("engine", 7))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: caller)
    stream = SideStream(torch.device("cuda", 0))
    assert stream.enqueue(lambda handle: events.append(f"run on {handle}") or True)
    assert events == ["engine waits for caller", "run on 7", "caller waits for engine"]
    assert not stream.enqueue(lambda handle: False)  # TensorRT's failure is passed on


def test_torch_bindings_pass_addresses_shapes_and_dtypes_to_the_context():
    trt, context, specs = fake_context(network_io())
    allocated = []
    bindings = torch_bindings(context, specs, allocated)
    rgb, depth = inputs(batch=2)
    # float64 and a non-contiguous view: converted and made contiguous before binding
    rgb_view = rgb.double().permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    outputs = bindings.run({"rgb": rgb_view, "depth": depth})
    torch.testing.assert_close(outputs[OUTPUT_NAME], expected_main(rgb, depth))
    (run,) = trt._fake_state.executions
    assert run["stream"] == 42
    assert run["addresses"][OUTPUT_NAME] == allocated[0].data_ptr()
    assert outputs[OUTPUT_NAME] is allocated[0]
    assert tuple(allocated[0].shape) == (2, DIM, *SIZE)


def test_torch_bindings_copy_inputs_that_are_not_256_byte_aligned():
    _, context, specs = fake_context(network_io())
    rgb, depth = inputs()
    storage = torch.empty(rgb.numel() + 1)
    shifted = storage[1:].view_as(rgb).copy_(rgb)  # 4 bytes past an allocation start
    assert shifted.data_ptr() % 256
    trt = context._engine._state
    outputs = torch_bindings(context, specs, []).run({"rgb": shifted, "depth": depth})
    assert trt.executions[-1]["addresses"]["rgb"] != shifted.data_ptr()
    torch.testing.assert_close(outputs[OUTPUT_NAME], expected_main(rgb, depth))


def test_torch_bindings_allocate_each_output_in_its_engine_dtype():
    io_tensors = network_io()
    io_tensors[2] = IOTensor(OUTPUT_NAME, False, io_tensors[2].shape, DataType.HALF)
    _, context, specs = fake_context(io_tensors)
    outputs = torch_bindings(context, specs, []).run(feeds())
    assert outputs[OUTPUT_NAME].dtype == torch.float16
    expected = expected_main(*inputs()).half()
    torch.testing.assert_close(outputs[OUTPUT_NAME], expected)


def test_torch_bindings_report_refused_shapes_and_failed_runs():
    trt, context, specs = fake_context(network_io())
    bindings = torch_bindings(context, specs, [])
    rgb, depth = inputs(batch=3)  # the profile allows 1..2
    with pytest.raises(InputError, match=r"does not accept input 'rgb' of shape \(3, 3, 64, 96\)"):
        bindings.run({"rgb": rgb, "depth": depth})
    trt._fake_state.execute_fails = True
    with pytest.raises(TensorRTExecutionError, match="execute_async_v3 failed"):
        bindings.run(feeds())


def test_tensor_types_torch_cannot_hold_are_refused():
    io_tensors = network_io()
    io_tensors[2] = IOTensor(OUTPUT_NAME, False, io_tensors[2].shape, DataType.FP8)
    with pytest.raises(CheckpointError, match="has TensorRT type FP8"):
        fake_context(io_tensors)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 3e-2)])
def test_a_real_engine_matches_onnxruntime(tmp_path, tiny_model, precision, tolerance):
    from dve_perception.perception.backends.onnx_export import export_onnx
    from dve_perception.perception.backends.onnxruntime_backend import OnnxRuntimeBackend

    onnx_file = tmp_path / "tiny.onnx"
    export_onnx(tiny_model, onnx_file, height=SIZE[0], width=SIZE[1])
    cached = ensure_engine(onnx_file, tmp_path / "engines", precision=precision, max_batch=2)
    rgb, depth = inputs(batch=2)
    expected = OnnxRuntimeBackend(onnx_file).infer(rgb, depth)
    with TensorRTBackend(cached.plan_path) as backend:
        actual = backend.infer(rgb.cuda(), depth.cuda())
        assert actual.is_cuda and actual.dtype == torch.float32
    error = (actual.cpu() - expected).norm() / expected.norm()
    assert error < tolerance, f"{precision} relative L2 error {error:.2e}"
    again = ensure_engine(onnx_file, tmp_path / "engines", precision=precision, max_batch=2)
    assert not again.built and again.plan_path == cached.plan_path


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_a_real_engine_keeps_the_fused_outputs_of_its_export(tmp_path, tiny_model):
    from dve_perception.perception.backends.fused_outputs import PUBLISH_OUTPUT
    from dve_perception.perception.backends.onnx_export import export_onnx
    from dve_perception.perception.backends.onnxruntime_backend import OnnxRuntimeBackend

    fused = FusedOutputs(
        normalize=True, half=True, num_classes=3, argmax=True, publish_size=(16, 24)
    )
    prototypes = torch.randn(3, DIM, generator=torch.Generator().manual_seed(5))
    onnx_file = tmp_path / "fused.onnx"
    export_onnx(
        tiny_model, onnx_file, height=SIZE[0], width=SIZE[1], fused=fused, prototypes=prototypes
    )
    plan = ensure_engine(onnx_file, tmp_path / "engines", precision="fp32").plan_path
    rgb, depth = inputs()
    expected = OnnxRuntimeBackend(onnx_file).infer_outputs(rgb, depth)
    with TensorRTBackend(plan) as backend:
        assert backend.fused == fused
        actual = {k: v.cpu() for k, v in backend.infer_outputs(rgb.cuda(), depth.cuda()).items()}
    assert list(actual) == list(expected)
    for name in (OUTPUT_NAME, SCORES_OUTPUT, PUBLISH_OUTPUT):
        assert actual[name].dtype == expected[name].dtype
        torch.testing.assert_close(actual[name].float(), expected[name].float(), atol=5e-3, rtol=0)
    labels = actual[LABELS_OUTPUT]
    assert labels.dtype == torch.int32
    assert (labels == expected[LABELS_OUTPUT]).float().mean() > 0.99  # near-ties may flip
