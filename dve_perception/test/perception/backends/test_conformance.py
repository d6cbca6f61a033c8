"""Backend conformance: every available backend computes what PyTorch on the CPU computes, returns
what it declares, and refuses bad inputs with the same error (Polygraphy's check_runner idea: one
registry of cases, one set of checks run over all of them).

Each case is a factory plus its tolerances and pytest marks, side by side in `CASES`; cases whose
hardware is missing are skipped by their marker (conftest.py). All cases run the same tiny
DVEFormer with generated weights, exported at 64x96, in two variants: the official single raw
output, and a fused graph (unit fp16 embedding, 3 class scores, labels, a 16x24 publish output).

The reference is the PyTorch model on the CPU in fp32, with the fused outputs computed here from
the raw embedding by plain tensor arithmetic (not by `FusedGraph`, which the backends use).
Tolerances are relative L2 errors against it. fp16 *outputs* of an fp32 case are compared with
the reference rounded to fp16 the same way; where the two fp32 values straddle a rounding
boundary they land one fp16 step (<= 2**-10 relative) apart, hence 1e-3 for those.

Error messages must be the same text in every backend; only the backend's own name, which some
messages carry ("the onnxruntime backend was closed"), is replaced before comparing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.model import build_dveformer
from dve_perception.model.dveformer import TINY_TEST_CONFIG, DVEFormer
from dve_perception.model.generated_weights import generate_state_dict
from dve_perception.perception.backends.base import InferenceBackend
from dve_perception.perception.backends.fused_outputs import FusedOutputs
from dve_perception.perception.backends.onnx_export import export_onnx
from dve_perception.perception.backends.onnxruntime_backend import OnnxRuntimeBackend
from dve_perception.perception.backends.torch_backend import TorchBackend

SIZE = (64, 96)
DIM = TINY_TEST_CONFIG.embedding_dim  # 16, output stride 1: the embedding is 64x96 too
K = 3
PUBLISH = (16, 24)
MAIN, SCORES, LABELS, PUBLISHED = (
    "dense_visual_embedding_decoder_0",
    "class_scores",
    "class_labels",
    "embedding_publish",
)
VARIANTS = {
    "plain": FusedOutputs(),
    "fused": FusedOutputs(
        normalize=True, half=True, num_classes=K, argmax=True, publish_size=PUBLISH
    ),
}
#: Per variant: output name -> (shape after the batch axis, dtype); written out, not derived.
EXPECTED_OUTPUTS = {
    "plain": {MAIN: ((DIM, *SIZE), torch.float32)},
    "fused": {
        MAIN: ((DIM, *SIZE), torch.float16),
        SCORES: ((K, *SIZE), torch.float32),
        LABELS: (SIZE, torch.int32),
        PUBLISHED: ((DIM, *PUBLISH), torch.float16),
    },
}


@dataclass(frozen=True)
class Tolerance:
    """What a case must meet against the torch-cpu fp32 reference.

    Attributes:
        fp32: largest relative L2 error of float32 outputs.
        fp16: largest relative L2 error of float16 outputs (vs the reference rounded to fp16).
        label_margin: labels must equal the reference's wherever its best class score beats
            the second by more than this.
    """

    fp32: float
    fp16: float
    label_margin: float = 1e-3

    def for_dtype(self, dtype: torch.dtype) -> float:
        return self.fp16 if dtype == torch.float16 else self.fp32


FP32 = Tolerance(fp32=1e-5, fp16=1e-3)
FP16 = Tolerance(fp32=5e-3, fp16=5e-3)


@dataclass
class Artifacts:
    """What the factories build backends from (one copy per module)."""

    model: DVEFormer
    prototypes: torch.Tensor
    onnx: dict[str, Path]
    engine_dir: Path


@dataclass(frozen=True)
class Case:
    """One backend configuration under test.

    Attributes:
        name: the test id.
        make: (artifacts, variant) -> a new backend.
        tolerance: see `Tolerance`.
        device: where the inputs are put, and where the backend declares (and returns) its
            outputs.
        static: the backend accepts only the export size (64x96).
    """

    name: str
    make: Callable[[Artifacts, str], InferenceBackend]
    tolerance: Tolerance
    device: str = "cpu"
    static: bool = False
    marks: tuple = ()


def _torch(device: str, precision: str = "fp32", cuda_graphs: bool = False):
    def make(artifacts: Artifacts, variant: str) -> InferenceBackend:
        fused = VARIANTS[variant]
        # A copy: the backend moves its model to the device (and to channels-last) in place.
        return TorchBackend(
            copy.deepcopy(artifacts.model),
            device,
            precision=precision,
            cuda_graphs=cuda_graphs,
            fused=fused,
            prototypes=artifacts.prototypes if fused.num_classes else None,
        )

    return make


def _onnxruntime(device: str):
    def make(artifacts: Artifacts, variant: str) -> InferenceBackend:
        if device != "cpu":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        return OnnxRuntimeBackend(artifacts.onnx[variant], device=device)

    return make


def _tensorrt(precision: str):
    def make(artifacts: Artifacts, variant: str) -> InferenceBackend:
        from dve_perception.perception.backends.engine_build import ensure_engine
        from dve_perception.perception.backends.tensorrt_backend import TensorRTBackend

        cached = ensure_engine(
            artifacts.onnx[variant], artifacts.engine_dir, precision=precision, max_batch=2
        )
        return TensorRTBackend(cached.plan_path, device="cuda")

    return make


GPU = (pytest.mark.gpu,)
TRT = (pytest.mark.tensorrt, pytest.mark.gpu)
CASES = (
    Case("torch-cpu", _torch("cpu"), FP32),
    Case("onnxruntime-cpu", _onnxruntime("cpu"), FP32, static=True),
    Case("torch-cuda-fp32", _torch("cuda"), FP32, "cuda", marks=GPU),
    Case("torch-cuda-fp16", _torch("cuda", "fp16"), FP16, "cuda", marks=GPU),
    Case("torch-cuda-fp16-graphs", _torch("cuda", "fp16", True), FP16, "cuda", marks=GPU),
    Case("onnxruntime-cuda", _onnxruntime("cuda"), FP32, "cuda", static=True, marks=GPU),
    Case("tensorrt-fp32", _tensorrt("fp32"), FP32, "cuda", static=True, marks=TRT),
    Case("tensorrt-fp16", _tensorrt("fp16"), FP16, "cuda", static=True, marks=TRT),
)
REFERENCE_CASE, STATIC_REFERENCE_CASE = CASES[0], CASES[1]
ALL_CASES = [pytest.param(case, id=case.name, marks=case.marks) for case in CASES]
STATIC_CASES = [p for p, case in zip(ALL_CASES, CASES, strict=True) if case.static]
DYNAMIC_CASES = [p for p, case in zip(ALL_CASES, CASES, strict=True) if not case.static]
variants = pytest.mark.parametrize("variant", list(VARIANTS))
batches = pytest.mark.parametrize("batch", [1, 2])
methods = pytest.mark.parametrize("method", ["infer", "infer_outputs"])


class BackendPool:
    """Backends created on first use and shared by the tests; closed at the end."""

    def __init__(self, artifacts: Artifacts) -> None:
        self.artifacts = artifacts
        self._open: dict[tuple[str, str], InferenceBackend] = {}

    def get(self, case: Case, variant: str) -> InferenceBackend:
        key = (case.name, variant)
        if key not in self._open:
            self._open[key] = case.make(self.artifacts, variant)
        return self._open[key]

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Artifacts:
    model = build_dveformer(TINY_TEST_CONFIG)
    model.load_state_dict(generate_state_dict(model, seed=3))
    prototypes = torch.randn(K, DIM, generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp("conformance")
    onnx = {}
    for variant, fused in VARIANTS.items():
        onnx[variant] = folder / f"tiny_{variant}.onnx"
        export_onnx(
            model,
            onnx[variant],
            height=SIZE[0],
            width=SIZE[1],
            fused=fused,
            prototypes=prototypes if fused.num_classes else None,
        )
    return Artifacts(model, prototypes, onnx, folder / "engines")


@pytest.fixture(scope="module")
def pool(artifacts):
    pool = BackendPool(artifacts)
    yield pool
    pool.close()


def _inputs(batch: int, height: int = SIZE[0], width: int = SIZE[1], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, height, width, generator=gen)
    return rgb, torch.randn(batch, 1, height, width, generator=gen)


def _reference(artifacts: Artifacts, variant: str, batch: int) -> dict[str, torch.Tensor]:
    """The expected outputs, from the fp32 CPU model and elementary tensor operations."""
    with torch.no_grad():
        raw = artifacts.model(*_inputs(batch)).double()
    if variant == "plain":
        return {MAIN: raw}
    unit = raw / raw.norm(dim=1, keepdim=True)
    protos = artifacts.prototypes.double()
    protos = protos / protos.norm(dim=1, keepdim=True)
    scores = torch.einsum("bdhw,kd->bkhw", unit, protos)
    # Equal 4x4 areas (64x96 -> 16x24): mean of the unit vectors, then re-normalised.
    b, d, h, w = unit.shape
    blocks = unit.reshape(b, d, PUBLISH[0], h // PUBLISH[0], PUBLISH[1], w // PUBLISH[1])
    published = blocks.mean(dim=(3, 5))
    published = published / published.norm(dim=1, keepdim=True)
    return {MAIN: unit, SCORES: scores, LABELS: scores.argmax(dim=1), PUBLISHED: published}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.cpu().double()
    return float((actual.cpu().double() - expected).norm() / expected.norm())


def _check_close(name: str, actual: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    if actual.dtype == torch.float16:
        expected = expected.half()  # the graph rounds once at its end; so does the reference
    error = _relative_error(actual, expected)
    limit = case.tolerance.for_dtype(actual.dtype)
    assert error <= limit, f"{case.name} {name}: relative L2 error {error:.2e} > {limit:.0e}"


def _check_labels(actual: torch.Tensor, reference: dict[str, torch.Tensor], case: Case) -> None:
    top2 = reference[SCORES].topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > case.tolerance.label_margin
    assert confident.float().mean() > 0.5, "too few confident pixels for a meaningful check"
    differ = (actual.cpu().long() != reference[LABELS]) & confident
    assert int(differ.sum()) == 0, f"{case.name}: {int(differ.sum())} confident labels differ"


def _on_device(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and device.index in (None, tensor.device.index)


@pytest.mark.parametrize("case", ALL_CASES)
@variants
def test_every_backend_declares_the_outputs_size_and_dimension_of_its_model(pool, case, variant):
    backend = pool.get(case, variant)
    assert backend.output_names == tuple(EXPECTED_OUTPUTS[variant])
    assert backend.fused == VARIANTS[variant]
    assert backend.fixed_size == (SIZE if case.static else None)
    assert backend.embedding_dim == DIM
    assert backend.device.type == case.device


@pytest.mark.parametrize("case", ALL_CASES)
@variants
@batches
def test_every_output_has_the_declared_shape_dtype_and_device(pool, case, variant, batch):
    backend = pool.get(case, variant)
    rgb, depth = (t.to(case.device) for t in _inputs(batch))
    outputs = backend.infer_outputs(rgb, depth)
    assert list(outputs) == list(EXPECTED_OUTPUTS[variant])
    for name, (shape, dtype) in EXPECTED_OUTPUTS[variant].items():
        assert tuple(outputs[name].shape) == (batch, *shape), name
        assert outputs[name].dtype == dtype, name
        assert _on_device(outputs[name], backend.device), (name, outputs[name].device)


@pytest.mark.parametrize("case", ALL_CASES)
@variants
@batches
def test_every_output_matches_the_torch_cpu_reference_within_the_case_tolerance(
    pool, artifacts, case, variant, batch
):
    backend = pool.get(case, variant)
    rgb, depth = (t.to(case.device) for t in _inputs(batch))
    outputs = backend.infer_outputs(rgb, depth)
    reference = _reference(artifacts, variant, batch)
    for name, actual in outputs.items():
        if name == LABELS:
            _check_labels(actual, reference, case)
        else:
            _check_close(name, actual, reference[name], case)


@pytest.mark.parametrize("case", ALL_CASES)
@variants
@batches
def test_infer_returns_the_main_embedding_as_float32(pool, artifacts, case, variant, batch):
    backend = pool.get(case, variant)
    rgb, depth = (t.to(case.device) for t in _inputs(batch))
    main = backend.infer(rgb, depth)
    assert main.dtype == torch.float32
    assert tuple(main.shape) == (batch, DIM, *SIZE)
    assert _on_device(main, backend.device)
    expected = _reference(artifacts, variant, batch)[MAIN]
    graph_dtype = EXPECTED_OUTPUTS[variant][MAIN][1]
    if graph_dtype == torch.float16:
        expected = expected.half()  # infer widens the graph's fp16 output
    error = _relative_error(main, expected)
    assert error <= case.tolerance.for_dtype(graph_dtype), f"relative L2 error {error:.2e}"


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("layout", ["channels_last", "crop_view"])
def test_strided_inputs_give_the_outputs_of_contiguous_ones(pool, case, layout):
    # Backends that bind buffers by address must not read a strided tensor as if it were dense.
    backend = pool.get(case, "fused")
    rgb, depth = (t.to(case.device) for t in _inputs(2))
    if layout == "channels_last":
        strided = [t.contiguous(memory_format=torch.channels_last) for t in (rgb, depth)]
    else:
        wider = [torch.cat([t, t.flip(-1)], dim=-1) for t in (rgb, depth)]
        strided = [t[..., : SIZE[1]] for t in wider]
    assert not strided[0].is_contiguous()
    expected = backend.infer_outputs(rgb, depth)
    actual = backend.infer_outputs(*strided)
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def _error(backend: InferenceBackend, method: str, rgb, depth) -> tuple[type, str]:
    """The exception type and text a call raises, with the backend's own name neutralised."""
    try:
        getattr(backend, method)(rgb, depth)
    except Exception as err:  # every error counts: the type is part of what is compared
        return type(err), str(err).replace(f"the {backend.name} backend", "the <backend> backend")
    pytest.fail(f"{backend.name}.{method} accepted the input")


