"""Run an exported DVEFormer (`dve-perception export-onnx`) with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dve_perception.backends.base import InferenceBackend
from dve_perception.backends.export_metadata import OUTPUT_NAME, ExportMetadata
from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError

__all__ = ["OnnxRuntimeBackend"]

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime inference on the CPU execution provider, or the CUDA one when asked.

    The file's export metadata fixes the input size (its pooling was fixed to it) and names the
    outputs (`fused_outputs`); `infer_outputs` returns all of them and `infer` the main
    embedding as float32. Outputs are CPU tensors whichever provider runs the graph.

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
        super().__init__(
            fixed_size=(self.metadata.height, self.metadata.width),
            device=torch.device("cpu"),
            embedding_dim=self.metadata.embedding_dim,
            fused=self.metadata.fused,
        )
        self.providers = tuple(self._session.get_providers())

    def _infer_impl(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        # Fetch the main output only: the others need not be copied out of the session.
        (output,) = self._session.run([OUTPUT_NAME], _feeds(rgb, depth))
        return torch.from_numpy(output).float()

    def _infer_outputs_impl(
        self, rgb: torch.Tensor, depth: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        outputs = self._session.run(list(self.output_names), _feeds(rgb, depth))
        return {
            name: torch.from_numpy(value)
            for name, value in zip(self.output_names, outputs, strict=True)
        }

    def close(self) -> None:
        """Release the ONNX Runtime session."""
        super().close()
        self._session = None


def _feeds(rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, np.ndarray]:
    return {
        "rgb": np.ascontiguousarray(rgb.detach().cpu().numpy()),
        "depth": np.ascontiguousarray(depth.detach().cpu().numpy()),
    }


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
    cuda = (_CUDA_PROVIDER, {"device_id": int(index)}) if index else _CUDA_PROVIDER
    return [cuda, _CPU_PROVIDER]
