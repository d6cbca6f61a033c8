"""Backend options and the all-outputs interface: TorchBackend precision, channels-last and CUDA
graphs, `infer_outputs` and its checks, the onnxruntime CUDA provider, and `make_backend`.

The CUDA paths are marked `gpu` and skip without a CUDA device.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types

import onnxruntime as ort
import pytest
import torch

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from dve_perception.model import build_dveformer
from dve_perception.model.dveformer import TINY_TEST_CONFIG
from dve_perception.model.generated_weights import generate_state_dict
from dve_perception.perception.backends import BACKEND_NAMES, make_backend
from dve_perception.perception.backends.base import InferenceBackend
from dve_perception.perception.backends.fused_outputs import (
    LABELS_OUTPUT,
    OUTPUT_NAME,
    PUBLISH_OUTPUT,
    SCORES_OUTPUT,
    FusedOutputs,
)
from dve_perception.perception.backends.onnx_export import export_onnx
from dve_perception.perception.backends.onnxruntime_backend import OnnxRuntimeBackend
from dve_perception.perception.backends.torch_backend import TorchBackend
from dve_perception.perception.postprocess import class_scores, normalize_embedding

SIZE = (64, 96)
K = 3
FUSED = FusedOutputs(normalize=True, half=True, num_classes=K, argmax=True, publish_size=(16, 24))


def tiny_model():
    model = build_dveformer(dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=16))
    model.load_state_dict(generate_state_dict(model, seed=3))
    return model


@pytest.fixture(scope="module")
def prototypes():
    return torch.randn(K, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fused_file(tmp_path_factory, prototypes):
    path = tmp_path_factory.mktemp("onnx") / "fused.onnx"
    export_onnx(
        tiny_model(), path, height=SIZE[0], width=SIZE[1], fused=FUSED, prototypes=prototypes
    )
    return path


def _inputs(batch=1, h=SIZE[0], w=SIZE[1]):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, h, w, generator=gen), torch.randn(batch, 1, h, w, generator=gen)


def test_torch_backend_returns_every_fused_output_and_infer_the_main_one_in_fp32(prototypes):
    model = tiny_model()
    backend = TorchBackend(model, fused=FUSED, prototypes=prototypes)
    assert backend.output_names == FUSED.output_names and backend.fused == FUSED
    rgb, depth = _inputs(batch=2)
    outputs = backend.infer_outputs(rgb, depth)
    assert list(outputs) == list(FUSED.output_names)
    assert {k: v.dtype for k, v in outputs.items()} == FUSED.output_dtypes
    with torch.no_grad():
        raw = model(rgb, depth)
    torch.testing.assert_close(outputs[SCORES_OUTPUT], class_scores(raw, prototypes))
    main = backend.infer(rgb, depth)
    assert main.dtype == torch.float32
    torch.testing.assert_close(main, normalize_embedding(raw), rtol=0, atol=1e-3)


def test_onnxruntime_backend_returns_the_files_outputs_like_torch(fused_file, prototypes):
    backend = make_backend("onnxruntime", onnx_path=fused_file)
    assert backend.output_names == FUSED.output_names and backend.fused == FUSED
    assert backend.providers == ("CPUExecutionProvider",)
    rgb, depth = _inputs(batch=2)
    outputs = backend.infer_outputs(rgb, depth)
    expected = TorchBackend(tiny_model(), fused=FUSED, prototypes=prototypes).infer_outputs(
        rgb, depth
    )
    assert {k: (v.dtype, v.shape, v.device.type) for k, v in outputs.items()} == {
        k: (v.dtype, v.shape, "cpu") for k, v in expected.items()
    }
    for name in (OUTPUT_NAME, SCORES_OUTPUT, PUBLISH_OUTPUT):
        torch.testing.assert_close(outputs[name].float(), expected[name].float(), atol=2e-3, rtol=0)
    assert (outputs[LABELS_OUTPUT] == expected[LABELS_OUTPUT]).float().mean() > 0.99
    assert backend.infer(rgb, depth).dtype == torch.float32


@pytest.mark.parametrize(
    ("rgb_shape", "depth_shape", "match"),
    [
        ((1, 3, 64, 96), (1, 1, 64, 64), "differ in batch or size"),
        ((1, 4, 64, 96), (1, 1, 64, 96), r"rgb must have shape \(B, 3, H, W\)"),
        ((1, 3, 60, 96), (1, 1, 60, 96), "not a multiple of 32"),
    ],
)
def test_infer_outputs_rejects_bad_inputs_like_infer(fused_file, rgb_shape, depth_shape, match):
    backend = make_backend("onnxruntime", onnx_path=fused_file)
    rgb, depth = torch.zeros(rgb_shape), torch.zeros(depth_shape)
    with pytest.raises(InputError, match=match):
        backend.infer(rgb, depth)
    with pytest.raises(InputError, match=match):
        backend.infer_outputs(rgb, depth)


def test_infer_outputs_refuses_other_sizes_and_closed_backends(fused_file):
    backend = make_backend("onnxruntime", onnx_path=fused_file)
    with pytest.raises(InputError, match="built for 64x96 inputs, got 96x96"):
        backend.infer_outputs(*_inputs(h=96, w=96))
    backend.close()
    with pytest.raises(InputError, match="the onnxruntime backend was closed"):
        backend.infer_outputs(*_inputs())


class _Scripted(InferenceBackend):
    """A backend returning whatever the test scripts, to exercise the output checks."""

    name = "scripted"

    def __init__(self, outputs, **kwargs):
        super().__init__(fixed_size=None, device=torch.device("cpu"), embedding_dim=4, **kwargs)
        self.outputs = outputs

    def _infer_outputs_impl(self, rgb, depth):
        return self.outputs


def test_outputs_are_checked_against_the_declared_names_and_batch():
    rgb, depth = _inputs(batch=2)
    good = {OUTPUT_NAME: torch.ones(2, 4, 8, 8), SCORES_OUTPUT: torch.ones(2, 3, 8, 8)}
    fused = FusedOutputs(num_classes=3)
    assert list(_Scripted(good, fused=fused).infer_outputs(rgb, depth)) == list(good)
    assert _Scripted(good, fused=fused).infer(rgb, depth).shape == (2, 4, 8, 8)

    with pytest.raises(CheckpointError, match=r"did not return \['class_scores'\]"):
        _Scripted({OUTPUT_NAME: torch.ones(2, 4, 8, 8)}, fused=fused).infer_outputs(rgb, depth)
    wrong_batch = good | {SCORES_OUTPUT: torch.ones(1, 3, 8, 8)}
    with pytest.raises(CheckpointError, match="'class_scores' is \\(1, 3, 8, 8\\), expected a "):
        _Scripted(wrong_batch, fused=fused).infer_outputs(rgb, depth)
    with pytest.raises(CheckpointError, match="has outputs \\['x'\\] but no 'dense_visual"):
        _Scripted(good, output_names=("x",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(precision="fp16"), "precision 'fp16' .*needs a CUDA device, got cpu; use precision"),
        (dict(precision="bf16"), r"precision must be one of \['fp32', 'fp16'\], got 'bf16'"),
        (dict(cuda_graphs=True), "cuda_graphs needs a CUDA device, got cpu"),
        (dict(fused=FusedOutputs(num_classes=2)), "num_classes is 2 but no prototypes"),
    ],
)
def test_torch_backend_options_are_checked_on_the_cpu(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TorchBackend(tiny_model(), "cpu", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a CUDA device")
def test_torch_backend_on_missing_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="device cuda requested but torch sees no CUDA device"):
        TorchBackend(tiny_model(), "cuda")


@pytest.mark.parametrize("matmul_before", ["tf32", "ieee", "none"])
def test_fp32_on_cuda_turns_tf32_off_with_the_settings_a_process_may_have_chosen(matmul_before):
    from dve_perception.perception.backends.torch_backend import _no_tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    original = matmul.fp32_precision, conv.fp32_precision
    try:
        # A process that chose TF32 with torch's new settings: the legacy flags would now raise.
        matmul.fp32_precision, conv.fp32_precision = matmul_before, "tf32"
        with _no_tf32():
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, conv.fp32_precision) == (matmul_before, "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = original


def test_fp32_on_cuda_uses_the_legacy_tf32_flags_on_a_torch_without_the_new_ones(monkeypatch):
    from dve_perception.perception.backends.torch_backend import _no_tf32

    legacy = types.SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", legacy)
    monkeypatch.setattr(torch.backends, "cudnn", types.SimpleNamespace(allow_tf32=True))
    with _no_tf32():
        assert not legacy.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert legacy.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_channels_last_on_the_cpu_changes_the_layout_not_the_result():
    rgb, depth = _inputs()
    reference = TorchBackend(tiny_model(), channels_last=False).infer(rgb, depth)
    backend = TorchBackend(tiny_model())
    nchw = TorchBackend(tiny_model(), channels_last=False)
    assert backend.channels_last and not nchw.channels_last
    conv = next(m for m in backend._graph.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(backend.infer(rgb, depth), reference, rtol=1e-4, atol=1e-5)


def test_onnxruntime_cuda_needs_the_gpu_package(fused_file, monkeypatch):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime-gpu"):
        OnnxRuntimeBackend(fused_file, device="cuda")
    with pytest.raises(ConfigError, match=r"runs on cpu or cuda\[:N\], not 'tpu'"):
        OnnxRuntimeBackend(fused_file, device="tpu")
    # A provider that is listed but does not start (CUDA libraries missing): onnxruntime falls
    # back to the CPU with a warning only; the backend must refuse instead.
    available = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    with (
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),
        pytest.raises(BackendUnavailableError, match="could not start its CUDA provider"),
    ):
        OnnxRuntimeBackend(fused_file, device="cuda:0")


@pytest.mark.parametrize(
    ("device", "torch_has_cuda", "expected"),
    [
        ("cpu", True, "cpu"),
        ("cuda", True, "cuda:0"),
        ("cuda:1", True, "cuda:1"),
        # onnxruntime-gpu next to a CPU-only torch: host buffers, ONNX Runtime copies.
        ("cuda:1", False, "cpu"),
    ],
)
def test_onnxruntime_binds_its_tensors_on_the_provider_gpu_when_torch_can_hold_them(
    monkeypatch, device, torch_has_cuda, expected
):
    from dve_perception.perception.backends.onnxruntime_backend import _io_device, _providers

    providers = _providers(device, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if device != "cpu":  # fp32 without TF32, as on the other backends
        options = {"device_id": int(device.partition(":")[2] or 0), "use_tf32": 0}
        assert providers == [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_has_cuda)
    assert _io_device(providers) == torch.device(expected)


def test_onnxruntime_io_binding_gives_what_a_plain_run_gives(fused_file):
    # The path the CUDA provider takes (torch tensors bound by address), run on the CPU here.
    plain, bound = OnnxRuntimeBackend(fused_file), OnnxRuntimeBackend(fused_file)
    assert not plain._bind_io
    bound._bind_io = True
    rgb, depth = _inputs(batch=2)
    strided = rgb.contiguous(memory_format=torch.channels_last)  # bound by address: made dense
    expected = plain.infer_outputs(rgb, depth)
    outputs = bound.infer_outputs(strided, depth)
    assert list(outputs) == list(expected)
    for name, value in expected.items():
        assert outputs[name].dtype == value.dtype and torch.equal(outputs[name], value), name
    assert torch.equal(bound.infer(rgb, depth), plain.infer(rgb, depth))


def test_onnxruntime_refuses_a_graph_whose_axes_after_the_batch_are_not_fixed(fused_file, tmp_path):
    import onnx

    # Output buffers are allocated before the run, so every axis but the batch must be known.
    model = onnx.load(str(fused_file))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    path = tmp_path / "symbolic.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CheckpointError, match=r"'rgb' is tensor\(float\) of shape .*re-export"):
        OnnxRuntimeBackend(path)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (
            "tensorflow",
            {},
            re.escape(f"unknown backend 'tensorflow'; expected one of {list(BACKEND_NAMES)}"),
        ),
        ("torch", {}, "backend 'torch' needs a model"),
        ("onnxruntime", {}, "needs an exported file"),
        ("tensorrt", {}, "needs an engine file: .*dve-perception build-engine"),
        ("tensorrt", {"engine_path": "e.plan"}, "runs on a CUDA device .*not 'cpu'"),
        ("onnxruntime", {"onnx_path": "m.onnx", "precision": "fp16"}, "precision 'fp16' applies"),
        ("tensorrt", {"engine_path": "e.plan", "precision": "fp16"}, "build-engine"),
        ("onnxruntime", {"onnx_path": "m.onnx", "cuda_graphs": True}, "cuda_graphs applies"),
        ("onnxruntime", {"onnx_path": "m.onnx", "fused": FusedOutputs()}, "export-onnx"),
        ("tensorrt", {"engine_path": "e.plan", "prototypes": torch.ones(1, 16)}, "fused outputs"),
    ],
)
def test_make_backend_rejects_unknown_names_and_options_a_backend_does_not_take(
    name, kwargs, message
):
    with pytest.raises(ConfigError, match=message):
        make_backend(name, **kwargs)


def test_make_backend_passes_the_torch_options_and_hands_tensorrt_its_plan(monkeypatch, prototypes):
    backend = make_backend("torch", model=tiny_model(), fused=FUSED, prototypes=prototypes)
    assert isinstance(backend, TorchBackend) and backend.output_names == FUSED.output_names
    assert (backend.precision, backend.cuda_graphs, backend.channels_last) == ("fp32", False, True)

    created = {}
    fake = types.ModuleType("dve_perception.perception.backends.tensorrt_backend")
    fake.TensorRTBackend = lambda path, *, device, io: (
        created.update(path=path, device=device, io=io) or "trt"
    )
    monkeypatch.setitem(sys.modules, "dve_perception.perception.backends.tensorrt_backend", fake)
    for has_cuda, io in ((True, "torch"), (False, "pycuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda has_cuda=has_cuda: has_cuda)
        assert make_backend("tensorrt", engine_path="e.plan", device="cuda:1") == "trt"
        # Without CUDA torch the engine's buffers come from pycuda.
        assert created == {"path": "e.plan", "device": "cuda:1", "io": io}


@pytest.mark.gpu
def test_torch_fp16_channels_last_cuda_graphs_match_fp32_and_recapture_per_shape(prototypes):
    rgb, depth = _inputs(batch=2)
    fused = dataclasses.replace(FUSED, half=False)
    reference = TorchBackend(tiny_model(), fused=fused, prototypes=prototypes).infer_outputs(
        rgb, depth
    )
    backend = TorchBackend(
        tiny_model(), "cuda", precision="fp16", cuda_graphs=True, fused=fused, prototypes=prototypes
    )
    assert backend.channels_last  # the default
    first = backend.infer_outputs(rgb, depth)
    kept = first[OUTPUT_NAME].clone()
    second = backend.infer_outputs(rgb * 0.5, depth)  # a replay must not overwrite `first`
    assert torch.equal(first[OUTPUT_NAME], kept)
    assert not torch.equal(second[OUTPUT_NAME], kept)
    for name in (OUTPUT_NAME, PUBLISH_OUTPUT):
        error = (first[name].float().cpu() - reference[name].float()).norm()
        assert error / reference[name].float().norm() < 2e-2, name
    assert first[SCORES_OUTPUT].dtype == torch.float32
    other = backend.infer_outputs(*_inputs(batch=1, h=96, w=128))  # a new shape re-captures
    assert other[OUTPUT_NAME].shape == (1, 16, 96, 128)
    eager = TorchBackend(tiny_model(), "cuda", precision="fp16", fused=fused, prototypes=prototypes)
    torch.testing.assert_close(
        eager.infer_outputs(rgb, depth)[OUTPUT_NAME], first[OUTPUT_NAME], atol=1e-3, rtol=0
    )


@pytest.mark.gpu
def test_onnxruntime_cuda_provider_matches_cpu(fused_file):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    rgb, depth = _inputs()
    cpu = OnnxRuntimeBackend(fused_file).infer_outputs(rgb, depth)
    cuda = OnnxRuntimeBackend(fused_file, device="cuda")
    assert cuda.providers[0] == "CUDAExecutionProvider"
    assert cuda.device == torch.device("cuda", 0)  # outputs stay on the GPU
    out = cuda.infer_outputs(rgb.cuda(), depth.cuda())
    assert all(value.is_cuda for value in out.values())
    torch.testing.assert_close(out[SCORES_OUTPUT].cpu(), cpu[SCORES_OUTPUT], atol=1e-3, rtol=0)
