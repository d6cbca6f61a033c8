"""Run an exported DVEFormer (`dve-perception export-onnx`) with ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError
from dve_perception.perception.backends.base import InferenceBackend
from dve_perception.perception.backends.export_metadata import OUTPUT_NAME, ExportMetadata

__all__ = ["OnnxRuntimeBackend"]

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime inference on the CPU execution provider, or the CUDA one when asked.

    The file's export metadata fixes the input size (its pooling was fixed to it) and names the
    outputs (`fused_outputs`); `infer_outputs` returns all of them and `infer` the main
    embedding as float32 (only that output is fetched).

    With the CUDA provider and a CUDA torch, `device` is the GPU: inputs and outputs are torch
    CUDA tensors bound to the session by address (ONNX Runtime's I/O binding), so the
    pipeline's pre- and postprocessing stay there and nothing is copied to the host that the
    caller does not copy itself. Otherwise (the CPU provider, or CUDA next to a CPU-only torch)
    `device` is the CPU and outputs are host tensors sharing ONNX Runtime's arrays.

    Args:
        path: the exported `.onnx` file.
        device: "cpu", or "cuda" / "cuda:N" for the CUDA execution provider (onnxruntime-gpu),
            with the CPU provider behind it for any operator CUDA lacks.

    Raises:
        BackendUnavailableError: onnxruntime, or its CUDA provider for a CUDA device, is missing.
        CheckpointError: the file is missing, not loadable, or not a dve_perception export.
        ConfigError: a device that is neither cpu nor cuda.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailableError(
                "backend 'onnxruntime' needs the onnxruntime package; "
                'pip install "dve_perception[core]" or choose backend torch'
            ) from err
        providers = _providers(str(device), ort.get_available_providers())
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"ONNX file {path} does not exist; create it with `dve-perception export-onnx`"
            )
        try:
            self._session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime's errors share no base class below Exception
            raise CheckpointError(f"onnxruntime cannot load {path}: {err}") from err
        if len(providers) > 1 and _CUDA_PROVIDER not in self._session.get_providers():
            # onnxruntime falls back to the CPU with only a logged warning when the CUDA
            # provider's libraries (CUDA, cuDNN) do not load; say so instead of running slowly.
            raise BackendUnavailableError(
                f"onnxruntime could not start its CUDA provider for {path} (it runs "
                f"{self._session.get_providers()}); check that the CUDA and cuDNN versions match "
                "the installed onnxruntime-gpu, or use device cpu"
            )
        self.metadata = ExportMetadata.from_props(
            self._session.get_modelmeta().custom_metadata_map, str(path)
        )
        graph_outputs = [o.name for o in self._session.get_outputs()]
        if graph_outputs != list(self.metadata.output_names):
            raise CheckpointError(
                f"{path} has outputs {graph_outputs} but its metadata declares "
                f"{list(self.metadata.output_names)}; re-export it with "
                "`dve-perception export-onnx`"
            )
        self._tensors = {
            arg.name: _TensorType.of(arg, str(path))
            for arg in (*self._session.get_inputs(), *self._session.get_outputs())
        }
        super().__init__(
            fixed_size=(self.metadata.height, self.metadata.width),
            device=_io_device(providers),
            embedding_dim=self.metadata.embedding_dim,
            fused=self.metadata.fused,
        )
        self.providers = tuple(self._session.get_providers())
        self._bind_io = self.device.type == "cuda"

    def _infer_impl(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        # Fetch the main output only: ONNX Runtime computes what is asked for.
        return self._run(rgb, depth, (OUTPUT_NAME,))[OUTPUT_NAME].float()

    def _infer_outputs_impl(
        self, rgb: torch.Tensor, depth: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self._run(rgb, depth, self.output_names)

    def _run(
        self, rgb: torch.Tensor, depth: torch.Tensor, names: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        if self._bind_io:
            return self._run_bound(rgb, depth, names)
        # Host memory: outputs come from ONNX Runtime's arena as arrays torch shares. Binding
        # freshly allocated host tensors instead measured 1.6x slower at full resolution.
        feeds = {
            name: np.ascontiguousarray(tensor.detach().cpu().numpy())
            for name, tensor in (("rgb", rgb), ("depth", depth))
        }
        values = self._session.run(list(names), feeds)
        return {name: torch.from_numpy(value) for name, value in zip(names, values, strict=True)}

    def _run_bound(
        self, rgb: torch.Tensor, depth: torch.Tensor, names: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        binding = self._session.io_binding()
        # Bound tensors must outlive the run; these locals do (the run is synchronous).
        inputs = {
            name: tensor.detach().to(self.device, self._tensors[name].dtype).contiguous()
            for name, tensor in (("rgb", rgb), ("depth", depth))
        }
        outputs = {
            name: torch.empty(
                (rgb.shape[0], *self._tensors[name].shape),
                dtype=self._tensors[name].dtype,
                device=self.device,
            )
            for name in names
        }
        for name, tensor in inputs.items():
            binding.bind_input(name, *self._buffer(tensor))
        for name, tensor in outputs.items():
            binding.bind_output(name, *self._buffer(tensor))
        if self.device.type == "cuda":
            # ONNX Runtime computes on its own stream: the inputs, written on torch's, must be
            # complete first. Run() synchronises its stream before returning, so the outputs
            # are complete for torch's stream.
            torch.cuda.current_stream(self.device).synchronize()
        self._session.run_with_iobinding(binding)
        return outputs

    def _buffer(self, tensor: torch.Tensor) -> tuple[str, int, Any, tuple[int, ...], int]:
        """(device type, device id, element type, shape, address): what a binding takes."""
        dtype = _NUMPY_DTYPES[tensor.dtype]
        return (
            self.device.type,
            self.device.index or 0,
            dtype,
            tuple(tensor.shape),
            tensor.data_ptr(),
        )

    def close(self) -> None:
        """Release the ONNX Runtime session."""
        super().close()
        self._session = None


#: ONNX tensor element types a dve_perception export uses, and the torch dtypes holding them.
_ONNX_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(int32)": torch.int32,
    "tensor(int64)": torch.int64,
}
_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int32: np.int32,
    torch.int64: np.int64,
}


@dataclass(frozen=True)
class _TensorType:
    """Shape after the batch axis and dtype of one graph input or output."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, arg: Any, path: str) -> _TensorType:
        """Read an onnxruntime `NodeArg`; only the batch axis may be symbolic."""
        rest = arg.shape[1:]
        if arg.type not in _ONNX_DTYPES or not all(isinstance(d, int) for d in rest):
            raise CheckpointError(
                f"{path}: tensor {arg.name!r} is {arg.type} of shape {arg.shape}; a "
                f"dve_perception export has {sorted(_ONNX_DTYPES)} tensors whose axes are "
                "fixed after the batch axis; re-export it with `dve-perception export-onnx`"
            )
        return cls(tuple(rest), _ONNX_DTYPES[arg.type])


def _io_device(providers: list) -> torch.device:
    """Where inputs and outputs live: the provider's GPU when torch can hold tensors there."""
    first = providers[0]
    if first == _CPU_PROVIDER or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(first[1]["device_id"]))


def _providers(device: str, available: list[str]) -> list:
    """The execution providers for a device string, CUDA first when asked for."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return [_CPU_PROVIDER]
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"backend 'onnxruntime' runs on cpu or cuda[:N], not {device!r}")
    if _CUDA_PROVIDER not in available:
        raise BackendUnavailableError(
            f"device {device!r} needs onnxruntime's {_CUDA_PROVIDER}, which this onnxruntime "
            f"lacks (it has {available}); pip install onnxruntime-gpu in place of onnxruntime, "
            "or use device cpu"
        )
    # fp32 means fp32, as on the torch and TensorRT backends: the provider's TF32 default off.
    options = {"device_id": int(index or 0), "use_tf32": 0}
    return [(_CUDA_PROVIDER, options), _CPU_PROVIDER]