def _tensor(*shape: int, dtype: torch.dtype = torch.float32) -> Callable[[str], torch.Tensor]:
    return lambda device: torch.zeros(shape, dtype=dtype, device=device)


#: id -> (rgb maker, depth maker, what the reference's message must say).
BAD_INPUTS = {
    "rgb-without-batch-axis": (
        _tensor(3, 64, 96),
        _tensor(1, 1, 64, 96),
        r"^rgb must have shape \(B, 3, H, W\), got \(3, 64, 96\)$",
    ),
    "depth-of-rank-5": (
        _tensor(1, 3, 64, 96),
        _tensor(1, 1, 1, 64, 96),
        r"^depth must have shape \(B, 1, H, W\), got \(1, 1, 1, 64, 96\)$",
    ),
    "four-colour-channels": (
        _tensor(1, 4, 64, 96),
        _tensor(1, 1, 64, 96),
        r"^rgb must have shape \(B, 3, H, W\), got \(1, 4, 64, 96\)$",
    ),
    "depth-of-another-size": (
        _tensor(1, 3, 64, 96),
        _tensor(1, 1, 64, 64),
        r"^rgb \(1, 3, 64, 96\) and depth \(1, 1, 64, 64\) differ in batch or size; ",
    ),
    "depth-of-another-batch": (
        _tensor(2, 3, 64, 96),
        _tensor(1, 1, 64, 96),
        r"^rgb \(2, 3, 64, 96\) and depth \(1, 1, 64, 96\) differ in batch or size; ",
    ),
    "not-a-multiple-of-32": (
        _tensor(1, 3, 60, 96),
        _tensor(1, 1, 60, 96),
        r"^input size 60x96 is not a multiple of 32; resize to e\.g\. 64x96 ",
    ),
    "integer-colour": (
        _tensor(1, 3, 64, 96, dtype=torch.uint8),
        _tensor(1, 1, 64, 96),
        r"^rgb must be a floating-point tensor, got torch\.uint8$",
    ),
    "numpy-depth": (
        _tensor(1, 3, 64, 96),
        lambda device: np.zeros((1, 1, 64, 96), np.float32),
        r"^depth must be a torch\.Tensor, got ndarray$",
    ),
    "empty-batch": (
        _tensor(0, 3, 64, 96),
        _tensor(0, 1, 64, 96),
        r"^empty input of shape \(0, 3, 64, 96\)$",
    ),
}


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@variants
@methods
def test_every_backend_refuses_bad_inputs_with_the_same_error(pool, case, bad, variant, method):
    make_rgb, make_depth, says = BAD_INPUTS[bad]
    expected = _error(pool.get(REFERENCE_CASE, variant), method, make_rgb("cpu"), make_depth("cpu"))
    assert expected[0] is InputError and re.search(says, expected[1]), expected
    rgb, depth = make_rgb(case.device), make_depth(case.device)
    assert _error(pool.get(case, variant), method, rgb, depth) == expected


