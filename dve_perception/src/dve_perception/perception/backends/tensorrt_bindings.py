"""Binding tensors to a TensorRT 10 execution context by name and address.

`describe_io` lists an engine's tensors with the name-based API (`num_io_tensors`,
`get_tensor_name`, `get_tensor_mode`, `get_tensor_shape`, `get_tensor_dtype`). `TorchBindings`
binds torch tensors (CUDA in deployment, CPU in tests) and enqueues through a `SideStream`, the
engine's own CUDA stream ordered with the caller's; `PycudaBindings` stages through page-locked
host buffers and pycuda device memory for deployments whose torch has no CUDA. Neither imports
tensorrt or pycuda: the modules and objects come in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from dve_perception.errors import CheckpointError, DvePerceptionError, InputError

__all__ = [
    "PycudaBindings",
    "SideStream",
    "TensorRTExecutionError",
    "TensorSpec",
    "TorchBindings",
    "describe_io",
]

#: TensorRT wants tensor addresses aligned to 256 bytes (setTensorAddress).
_ALIGNMENT = 256
#: TensorRT DataType names and the torch dtypes their buffers hold.
_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


class TensorRTExecutionError(DvePerceptionError, RuntimeError):
    """TensorRT failed while running an engine (its log says why)."""


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor of an engine.

    Attributes:
        name: tensor name.
        is_input: True for inputs.
        shape: the engine's shape, -1 for dynamic axes.
        dtype: the torch dtype of its buffer.
    """

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: torch.dtype


def describe_io(engine: Any, trt: ModuleType) -> tuple[TensorSpec, ...]:
    """List an engine's I/O tensors with the TensorRT 10 name-based API.

    Raises:
        CheckpointError: a tensor has a data type torch cannot hold (FP8, INT4, FP4).
    """
    specs = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = engine.get_tensor_dtype(name)
        if dtype.name not in _TORCH_DTYPES:
            raise CheckpointError(
                f"engine tensor {name!r} has TensorRT type {dtype.name}, which torch buffers do "
                f"not support; supported: {sorted(_TORCH_DTYPES)}"
            )
        specs.append(
            TensorSpec(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
                dtype=_TORCH_DTYPES[dtype.name],
            )
        )
    return tuple(specs)


class SideStream:
    """The CUDA stream an engine runs on, ordered after and before the caller's stream.

    TensorRT synchronises extra when enqueued on the legacy default stream (it warns "Using
    default stream in enqueueV3() may lead to performance issues"), which is torch's current
    stream unless the caller chose another. The engine runs on a stream of its own instead;
    it waits for the work the caller queued (the inputs), and the caller's stream waits for the
    engine, so whatever the caller does next with the outputs, or with the memory of inputs it
    frees, comes after the engine on the GPU.

    Args:
        device: the CUDA device of the engine.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._stream = torch.cuda.Stream(device)

    def enqueue(self, execute: Callable[[int], bool]) -> bool:
        """Run `execute(stream_handle)` on the side stream between the two waits."""
        caller = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(caller)
        ok = execute(self._stream.cuda_stream)
        caller.wait_stream(self._stream)
        return ok


class TorchBindings:
    """Binds torch tensors to an execution context by address and enqueues the engine.

    Args:
        context: a TensorRT `IExecutionContext`.
        specs: the engine's I/O (`describe_io`).
        allocate: returns an empty tensor of (shape, dtype) where the engine can write.
        stream: enqueues the engine (`SideStream` on CUDA).
        device: where inputs are moved before binding.
    """

    def __init__(
        self,
        context: Any,
        specs: tuple[TensorSpec, ...],
        allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor],
        stream: SideStream,
        device: torch.device,
    ) -> None:
        self._context = context
        self._inputs = [s for s in specs if s.is_input]
        self._outputs = [s for s in specs if not s.is_input]
        self._allocate = allocate
        self._stream = stream
        self._device = device

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bind `feeds` (by input name), allocate the outputs, enqueue; return the outputs."""
        inputs = {}
        for spec in self._inputs:
            tensor = feeds[spec.name].to(device=self._device, dtype=spec.dtype).contiguous()
            if tensor.data_ptr() % _ALIGNMENT:
                tensor = tensor.clone()  # a view into a larger tensor: fresh memory is aligned
            _set_input_shape(self._context, spec.name, tuple(tensor.shape))
            _set_address(self._context, spec.name, tensor.data_ptr())
            inputs[spec.name] = tensor
        outputs = {}
        for spec in self._outputs:
            tensor = self._allocate(_output_shape(self._context, spec.name), spec.dtype)
            _set_address(self._context, spec.name, tensor.data_ptr())
            outputs[spec.name] = tensor
        # `inputs` may be freed when this returns: the caller's stream waits for the engine
        # (SideStream), so no later work on it can reuse their memory before the engine read it.
        if not self._stream.enqueue(self._context.execute_async_v3):
            raise TensorRTExecutionError("TensorRT execute_async_v3 failed; see its log above")
        return outputs

    def free(self) -> None:
        """Nothing to free: torch owns every buffer (kept for the bindings' common interface)."""


