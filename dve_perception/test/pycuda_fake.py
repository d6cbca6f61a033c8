"""A strict stand-in for the part of `pycuda.driver` the TensorRT backend uses.

Follows pycuda's documented driver API (documen.tician.de/pycuda/driver.html): `init`,
`Device(ordinal)` with `count()`, `name()`, `compute_capability()`, `get_attribute()` (the SM
count) and `retain_primary_context()`, `Context.push()` / `Context.pop()` / `detach()`, `Stream`
with `handle` and `synchronize()`, `pagelocked_empty`, `mem_alloc` (a `DeviceAllocation` whose
`int()` is its address) and `memcpy_htod_async` / `memcpy_dtoh_async`. Like pycuda it refuses
allocations, streams and copies without a current context (pycuda raises LogicError "invalid
device context"), and asynchronous copies from host memory that is not page-locked. "Device"
memory is CPU memory here, so the TensorRT fake can read and write it by address.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types

import numpy as np


class LogicError(RuntimeError):
    """pycuda._driver.LogicError."""


class FakeDriverState:
    """What the fake driver does and what was done with it."""

    def __init__(
        self, name: str, capability: tuple[int, int], count: int, multiprocessors: int
    ) -> None:
        self.name, self.capability, self.count = name, capability, count
        self.multiprocessors = multiprocessors
        self.initialised = False
        self.context_stack: list[Context] = []
        self.retained = 0
        self.pagelocked: dict[int, np.ndarray] = {}
        self.live_allocations = 0
        # pycuda prints "a clean-up operation failed (dead context maybe?)" for these.
        self.dead_context_cleanups = 0


class Context:
    __slots__ = ("_state", "_detached")
    _state: FakeDriverState

    def __init__(self, state: FakeDriverState) -> None:
        self._state, self._detached = state, False

    def push(self) -> None:
        if self._detached:
            raise LogicError("context was detached")
        self._state.context_stack.append(self)

    @staticmethod
    def pop() -> None:
        raise NotImplementedError  # replaced per module, where the state is known

    def detach(self) -> None:
        if self._detached:
            raise LogicError("context already detached")
        self._detached = True
        self._state.retained -= 1


class device_attribute(enum.Enum):  # noqa: N801 (pycuda's name)
    """The part of pycuda.driver.device_attribute used here."""

    MULTIPROCESSOR_COUNT = 16


class DeviceAllocation:
    __slots__ = ("_state", "_buffer", "_freed")

    def __init__(self, state: FakeDriverState, nbytes: int) -> None:
        self._state, self._buffer, self._freed = state, ctypes.create_string_buffer(nbytes), False
        state.live_allocations += 1

    def __int__(self) -> int:
        if self._freed:
            raise LogicError("use of a freed allocation")
        return ctypes.addressof(self._buffer)

    def free(self) -> None:
        if not self._freed:
            self._freed = True
            self._state.live_allocations -= 1

    @property
    def nbytes(self) -> int:
        return len(self._buffer)


def make_pycuda(
    name: str = "Orin",
    capability: tuple[int, int] = (8, 7),
    count: int = 1,
    multiprocessors: int = 16,
) -> tuple[types.ModuleType, types.ModuleType]:
    """Return fake (`pycuda`, `pycuda.driver`) modules; the driver's `_fake_state` records use."""
    state = FakeDriverState(name, capability, count, multiprocessors)
    driver = types.ModuleType("pycuda.driver")
    driver._fake_state = state
    driver.LogicError = LogicError

    def need_init() -> None:
        if not state.initialised:
            raise LogicError("cuInit has not been called")

    def need_context(what: str) -> None:
        if not state.context_stack:
            raise LogicError(
                f"{what} failed: invalid device context - no currently active context?"
            )

    def init(flags: int = 0) -> None:
        state.initialised = True

    class Device:
        __slots__ = ("ordinal",)

        def __init__(self, ordinal: int) -> None:
            need_init()
            if not 0 <= ordinal < state.count:
                raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
            self.ordinal = ordinal

        @staticmethod
        def count() -> int:
            need_init()
            return state.count

        def name(self) -> str:
            return state.name

        def compute_capability(self) -> tuple[int, int]:
            return state.capability

        def get_attribute(self, attribute: device_attribute) -> int:
            if not isinstance(attribute, device_attribute):
                raise TypeError("get_attribute takes a pycuda.driver.device_attribute")
            return {device_attribute.MULTIPROCESSOR_COUNT: state.multiprocessors}[attribute]

        def retain_primary_context(self) -> Context:
            state.retained += 1
            return BoundContext(state)

    class BoundContext(Context):
        __slots__ = ()

        @staticmethod
        def pop() -> None:
            if not state.context_stack:
                raise LogicError("cuCtxPopCurrent failed: no current context")
            state.context_stack.pop()

    class Stream:
        __slots__ = ("handle", "_context")

        def __init__(self, flags: int = 0) -> None:
            need_context("cuStreamCreate")
            self.handle = 0x5157  # any int: TensorRT's fake only checks the type
            self._context = state.context_stack[-1]

        def __del__(self) -> None:
            # pycuda destroys a stream in the context it was created in.
            if self._context._detached:
                state.dead_context_cleanups += 1

        def synchronize(self) -> None:
            need_context("cuStreamSynchronize")

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0) -> np.ndarray:
        need_context("cuMemHostAlloc")
        array = np.empty(shape, dtype, order=order)
        state.pagelocked[array.ctypes.data] = array
        return array

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        need_context("cuMemAlloc")
        if nbytes <= 0:
            raise LogicError("cuMemAlloc failed: invalid argument")
        return DeviceAllocation(state, nbytes)

    def check_copy(host: np.ndarray, device: DeviceAllocation, stream: Stream | None) -> None:
        need_context("cuMemcpyAsync")
        if not isinstance(stream, Stream):
            raise TypeError("async copies need a Stream")
        if host.ctypes.data not in state.pagelocked or not host.flags.c_contiguous:
            raise LogicError("asynchronous copies need page-locked, contiguous host memory")
        if host.nbytes > device.nbytes:
            raise LogicError("copy larger than the allocation")

    def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream=None) -> None:
        check_copy(src, dest, stream)
        ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream=None) -> None:
        check_copy(dest, src, stream)
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)

    for function in (init, pagelocked_empty, mem_alloc, memcpy_htod_async, memcpy_dtoh_async):
        setattr(driver, function.__name__, function)
    driver.Device, driver.Stream, driver.Context = Device, Stream, BoundContext
    driver.device_attribute = device_attribute
    package = types.ModuleType("pycuda")
    package.__path__ = []
    package.driver = driver
    return package, driver


def install(monkeypatch, trt_module=None, pycuda_modules=None) -> None:
    """Put fake tensorrt / pycuda modules into `sys.modules` (undone after the test)."""
    if trt_module is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", trt_module)
    if pycuda_modules is not None:
        package, driver = pycuda_modules
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
