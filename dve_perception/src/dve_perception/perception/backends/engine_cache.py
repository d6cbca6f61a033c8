"""Which TensorRT engine fits which ONNX file, GPU and TensorRT version; no TensorRT import.

A serialised engine (a `.plan`) only runs on the GPU architecture and the exact TensorRT version
that built it, and it encodes one ONNX file at one precision. Every plan dve_perception writes
gets a sidecar `<plan>.json` recording its `EngineKey` and the plan's sha256, so that a plan from
another machine, an older export or a hand-edited file is detected (`StaleEngineError`) instead
of failing deep inside TensorRT or, worse, running the wrong model.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dve_perception import __version__
from dve_perception.atomic_file import atomic_write
from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError
from dve_perception.perception.backends.export_metadata import ExportMetadata
from dve_perception.perception.backends.onnx_props import read_onnx_export_metadata

__all__ = [
    "PRECISIONS",
    "SIDECAR_FORMAT",
    "EngineKey",
    "EngineRecord",
    "Platform",
    "StaleEngineError",
    "check_engine",
    "current_key",
    "file_sha256",
    "onnx_sha256",
    "plan_path",
    "platform_info",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

PRECISIONS = ("fp16", "fp32")
#: Version of the sidecar layout; a reader refuses newer ones.
SIDECAR_FORMAT = 1
_CHUNK = 1 << 20
# Key fields that describe this machine rather than the requested model.
_PLATFORM_FIELDS = ("gpu_name", "compute_capability", "multiprocessors", "tensorrt_version")


class StaleEngineError(CheckpointError):
    """A TensorRT plan does not fit this machine or request, or was not written by this package."""


@dataclass(frozen=True)
class Platform:
    """The GPU an engine is built for or run on.

    Attributes:
        gpu_name: the CUDA device name, e.g. "Orin" or "NVIDIA GeForce RTX 4090".
        compute_capability: "major.minor", e.g. "8.7".
        multiprocessors: streaming multiprocessors (SMs). Every Jetson Orin module is named
            "Orin" with capability 8.7; the SM count tells them apart (AGX Orin 64 GB: 16,
            32 GB: 14, Orin NX and Nano: 8 or fewer), and TensorRT tunes a plan to the device.
    """

    gpu_name: str
    compute_capability: str
    multiprocessors: int


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialised engine depends on; two plans with equal keys are interchangeable.

    Attributes:
        gpu_name: CUDA device name the engine was built on.
        compute_capability: "major.minor" of that device.
        multiprocessors: its number of streaming multiprocessors (see `Platform`).
        tensorrt_version: `tensorrt.__version__` of the builder.
        onnx_sha256: hex sha256 of the ONNX file.
        precision: "fp16" or "fp32".
        input_size: (H, W) the export's pooling was fixed to (from its export metadata).
        max_batch: largest batch of the optimisation profile.
    """

    gpu_name: str
    compute_capability: str
    multiprocessors: int
    tensorrt_version: str
    onnx_sha256: str
    precision: str
    input_size: tuple[int, int]
    max_batch: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        if not re.fullmatch(r"\d+\.\d+", str(self.compute_capability)):
            raise ConfigError(
                f"compute capability must look like '8.7', got {self.compute_capability!r}"
            )
        if not _positive_int(self.multiprocessors):
            raise ConfigError(
                f"multiprocessors must be a positive integer, got {self.multiprocessors!r}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.onnx_sha256)):
            raise ConfigError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")
        size = tuple(self.input_size)
        if len(size) != 2 or not all(_positive_int(v) for v in size):
            raise ConfigError(f"input_size must be (H, W) positive integers, got {self.input_size}")
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        if not _positive_int(self.max_batch):
            raise ConfigError(f"max_batch must be a positive integer, got {self.max_batch!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the key as JSON-ready values (input_size as a list)."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        """Rebuild a key from `to_dict` output.

        Raises:
            ConfigError: a field is missing, unknown or malformed.
        """
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data) - {"max_batch"})
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise ConfigError(f"engine key fields missing {missing}, unknown {unknown}")
        try:
            return cls(**{**data, "input_size": tuple(data["input_size"])})
        except TypeError as err:
            raise ConfigError(f"malformed engine key: {err}") from err

    def fingerprint(self) -> str:
        """Return the hex sha256 of the canonical JSON of the key (stable across runs)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class EngineRecord:
    """The content of a plan's sidecar.

    Attributes:
        key: what the plan was built for.
        plan_sha256: hex sha256 of the plan bytes when written.
        created_utc: ISO 8601 time of the build.
        onnx_path: the ONNX file it was built from (informational: where to rebuild from).
        dve_perception_version: the package version that built it.
        export_metadata: the ONNX file's export metadata (fused outputs, class names), which
            the plan itself does not carry; None when the sidecar has none.
    """

    key: EngineKey
    plan_sha256: str
    created_utc: str
    onnx_path: str
    dve_perception_version: str
    export_metadata: ExportMetadata | None = None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks (plans and exports reach 1 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_sha256(path: str | Path) -> str:
    """Return the hex sha256 of an ONNX file.

    Raises:
        CheckpointError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"ONNX file {path} does not exist; create it with `dve-perception export-onnx`"
        )
    return file_sha256(path)


