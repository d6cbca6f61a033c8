"""Build TensorRT engines from exported ONNX files, and keep them in a checked cache.

`build_engine` follows the TensorRT 10 Python API: explicit-batch network (flags 0), ONNX parser,
builder config with a workspace limit, FP16 as a builder flag, one optimisation profile for the
dynamic batch axis, an optional timing cache, `build_serialized_network`. The plan and its
sidecar (`engine_cache`) are written atomically. `ensure_engine` returns a cached plan whose key
matches this ONNX file, precision, GPU and TensorRT version, and builds one otherwise.
tensorrt is imported only when a build is asked for.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError
from dve_perception.perception.backends import engine_cache
from dve_perception.perception.backends.engine_cache import (
    PRECISIONS,
    EngineKey,
    Platform,
    StaleEngineError,
    check_engine,
    current_key,
    plan_path,
    write_sidecar,
)
from dve_perception.perception.backends.onnx_props import read_onnx_export_metadata

__all__ = [
    "TENSORRT_INSTALL_HINT",
    "CachedEngine",
    "EngineBuildError",
    "build_engine",
    "ensure_engine",
    "import_tensorrt",
    "tensorrt_logger",
]

_LOG = logging.getLogger(__name__)

TENSORRT_INSTALL_HINT = (
    "on a Jetson install JetPack's TensorRT Python bindings (apt: python3-libnvinfer, or the "
    "`tensorrt` meta-package); on x86 `pip install tensorrt` from NVIDIA's index "
    "(--extra-index-url https://pypi.nvidia.com)"
)
_GIB = 1 << 30


class EngineBuildError(CheckpointError):
    """TensorRT could not turn an ONNX file into an engine."""


@dataclass(frozen=True)
class CachedEngine:
    """The result of `ensure_engine`.

    Attributes:
        plan_path: the engine file.
        key: what it was built for.
        built: True when built by this call, False when a valid cached plan was reused.
        seconds: build time (0 when reused).
    """

    plan_path: Path
    key: EngineKey
    built: bool
    seconds: float = 0.0


def import_tensorrt() -> ModuleType:
    """Import and return the tensorrt module.

    Raises:
        BackendUnavailableError: tensorrt is not installed; the message says how to install it.
    """
    try:
        return importlib.import_module("tensorrt")
    except ImportError as err:
        raise BackendUnavailableError(
            f"TensorRT engines need the tensorrt Python module, which is not installed: "
            f"{TENSORRT_INSTALL_HINT}"
        ) from err


@functools.cache
def tensorrt_logger(trt: ModuleType) -> Any:
    """The one logger (warnings and errors) every builder and runtime of `trt` is given.

    TensorRT keeps the logger of the first builder or runtime of a process and warns when a
    later one brings another, so a backend created next to a build, or a second backend, must
    pass the same object.
    """
    return trt.Logger(trt.Logger.WARNING)


def _this_machine_key(
    onnx_path: str | Path,
    precision: str,
    max_batch: int,
    trt: ModuleType | None,
    platform: Platform | None,
) -> tuple[ModuleType, EngineKey]:
    """The tensorrt module and the key of an engine for `onnx_path` built here."""
    trt = trt if trt is not None else import_tensorrt()
    platform = platform if platform is not None else engine_cache.platform_info()
    key = current_key(
        onnx_path,
        precision,
        trt_version=trt.__version__,
        platform=platform,
        max_batch=max_batch,
    )
    return trt, key


def _check_options(precision: str, workspace_gb: float, max_batch: int) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if isinstance(workspace_gb, bool) or not isinstance(workspace_gb, int | float):
        raise ConfigError(f"workspace_gb must be a number of GiB, got {workspace_gb!r}")
    if not workspace_gb > 0:
        raise ConfigError(f"workspace_gb must be a positive number of GiB, got {workspace_gb!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    precision: str = "fp16",
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    max_batch: int = 1,
    trt: ModuleType | None = None,
    platform: Platform | None = None,
) -> EngineKey:
    """Build a TensorRT engine from an exported ONNX file; write the plan and its sidecar.

    Args:
        onnx_path: the file from `dve-perception export-onnx`.
        plan_path: the `.plan` to write (replaced atomically, parent folders created); its
            sidecar `<plan>.json` is written next to it.
        precision: "fp16" (FP16 kernels allowed) or "fp32" (FP32 only, TF32 disabled).
        workspace_gb: limit of TensorRT's scratch memory pool, in GiB.
        timing_cache: a timing cache file to start from (an absent file starts empty) and to
            write back after the build; speeds up rebuilds on the same GPU.
        max_batch: largest batch of the optimisation profile (min and opt are 1).
        trt: the tensorrt module (imported when None).
        platform: this machine's GPU (queried with `engine_cache.platform_info` when None).

    Returns:
        The key recorded in the sidecar.

    Raises:
        BackendUnavailableError: tensorrt or a CUDA GPU is missing.
        CheckpointError: the ONNX file is missing or not a dve_perception export.
        EngineBuildError: TensorRT cannot parse the file or build the engine.
        ConfigError: invalid options.
    """
    _check_options(precision, workspace_gb, max_batch)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    trt, key = _this_machine_key(onnx_path, precision, max_batch, trt, platform)
    _LOG.info("building a %s TensorRT engine from %s (may take minutes)", precision, onnx_path)
    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    # The parser owns the weights the network refers to: it must live until the build is done.
    network, parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * _GIB))
    _set_precision(trt, builder, config, precision)
    _add_batch_profile(builder, network, config, max_batch)
    if timing_cache is not None:
        _load_timing_cache(config, Path(timing_cache))
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    del parser
    if serialized is None:
        fp16 = ", build with --precision fp16" if precision == "fp32" else ""
        raise EngineBuildError(
            f"TensorRT could not build an engine from {onnx_path} ({precision}, workspace "
            f"{workspace_gb:g} GiB); the usual cause is GPU memory: free it (other processes, "
            f"see nvidia-smi or tegrastats), retry with a smaller --workspace-gb{fp16}; "
            "TensorRT's log above names the failing step"
        )
    _write_plan(plan_path, serialized, key, onnx_path)
    if timing_cache is not None:
        _save_timing_cache(config, Path(timing_cache))
    _LOG.info("built %s in %.0f s", plan_path, time.perf_counter() - start)
    return key


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """Return the network the ONNX parser makes of `onnx_path`, and the parser."""
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) lets the parser find external weight files.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT cannot parse {onnx_path}: {'; '.join(errors) or 'no error recorded'}"
        )
    return network, parser


def _set_precision(trt: Any, builder: Any, config: Any, precision: str) -> None:
    if precision == "fp32":
        # TF32 is on by default and rounds matmul inputs to 10 mantissa bits; fp32 means exact.
        config.clear_flag(trt.BuilderFlag.TF32)
        return
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise ConfigError(
            f"TensorRT {trt.__version__} has no FP16 builder flag (removed with weak typing in "
            "TensorRT 11); build with --precision fp32 or use TensorRT 10"
        )
    with warnings.catch_warnings():
        # Deprecated since TensorRT 10.5 (still correct); absent in later versions.
        warnings.simplefilter("ignore", DeprecationWarning)
        fast = getattr(builder, "platform_has_fast_fp16", True)
    if not fast:
        _LOG.warning("this GPU has no fast FP16; an fp16 engine may be no faster than fp32")
    config.set_flag(trt.BuilderFlag.FP16)


def _add_batch_profile(builder: Any, network: Any, config: Any, max_batch: int) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = {tensor.name: tuple(tensor.shape) for tensor in inputs}
    for name, shape in shapes.items():
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(
                f"input {name!r} has shape {shape}: only the batch axis may be dynamic; "
                "re-export with `dve-perception export-onnx`, which fixes height and width"
            )
    if not any(shape and shape[0] < 0 for shape in shapes.values()):
        if max_batch != 1:
            batch = next(iter(shapes.values()), (1,))[0]
            raise ConfigError(f"the ONNX file has a fixed batch {batch}; max_batch must be 1")
        return
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        rest = shape[1:]
        profile.set_shape(name, (1, *rest), (1, *rest), (max_batch, *rest))
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(
            f"TensorRT refused the optimisation profile (batch 1..{max_batch}) for inputs "
            f"{shapes}; TensorRT's log above says why"
        )


def _load_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    # None: bytes TensorRT cannot read (truncated, corrupt, another version's layout); False: a
    # cache from another GPU or TensorRT version. Either way start empty rather than mix timings.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        _LOG.warning("timing cache %s does not fit this GPU/TensorRT; starting empty", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path) -> None:
    data = config.get_timing_cache().serialize()  # IHostMemory: a buffer, written as is
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, durable=False) as file:  # recomputable
        file.write(data)


def _write_plan(plan: Path, serialized: Any, key: EngineKey, onnx_path: Path) -> None:
    # `serialized` is an IHostMemory: file.write and hashlib take its buffer without a copy.
    plan.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(plan) as file:
        file.write(serialized)
    # The sidecar goes last: a crash in between leaves a plan without one, which reads as stale.
    write_sidecar(
        plan,
        key,
        hashlib.sha256(serialized).hexdigest(),
        onnx_path=onnx_path.resolve(),
        metadata=read_onnx_export_metadata(onnx_path),
    )


def ensure_engine(
    onnx_path: str | Path,
    cache_dir: str | Path,
    *,
    precision: str = "fp16",
    force: bool = False,
    build: bool = True,
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    max_batch: int = 1,
    trt: ModuleType | None = None,
    platform: Platform | None = None,
) -> CachedEngine:
    """Return a valid cached engine for `onnx_path`, building it when needed.

    The plan's name carries the key's fingerprint, so a changed ONNX file, precision, batch,
    GPU or TensorRT version maps to a new file; a plan at the expected name that fails
    `check_engine` (modified, or no sidecar) is rebuilt.

    Args:
        onnx_path: the exported ONNX file.
        cache_dir: folder of the plans (created when missing).
        precision: "fp16" or "fp32".
        force: rebuild even when a valid plan exists.
        build: when False, never build: raise instead of building (not with `force`).
        workspace_gb: see `build_engine`.
        timing_cache: see `build_engine`.
        max_batch: see `build_engine`.
        trt: the tensorrt module (imported when None).
        platform: this machine's GPU (queried when None).

    Raises:
        StaleEngineError: with `build=False`, the cached plan does not fit.
        CheckpointError: with `build=False`, no plan exists; or the ONNX file is missing.
        EngineBuildError, BackendUnavailableError, ConfigError: see `build_engine`.
    """
    _check_options(precision, workspace_gb, max_batch)
    if force and not build:
        raise ConfigError("force=True rebuilds the engine, which build=False forbids; pick one")
    trt, key = _this_machine_key(onnx_path, precision, max_batch, trt, platform)
    plan = plan_path(cache_dir, key, Path(onnx_path).stem)
    if not force:
        reused = _reuse(plan, key, build)
        if reused is not None:
            return reused
    start = time.perf_counter()
    build_engine(
        onnx_path,
        plan,
        precision=precision,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        max_batch=max_batch,
        trt=trt,
        platform=platform,
    )
    return CachedEngine(plan, key, built=True, seconds=time.perf_counter() - start)


def _reuse(plan: Path, key: EngineKey, build: bool) -> CachedEngine | None:
    """Return the cached plan when valid; None to build; raise when building is not allowed."""
    if not plan.is_file():
        if build:
            return None
        raise CheckpointError(
            f"no engine {plan.name} in {plan.parent} for this ONNX file, precision, GPU and "
            "TensorRT; build it with `dve-perception build-engine --onnx FILE`"
        )
    try:
        check_engine(plan, key)
    except StaleEngineError as err:
        if not build:
            raise
        _LOG.warning("rebuilding: %s", err)
        return None
    _LOG.info("reusing %s", plan)
    return CachedEngine(plan, key, built=False)