@pytest.mark.parametrize("case", STATIC_CASES)
@methods
def test_static_backends_refuse_other_sizes_with_the_same_error(pool, case, method):
    reference = pool.get(STATIC_REFERENCE_CASE, "fused")
    expected = _error(reference, method, *_inputs(1, 96, 96))
    says = r"^the <backend> backend was built for 64x96 inputs, got 96x96; preprocess to 64x96 "
    assert expected[0] is InputError and re.search(says, expected[1]), expected
    rgb, depth = (t.to(case.device) for t in _inputs(1, 96, 96))
    assert _error(pool.get(case, "fused"), method, rgb, depth) == expected


@pytest.mark.parametrize("case", DYNAMIC_CASES)
def test_dynamic_backends_accept_any_multiple_of_32(pool, case):
    rgb, depth = (t.to(case.device) for t in _inputs(1, 128, 192))
    outputs = pool.get(case, "fused").infer_outputs(rgb, depth)
    assert tuple(outputs[MAIN].shape) == (1, DIM, 128, 192)
    assert tuple(outputs[PUBLISHED].shape) == (1, DIM, *PUBLISH)


def _closed(case: Case, artifacts: Artifacts, variant: str) -> InferenceBackend:
    """A new backend used once inside `with`, closed on leaving it, then closed again."""
    with case.make(artifacts, variant) as backend:
        rgb, depth = (t.to(case.device) for t in _inputs(1))
        assert backend.infer(rgb, depth).shape[0] == 1
    backend.close()  # a second close is harmless
    return backend