def current_key(
    onnx_path: str | Path,
    precision: str,
    *,
    trt_version: str,
    platform: Platform,
    max_batch: int = 1,
) -> EngineKey:
    """Return the key an engine built now from `onnx_path` would have.

    Args:
        onnx_path: the exported ONNX file (hashed, and its export metadata read).
        precision: "fp16" or "fp32".
        trt_version: `tensorrt.__version__`.
        platform: the GPU (`platform_info`).
        max_batch: largest batch of the optimisation profile.

    Raises:
        CheckpointError: the ONNX file is missing or has no dve_perception export metadata.
        ConfigError: an invalid precision, capability or batch.
    """
    metadata = read_onnx_export_metadata(onnx_path)
    return EngineKey(
        gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability,
        multiprocessors=platform.multiprocessors,
        tensorrt_version=trt_version,
        onnx_sha256=onnx_sha256(onnx_path),
        precision=precision,
        input_size=(metadata.height, metadata.width),
        max_batch=max_batch,
    )


def plan_path(cache_dir: str | Path, key: EngineKey, onnx_stem: str) -> Path:
    """Return `<cache_dir>/<stem>_<precision>_sm<cc>_trt<version>_<fingerprint[:12]>.plan`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", onnx_stem) or "model"
    sm = key.compute_capability.replace(".", "")
    trt = re.sub(r"[^A-Za-z0-9.]+", "_", key.tensorrt_version)
    name = f"{stem}_{key.precision}_sm{sm}_trt{trt}_{key.fingerprint()[:12]}.plan"
    return Path(cache_dir) / name


def sidecar_path(plan: str | Path) -> Path:
    """Return the sidecar of a plan: the plan's name plus `.json`."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def write_sidecar(
    plan: str | Path,
    key: EngineKey,
    plan_sha256: str,
    *,
    onnx_path: str | Path = "",
    metadata: ExportMetadata | None = None,
) -> Path:
    """Write the sidecar of `plan` atomically and return its path.

    Args:
        plan: the plan file.
        key: what it was built for.
        plan_sha256: hex sha256 of the plan bytes.
        onnx_path: the ONNX file it was built from.
        metadata: the ONNX file's export metadata, kept for the runtime.
    """
    record = {
        "format": SIDECAR_FORMAT,
        "key": key.to_dict(),
        "fingerprint": key.fingerprint(),
        "plan_sha256": plan_sha256,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "onnx_path": str(onnx_path),
        "dve_perception_version": __version__,
        "export_metadata": None if metadata is None else metadata.to_props(),
    }
    path = sidecar_path(plan)
    with atomic_write(path) as file:
        file.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(plan: str | Path) -> EngineRecord:
    """Read the sidecar of `plan`.

    Raises:
        StaleEngineError: no sidecar (the plan was not built by dve_perception), or one that is
            unreadable, malformed or from a newer format.
    """
    path = sidecar_path(plan)
    hint = (
        "rebuild it with `dve-perception build-engine --onnx FILE --force`, or pass "
        "check_key=False for an engine you built yourself for this GPU and TensorRT"
    )
    if not path.is_file():
        raise StaleEngineError(
            f"engine {plan} has no sidecar {path.name}: it was not built by dve_perception, so "
            f"what it was built for is unknown; {hint}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this version reads {SIDECAR_FORMAT}")
        return EngineRecord(
            key=EngineKey.from_dict(data["key"]),
            plan_sha256=str(data["plan_sha256"]),
            created_utc=str(data.get("created_utc", "")),
            onnx_path=str(data.get("onnx_path", "")),
            dve_perception_version=str(data.get("dve_perception_version", "")),
            export_metadata=_metadata_or_none(data.get("export_metadata"), path),
        )
    except (OSError, ValueError, KeyError, TypeError, CheckpointError) as err:
        raise StaleEngineError(
            f"sidecar {path} of engine {plan} is unreadable: {err}; {hint}"
        ) from err


