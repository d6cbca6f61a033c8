"""The execution half of the TensorRT fake (see `trt_fake`): Runtime, ICudaEngine, contexts.

Kept apart only for file size; `trt_fake.make_tensorrt` binds `Runtime` to a module's state.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

import numpy as np
from trt_fake import (
    NUMPY_DTYPES,
    PLAN_MAGIC,
    DataType,
    Dims,
    FakeState,
    ILogger,
    TensorIOMode,
    buffer_bytes,
    check,
    shape_of,
)


class Runtime:
    __slots__ = ("logger",)
    _state: FakeState  # set on the per-module subclass made by `make_tensorrt`

    def __init__(self, logger: ILogger) -> None:
        check(logger, ILogger, "Runtime(logger)")
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        data = buffer_bytes(serialized_engine, "Runtime.deserialize_cuda_engine")
        if not data.startswith(PLAN_MAGIC):
            self._state.log.append("deserialize: not a plan (magic tag mismatch)")
            return None
        plan = json.loads(data[len(PLAN_MAGIC) :])
        if plan["version"] != self._state.version:
            self._state.log.append(f"deserialize: plan version {plan['version']} mismatch")
            return None
        return ICudaEngine(self._state, plan["tensors"])


class ICudaEngine:
    __slots__ = ("_state", "_tensors", "_names")

    def __init__(self, state: FakeState, tensors: list[dict]) -> None:
        self._state = state
        self._tensors = {t["name"]: t for t in tensors}
        self._names = [t["name"] for t in tensors]

    def _tensor(self, name: str) -> dict:
        check(name, str, "ICudaEngine tensor name")
        if name not in self._tensors:
            raise ValueError(f"no I/O tensor named {name!r}")  # stricter than TensorRT's -1s
        return self._tensors[name]

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        check(index, int, "ICudaEngine.get_tensor_name(index)")
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if self._tensor(name)["input"] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._tensor(name)["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._tensor(name)["dtype"]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        check(profile_index, int, "ICudaEngine.get_tensor_profile_shape(profile_index)")
        tensor = self._tensor(name)
        if not tensor["input"] or profile_index != 0 or not tensor["profile"]:
            raise ValueError(f"no profile {profile_index} for {name!r}")
        return [Dims(s) for s in tensor["profile"]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    __slots__ = ("_engine", "_shapes", "_addresses")

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        tensor, shape = self._engine._tensor(name), shape_of(shape, "set_input_shape(shape)")
        limits = tensor["profile"] or [tensor["shape"]] * 3
        fits = tensor["input"] and len(shape) == len(tensor["shape"])
        fits = fits and all(
            lo <= d <= hi for d, lo, hi in zip(shape, limits[0], limits[2], strict=False)
        )
        if not fits:
            self._engine._state.log.append(f"set_input_shape({name}, {shape}) out of range")
            return False
        self._shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._engine._tensor(name)
        check(memory, int, "IExecutionContext.set_tensor_address(memory)")
        self._addresses[name] = memory
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._engine._tensor(name)
        if tensor["input"]:
            return Dims(self._shapes.get(name, tensor["shape"]))
        batch = next((s[0] for s in self._shapes.values()), -1)
        return Dims([batch if d == -1 else d for d in tensor["shape"]])

    def execute_async_v3(self, stream_handle: int) -> bool:
        check(stream_handle, int, "IExecutionContext.execute_async_v3(stream_handle)")
        state, tensors = self._engine._state, self._engine._tensors
        inputs = [n for n, t in tensors.items() if t["input"]]
        missing = [n for n in inputs if n not in self._shapes] + [
            n for n in tensors if not self._addresses.get(n)
        ]
        if missing or state.execute_fails:
            state.log.append(f"execute_async_v3: unset shapes/addresses {missing}")
            return False
        feeds = {n: _read(self._addresses[n], self._shapes[n], tensors[n]) for n in inputs}
        results = state.compute(feeds)
        for name, tensor in tensors.items():
            if tensor["input"]:
                continue
            value = np.ascontiguousarray(results[name], NUMPY_DTYPES[DataType[tensor["dtype"]]])
            if value.shape != tuple(self.get_tensor_shape(name)):
                raise ValueError(f"compute gave {name} {value.shape}")
            ctypes.memmove(self._addresses[name], value.ctypes.data, value.nbytes)
        state.executions.append({"stream": stream_handle, "addresses": dict(self._addresses)})
        return True


def _read(address: int, shape: tuple[int, ...], tensor: dict) -> np.ndarray:
    dtype = np.dtype(NUMPY_DTYPES[DataType[tensor["dtype"]]])
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)