@pytest.mark.parametrize("case", ALL_CASES)
@variants
@methods
def test_a_closed_backend_refuses_every_call_with_the_same_error(artifacts, case, variant, method):
    expected = _error(_closed(REFERENCE_CASE, artifacts, variant), method, *_inputs(1))
    says = r"^the <backend> backend was closed; create a new one$"
    assert expected[0] is InputError and re.search(says, expected[1]), expected
    rgb, depth = (t.to(case.device) for t in _inputs(1))
    assert _error(_closed(case, artifacts, variant), method, rgb, depth) == expected


@pytest.mark.slow
def test_a_real_size_reducedres_export_matches_torch_in_onnxruntime(tmp_path):
    model = build_dveformer("reducedres")
    model.load_state_dict(generate_state_dict(model, seed=1))
    path = tmp_path / "reducedres_96x128.onnx"
    export_onnx(model, path, height=96, width=128)
    rgb, depth = _inputs(1, 96, 128, seed=4)
    with torch.no_grad():
        expected = model(rgb, depth)
    with OnnxRuntimeBackend(path) as backend:
        actual = backend.infer(rgb, depth)
    assert tuple(actual.shape) == (1, 768, 24, 32)  # reduced-res: output stride 4
    error = _relative_error(actual, expected)
    assert error < 1e-4, f"relative L2 error {error:.2e}"