def _metadata_or_none(props: object, source: Path) -> ExportMetadata | None:
    if props is None:
        return None
    if not isinstance(props, dict):
        raise ValueError(f"export_metadata must be an object, got {type(props).__name__}")
    return ExportMetadata.from_props(props, str(source))


def check_engine(
    plan: str | Path, expected: EngineKey, *, data: bytes | None = None
) -> EngineRecord:
    """Check that `plan` was built by dve_perception, is unmodified, and has key `expected`.

    Args:
        plan: the `.plan` file.
        expected: the key it must have (see `current_key`).
        data: the plan's bytes when already read (saves reading a large file twice).

    Returns:
        The plan's sidecar record.

    Raises:
        CheckpointError: the plan does not exist.
        StaleEngineError: no or malformed sidecar, plan bytes changed since the build, or a key
            that differs; the message names every differing field and the rebuild command.
    """
    plan = Path(plan)
    if not plan.is_file():
        raise CheckpointError(
            f"engine file {plan} does not exist; build it with "
            "`dve-perception build-engine --onnx FILE`"
        )
    record = read_sidecar(plan)
    actual_sha = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(plan)
    rebuild = _rebuild_hint(record.onnx_path)
    if actual_sha != record.plan_sha256:
        raise StaleEngineError(
            f"engine {plan} was modified after dve_perception built it (sha256 {actual_sha[:12]}, "
            f"sidecar records {record.plan_sha256[:12]}); {rebuild}"
        )
    differences = [
        _describe_difference(name, getattr(record.key, name), getattr(expected, name))
        for name in (f.name for f in fields(EngineKey))
        if getattr(record.key, name) != getattr(expected, name)
    ]
    if differences:
        raise StaleEngineError(f"engine {plan} does not fit: {'; '.join(differences)}; {rebuild}")
    return record


def _describe_difference(name: str, built: object, wanted: object) -> str:
    where = "this machine has" if name in _PLATFORM_FIELDS else "requested"
    return f"{name} built for {built!r}, {where} {wanted!r}"


def _rebuild_hint(onnx_path: str) -> str:
    onnx = onnx_path or "FILE.onnx"
    return f"rebuild it with `dve-perception build-engine --onnx {onnx} --force`"


def platform_info(device_index: int = 0) -> Platform:
    """Return the name, compute capability and SM count of a CUDA device.

    Asks torch.cuda first and pycuda.driver when torch has no CUDA (TensorRT deployments with a
    CPU-only torch); both are imported only here.

    Raises:
        BackendUnavailableError: no CUDA device is visible to torch or pycuda.
        ConfigError: `device_index` is out of range.
    """
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        _check_index(device_index, count)
        properties = torch.cuda.get_device_properties(device_index)
        return Platform(
            properties.name,
            f"{properties.major}.{properties.minor}",
            properties.multi_processor_count,
        )
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise BackendUnavailableError(
            "TensorRT needs a CUDA GPU, but torch sees none and pycuda is not installed; run on "
            "a Jetson or a CUDA machine with a CUDA-enabled torch (or pycuda)"
        ) from err
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as err:  # pycuda raises its own LogicError/RuntimeError without a driver
        raise BackendUnavailableError(f"pycuda cannot initialise CUDA: {err}") from err
    if count == 0:
        raise BackendUnavailableError("TensorRT needs a CUDA GPU, but pycuda finds none")
    _check_index(device_index, count)
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    sms = device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
    return Platform(device.name(), f"{major}.{minor}", int(sms))


def _check_index(index: int, count: int) -> None:
    if not 0 <= index < count:
        raise ConfigError(f"CUDA device {index} requested, but there are {count} (0..{count - 1})")
