"""Run a TensorRT engine built by `dve-perception build-engine` (TensorRT 10 name-based I/O).

The plan is checked against its sidecar first (`engine_cache.check_engine`): an engine built for
another GPU or TensorRT version, or modified since, is refused with the rebuild command rather
than handed to TensorRT. Two ways to move tensors:

- `io="torch"` (default): inputs and outputs are torch CUDA tensors whose addresses are bound to
  the execution context; the engine runs on a stream of its own that waits for torch's current
  stream and that torch's stream waits for (`SideStream`), so outputs stay on the GPU, ready
  for the caller's next kernels, and the caller copies only what it publishes.
- `io="pycuda"`: for deployments whose torch has no CUDA; page-locked host buffers, device
  buffers from pycuda, and outputs returned as CPU tensors.

tensorrt and pycuda are imported only when a backend is created.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from dve_perception.perception.backends import engine_cache
from dve_perception.perception.backends.base import InferenceBackend
from dve_perception.perception.backends.engine_build import import_tensorrt, tensorrt_logger
from dve_perception.perception.backends.engine_cache import EngineRecord, check_engine, read_sidecar
from dve_perception.perception.backends.export_metadata import INPUT_NAMES, OUTPUT_NAME
from dve_perception.perception.backends.fused_outputs import FusedOutputs
from dve_perception.perception.backends.tensorrt_bindings import (
    PycudaBindings,
    SideStream,
    TensorRTExecutionError,
    TensorSpec,
    TorchBindings,
    describe_io,
)

__all__ = ["IO_MODES", "TensorRTBackend", "TensorRTExecutionError", "TensorSpec", "describe_io"]

IO_MODES = ("torch", "pycuda")


class TensorRTBackend(InferenceBackend):
    """TensorRT inference from a serialised engine (`.plan`).

    Args:
        engine_path: the plan, normally from `dve-perception build-engine`.
        device: the CUDA device, "cuda" or "cuda:N".
        io: "torch" (CUDA tensors in and out) or "pycuda" (CPU tensors out; no CUDA torch).
        check_key: refuse a plan whose sidecar is missing, whose bytes changed, or which was
            built for another GPU or TensorRT version. False skips the check (hand-built plans).

    Attributes:
        output_names: every engine output, in engine order (the main embedding, then the
            fused outputs the ONNX export chose).
        fused: the fused outputs from the sidecar's export metadata (the default
            `FusedOutputs()` when `check_key` is False: unknown).
        record: the sidecar (None when `check_key` is False).
        max_batch: largest batch the engine's profile accepts.

    Raises:
        ConfigError: an unknown `io`, or a device that is not CUDA.
        BackendUnavailableError: tensorrt, pycuda (for io="pycuda"), or CUDA torch (for
            io="torch") is missing.
        CheckpointError: the plan is missing, cannot be deserialised, or lacks the expected I/O.
        StaleEngineError: see `check_key`.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        *,
        device: str | torch.device = "cuda",
        io: str = "torch",
        check_key: bool = True,
    ) -> None:
        if io not in IO_MODES:
            raise ConfigError(f"io must be one of {list(IO_MODES)}, got {io!r}")
        cuda_device = _cuda_device(device)
        path = Path(engine_path)
        if not path.is_file():
            raise CheckpointError(
                f"engine file {path} does not exist; build it with "
                "`dve-perception build-engine --onnx FILE`"
            )
        trt = import_tensorrt()
        self._cuda = _import_pycuda() if io == "pycuda" else None
        if io == "torch" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "the TensorRT backend with io='torch' needs a CUDA-enabled torch, and this torch "
                "sees no CUDA device; use io='pycuda' or install a CUDA torch"
            )
        self._cuda_device = cuda_device
        self._bindings = self._context = self._engine = self._runtime = None
        self._cuda_context = self._retain_context(cuda_device.index or 0)
        try:
            specs = self._load(path, trt, cuda_device, check_key)
            fixed_size, embedding_dim = _check_io(specs, path)
            self.max_batch = self._max_batch(specs)
            super().__init__(
                fixed_size=fixed_size,
                device=cuda_device if io == "torch" else torch.device("cpu"),
                embedding_dim=embedding_dim,
                fused=self._fused(specs, path),
                output_names=tuple(s.name for s in specs if not s.is_input),
            )
        except BaseException:
            self._release()
            raise

    def _fused(self, specs: tuple[TensorSpec, ...], path: Path) -> FusedOutputs | None:
        """The fused outputs recorded in the sidecar, checked against the engine's outputs."""
        metadata = self.record.export_metadata if self.record is not None else None
        if metadata is None:
            return None  # unknown: `output_names` still comes from the engine
        outputs = tuple(s.name for s in specs if not s.is_input)
        if set(outputs) != set(metadata.output_names):
            raise CheckpointError(
                f"engine {path} has outputs {list(outputs)} but its sidecar's export metadata "
                f"declares {list(metadata.output_names)}; rebuild it with `dve-perception "
                "build-engine --onnx FILE --force`"
            )
        return metadata.fused

    def _load(
        self, path: Path, trt: ModuleType, device: torch.device, check_key: bool
    ) -> tuple[TensorSpec, ...]:
        """Check and deserialise the plan, create the context and bindings; return the I/O."""
        data = path.read_bytes()
        self.record = self._check(path, data, trt, device.index or 0) if check_key else None
        with self._scope(device):
            self._runtime = trt.Runtime(tensorrt_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise CheckpointError(
                    f"TensorRT {trt.__version__} cannot deserialise {path}: not an engine, or "
                    "built by another TensorRT version or for another GPU (see TensorRT's log); "
                    "rebuild it with `dve-perception build-engine --onnx FILE --force`"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise CheckpointError(
                    f"TensorRT cannot create an execution context for {path}; the usual cause "
                    "is GPU memory for its activations: free GPU memory and retry"
                )
            specs = describe_io(self._engine, trt)
            self._bindings = self._make_bindings(specs, device)
        return specs

    def _check(self, path: Path, data: bytes, trt: ModuleType, index: int) -> EngineRecord:
        platform = engine_cache.platform_info(index)
        expected = replace(
            read_sidecar(path).key,
            gpu_name=platform.gpu_name,
            compute_capability=platform.compute_capability,
            multiprocessors=platform.multiprocessors,
            tensorrt_version=trt.__version__,
        )
        return check_engine(path, expected, data=data)

    def _retain_context(self, index: int) -> Any:
        if self._cuda is None:
            return None
        # The device's primary context: the one the CUDA runtime inside TensorRT also uses.
        self._cuda.init()
        return self._cuda.Device(index).retain_primary_context()

    @contextlib.contextmanager
    def _scope(self, device: torch.device) -> Iterator[None]:
        """Make the engine's device current: torch's device, or the pycuda context pushed."""
        if self._cuda_context is None:
            with torch.cuda.device(device):
                yield
            return
        self._cuda_context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _max_batch(self, specs: tuple[TensorSpec, ...]) -> int:
        rgb = next(s for s in specs if s.name == "rgb")
        if rgb.shape[0] >= 0:
            return rgb.shape[0]
        _, _, largest = self._engine.get_tensor_profile_shape("rgb", 0)
        return int(tuple(largest)[0])

    def _make_bindings(self, specs: tuple[TensorSpec, ...], device: torch.device) -> Any:
        if self._cuda is not None:
            return PycudaBindings(self._context, specs, self._cuda)
        return TorchBindings(
            self._context,
            specs,
            allocate=lambda shape, dtype: torch.empty(shape, dtype=dtype, device=device),
            stream=SideStream(device),
            device=device,
        )

    def _run(self, rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
        if rgb.shape[0] > self.max_batch:
            raise InputError(
                f"the TensorRT engine accepts batches up to {self.max_batch}, got "
                f"{rgb.shape[0]}; split the batch or rebuild with --max-batch {rgb.shape[0]}"
            )
        with self._scope(self._cuda_device):
            return self._bindings.run({"rgb": rgb, "depth": depth})

    def _infer_outputs_impl(
        self, rgb: torch.Tensor, depth: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run on validated inputs; return every engine output by name, in its engine dtype."""
        return self._run(rgb, depth)

    def close(self) -> None:
        """Release the execution context, engine, runtime and device buffers."""
        if self._closed:
            return
        super().close()
        self._release()

    def _release(self) -> None:
        """Free what exists of the bindings, context, engine and runtime, then the CUDA context."""
        with self._scope(self._cuda_device):
            if self._bindings is not None:
                self._bindings.free()
            # Bindings, context, engine, runtime: each refers to the next, so release in order.
            # Their streams and buffers belong to the pycuda context: gone before it is detached.
            self._bindings = None
            self._context = None
            self._engine = None
            self._runtime = None
        if self._cuda_context is not None:
            self._cuda_context.detach()
            self._cuda_context = None


def _cuda_device(device: str | torch.device) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be 'cuda' or 'cuda:N', got {device!r}") from err
    if parsed.type != "cuda":
        raise ConfigError(
            f"TensorRT runs on CUDA devices; device must be 'cuda' or 'cuda:N', got {device!r}"
        )
    return parsed


def _import_pycuda() -> ModuleType:
    try:
        return importlib.import_module("pycuda.driver")
    except ImportError as err:
        raise BackendUnavailableError(
            "io='pycuda' needs pycuda (pip install pycuda, or apt python3-pycuda on a Jetson); "
            "or use io='torch' with a CUDA-enabled torch"
        ) from err


def _check_io(specs: tuple[TensorSpec, ...], path: Path) -> tuple[tuple[int, int] | None, int]:
    """Return (fixed_size, embedding_dim) after checking the engine has the export's I/O."""
    inputs = {s.name: s for s in specs if s.is_input}
    outputs = {s.name: s for s in specs if not s.is_input}
    if set(inputs) != set(INPUT_NAMES) or OUTPUT_NAME not in outputs:
        raise CheckpointError(
            f"engine {path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; a "
            f"dve_perception export has inputs {list(INPUT_NAMES)} and output {OUTPUT_NAME!r}"
        )
    rgb, main = inputs["rgb"].shape, outputs[OUTPUT_NAME].shape
    if len(rgb) != 4 or rgb[1] != 3 or len(main) != 4 or main[1] < 1:
        raise CheckpointError(
            f"engine {path} has rgb {rgb} and {OUTPUT_NAME} {main}; expected (B, 3, H, W) and "
            "(B, D, h, w)"
        )
    fixed = (rgb[2], rgb[3]) if rgb[2] > 0 and rgb[3] > 0 else None
    return fixed, main[1]