class PycudaBindings:
    """Page-locked host and pycuda device buffers per tensor, reused while shapes stay equal.

    Args:
        context: a TensorRT `IExecutionContext`.
        specs: the engine's I/O (`describe_io`).
        cuda: the `pycuda.driver` module.
    """

    def __init__(self, context: Any, specs: tuple[TensorSpec, ...], cuda: ModuleType) -> None:
        for spec in specs:
            if spec.dtype == torch.bfloat16:
                raise CheckpointError(
                    f"engine tensor {spec.name!r} is bfloat16, which numpy (and so io='pycuda') "
                    "cannot hold; use io='torch'"
                )
        self._context = context
        self._inputs = [s for s in specs if s.is_input]
        self._outputs = [s for s in specs if not s.is_input]
        self._cuda = cuda
        self._stream = cuda.Stream()
        self._buffers: dict[str, tuple[tuple[int, ...], np.ndarray, Any]] = {}

    def _buffer(self, spec: TensorSpec, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        cached = self._buffers.get(spec.name)
        if cached is not None and cached[0] == shape:
            return cached[1], cached[2]
        if cached is not None:
            cached[2].free()
        host = self._cuda.pagelocked_empty(shape, torch.empty(0, dtype=spec.dtype).numpy().dtype)
        device = self._cuda.mem_alloc(max(host.nbytes, 1))
        self._buffers[spec.name] = (shape, host, device)
        return host, device

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy `feeds` to the GPU, run, copy every output back; return CPU tensors."""
        for spec in self._inputs:
            array = feeds[spec.name].detach().to("cpu", spec.dtype).contiguous().numpy()
            _set_input_shape(self._context, spec.name, array.shape)
            host, device = self._buffer(spec, array.shape)
            np.copyto(host, array)
            self._cuda.memcpy_htod_async(device, host, self._stream)
            _set_address(self._context, spec.name, int(device))
        hosts = {}
        for spec in self._outputs:
            host, device = self._buffer(spec, _output_shape(self._context, spec.name))
            _set_address(self._context, spec.name, int(device))
            hosts[spec.name] = (host, device)
        if not self._context.execute_async_v3(self._stream.handle):
            raise TensorRTExecutionError("TensorRT execute_async_v3 failed; see its log above")
        for host, device in hosts.values():
            self._cuda.memcpy_dtoh_async(host, device, self._stream)
        self._stream.synchronize()
        # Copies: the page-locked buffers are overwritten by the next run.
        return {name: torch.from_numpy(host.copy()) for name, (host, _) in hosts.items()}

    def free(self) -> None:
        """Free the device buffers."""
        for _, _, device in self._buffers.values():
            device.free()
        self._buffers = {}


def _set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    if not context.set_input_shape(name, tuple(int(d) for d in shape)):
        raise InputError(
            f"the TensorRT engine does not accept input {name!r} of shape {tuple(shape)}: its "
            "optimisation profile allows other batch sizes (rebuild with --max-batch)"
        )


def _set_address(context: Any, name: str, address: int) -> None:
    if not context.set_tensor_address(name, address):
        raise TensorRTExecutionError(f"TensorRT refused the buffer address of {name!r}")


def _output_shape(context: Any, name: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise TensorRTExecutionError(f"output {name!r} has unresolved shape {shape}")
    return shape
