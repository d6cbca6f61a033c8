"""Strict stand-ins for the TensorRT 10 Python API subset dve_perception uses, and for pycuda.

Names, argument names and return values follow the TensorRT 10 Python API reference
(docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api: Builder, INetworkDefinition,
OnnxParser, IBuilderConfig, IOptimizationProfile, ITimingCache, IHostMemory, Runtime,
ICudaEngine, IExecutionContext, DataType, TensorIOMode, MemoryPoolType, BuilderFlag) and
NVIDIA's samples (samples/python/common_runtime.py, Polygraphy's backend/trt). Strict means:
every class has `__slots__`, so a call or attribute TensorRT 10 does not have (such as the
removed `builder.max_workspace_size` or `context.execute_async_v2`) raises AttributeError;
argument types are checked as pybind11 would; misuse the real library only logs (missing
shapes or addresses at execution) returns False here too and is recorded in `state.log`; a
build after the ONNX parser (which owns the network's weights) was destroyed raises.

Plans are JSON behind a magic header; `execute_async_v3` reads the inputs at the bound addresses
with ctypes, computes `state.compute(inputs)` and writes the outputs at the bound addresses, so
address, shape and dtype plumbing is exercised for real (CPU memory stands in for the GPU).
"""

from __future__ import annotations

import enum
import json
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PLAN_MAGIC = b"FAKETRTPLAN\0"
CACHE_MAGIC = b"FAKETIMINGCACHE\0"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


NUMPY_DTYPES = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_SHARED_MEMORY = 4


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    BF16 = 17
    FP8 = 18


class NetworkDefinitionCreationFlag(enum.Enum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


@dataclass
class IOTensor:
    """One tensor the fake ONNX parser puts into the network (-1: dynamic axis)."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: DataType = DataType.FLOAT


@dataclass
class FakeState:
    """What a fake tensorrt module does and what was done with it."""

    version: str
    network_io: list[IOTensor]
    compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    parse_errors: list[str] = field(default_factory=list)
    build_returns_none: bool = False
    profile_invalid: bool = False
    fast_fp16: bool = True
    execute_fails: bool = False
    builds: list[dict] = field(default_factory=list)
    executions: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def check(value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{what}: incompatible function arguments, got {type(value).__name__}")


def shape_of(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, Dims):
        return tuple(value)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise TypeError(f"{what}: expected a Dims or a tuple of ints, got {value!r}")
    return tuple(value)


def buffer_bytes(value: Any, what: str) -> bytes:
    try:
        return bytes(memoryview(value))
    except TypeError as err:
        raise TypeError(f"{what}: expected a buffer, got {type(value).__name__}") from err


class Dims:
    """trt.Dims: a sequence of ints (not a tuple)."""

    __slots__ = ("_dims",)

    def __init__(self, dims: tuple[int, ...] = ()) -> None:
        self._dims = tuple(int(d) for d in dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __getitem__(self, index: int) -> int:
        return self._dims[index]

    def __iter__(self):
        return iter(self._dims)

    def __repr__(self) -> str:
        return f"Dims({self._dims})"


class IHostMemory(bytes):
    """trt.IHostMemory: a buffer with `nbytes` and `dtype`; no bytes methods."""

    __slots__ = ()
    _ALLOWED = frozenset({"nbytes", "dtype"})

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__") and name not in IHostMemory._ALLOWED:
            raise AttributeError(f"'tensorrt.IHostMemory' object has no attribute {name!r}")
        return super().__getattribute__(name)

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


class ILogger:
    __slots__ = ()
    Severity = Severity


class Logger(ILogger):
    __slots__ = ("min_severity",)
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        check(min_severity, Severity, "Logger(min_severity)")
        self.min_severity = min_severity


class ParserError:
    __slots__ = ("_desc", "_node")

    def __init__(self, desc: str, node: int) -> None:
        self._desc, self._node = desc, node

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def __str__(self) -> str:
        return f"In node {self._node} with name: and operator: (parse): {self._desc}"


class ITensor:
    __slots__ = ("name", "shape", "dtype")

    def __init__(self, spec: IOTensor) -> None:
        self.name, self.shape, self.dtype = spec.name, Dims(spec.shape), spec.dtype


class INetworkDefinition:
    __slots__ = ("_builder", "_flags", "_inputs", "_outputs", "_parser")

    def __init__(self, builder: Any, flags: int) -> None:
        self._builder, self._flags = builder, flags
        self._parser: weakref.ref | None = None
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        check(index, int, "INetworkDefinition.get_input(index)")
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        check(index, int, "INetworkDefinition.get_output(index)")
        return self._outputs[index]


class IOptimizationProfile:
    __slots__ = ("shapes",)

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        check(input, str, "IOptimizationProfile.set_shape(input)")
        dims = [shape_of(v, "IOptimizationProfile.set_shape") for v in (min, opt, max)]
        if len({len(d) for d in dims}) != 1 or any(
            not lo <= mid <= hi for lo, mid, hi in zip(*dims, strict=True)
        ):
            raise ValueError(f"set_shape({input!r}): need min <= opt <= max, got {dims}")
        self.shapes[input] = tuple(dims)


class ITimingCache:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> IHostMemory:
        return IHostMemory(self.data)


class IBuilderConfig:
    __slots__ = ("_state", "flags", "pool_limits", "profiles", "timing_cache")

    def __init__(self, state: FakeState) -> None:
        self._state = state
        self.flags = {BuilderFlag.TF32}  # TensorRT enables TF32 by default
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        check(pool, MemoryPoolType, "IBuilderConfig.set_memory_pool_limit(pool)")
        check(pool_size, int, "IBuilderConfig.set_memory_pool_limit(pool_size)")
        self.pool_limits[pool] = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        check(flag, BuilderFlag, "IBuilderConfig.set_flag(flag)")
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        check(flag, BuilderFlag, "IBuilderConfig.clear_flag(flag)")
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        check(flag, BuilderFlag, "IBuilderConfig.get_flag(flag)")
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        check(profile, IOptimizationProfile, "IBuilderConfig.add_optimization_profile")
        if self._state.profile_invalid or not profile.shapes:
            self._state.log.append("optimization profile is invalid")
            return -1  # TensorRT's answer to an invalid profile
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache | None:
        data = buffer_bytes(serialized_timing_cache, "IBuilderConfig.create_timing_cache")
        if data and not data.startswith(CACHE_MAGIC):
            # TensorRT logs "Magic tag does not match" and returns a null cache.
            self._state.log.append("timing cache: magic tag does not match")
            return None
        return ITimingCache(data)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        check(cache, ITimingCache, "IBuilderConfig.set_timing_cache(cache)")
        check(ignore_mismatch, bool, "IBuilderConfig.set_timing_cache(ignore_mismatch)")
        header = CACHE_MAGIC + self._state.version.encode() + b"\n"
        if cache.data and not cache.data.startswith(header) and not ignore_mismatch:
            self._state.log.append("timing cache mismatch")
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class OnnxParser:
    __slots__ = ("_state", "_network", "_errors", "__weakref__")

    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        check(network, INetworkDefinition, "OnnxParser(network)")
        check(logger, ILogger, "OnnxParser(logger)")
        self._state, self._network, self._errors = network._builder._state, network, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        check(index, int, "OnnxParser.get_error(index)")
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        check(model, str, "OnnxParser.parse_from_file(model)")
        if not Path(model).is_file():
            self._errors.append(ParserError(f"Failed to open file: {model}", -1))
            return False
        if self._state.parse_errors:
            self._errors.extend(ParserError(d, i) for i, d in enumerate(self._state.parse_errors))
            return False
        for spec in self._state.network_io:
            side = self._network._inputs if spec.is_input else self._network._outputs
            side.append(ITensor(spec))
        self._network._parser = weakref.ref(self)  # the parser owns the network's weights
        self._state.builds.append({"parsed": model, "network_flags": self._network._flags})
        return True


class Builder:
    __slots__ = ("logger",)
    _state: FakeState  # set on the per-module subclass made by `make_tensorrt`

    def __init__(self, logger: ILogger) -> None:
        check(logger, ILogger, "Builder(logger)")
        self.logger = logger

    @property
    def platform_has_fast_fp16(self) -> bool:
        if tuple(int(p) for p in self._state.version.split(".")[:2]) >= (10, 5):
            warnings.warn("platform_has_fast_fp16 is deprecated", DeprecationWarning, stacklevel=2)
        return self._state.fast_fp16

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        check(flags, int, "Builder.create_network(flags)")
        return INetworkDefinition(self, flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self._state)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None:
        check(network, INetworkDefinition, "Builder.build_serialized_network(network)")
        check(config, IBuilderConfig, "Builder.build_serialized_network(config)")
        state = self._state
        if network._builder is not self or not network._inputs:
            raise ValueError("network was not created by this builder, or is empty")
        if network._parser is None or network._parser() is None:
            raise RuntimeError("the OnnxParser that owns the network's weights was destroyed")
        record = state.builds[-1]
        record.update(
            flags=set(config.flags),
            pool_limits=dict(config.pool_limits),
            profiles=[p.shapes for p in config.profiles],
            timing_cache_in=None if config.timing_cache is None else config.timing_cache.data,
            logger=self.logger,
        )
        dynamic = any(-1 in tuple(t.shape) for t in network._inputs)
        if dynamic and not config.profiles:
            state.log.append("Network has dynamic or shape inputs, but no optimization profile")
            return None
        if state.build_returns_none:
            state.log.append("Requested amount of GPU memory could not be allocated")
            return None
        if config.timing_cache is not None:  # the build adds timings
            header = CACHE_MAGIC + state.version.encode() + b"\n"
            old = config.timing_cache.data.removeprefix(header)
            config.timing_cache.data = header + old + b"timings;"
        max_shapes = config.profiles[0].shapes if config.profiles else {}
        plan = {
            "version": state.version,
            "precision_flags": sorted(f.name for f in config.flags),
            "tensors": [
                {
                    "name": t.name,
                    "input": t in network._inputs,
                    "shape": list(t.shape),
                    "dtype": t.dtype.name,
                    "profile": [list(s) for s in max_shapes.get(t.name, ())],
                }
                for t in (*network._inputs, *network._outputs)
            ],
        }
        return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())


def make_tensorrt(
    version: str = "10.3.0",
    *,
    network_io: list[IOTensor],
    compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> types.ModuleType:
    """Return a fake `tensorrt` module; its `_fake_state` configures and records it.

    Args:
        version: its `__version__`; plans from another version fail to deserialise.
        network_io: the tensors the fake ONNX parser puts into the network.
        compute: inputs -> outputs (numpy, by name) that `execute_async_v3` writes.
    """
    from trt_fake_runtime import ICudaEngine, IExecutionContext, Runtime

    state = FakeState(version=version, network_io=network_io, compute=compute)
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module._fake_state = state
    for cls in (
        DataType,
        TensorIOMode,
        MemoryPoolType,
        BuilderFlag,
        NetworkDefinitionCreationFlag,
        Dims,
        IHostMemory,
        ILogger,
        Logger,
        ParserError,
        ITensor,
        INetworkDefinition,
        IOptimizationProfile,
        ITimingCache,
        IBuilderConfig,
        OnnxParser,
        ICudaEngine,
        IExecutionContext,
    ):
        setattr(module, cls.__name__, cls)
    for cls in (Builder, Runtime):  # bound to this module's state
        bound = type(cls.__name__, (cls,), {"__slots__": ()})
        bound._state = state
        setattr(module, cls.__name__, bound)
    return module
