"""Run an exported DVEFormer (`dve-perception export-onnx`) with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dve_perception.backends.base import InferenceBackend
from dve_perception.backends.export_metadata import OUTPUT_NAME, ExportMetadata
from dve_perception.errors import BackendUnavailableError, CheckpointError

__all__ = ["OnnxRuntimeBackend"]


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime inference on the CPU execution provider (CUDA when asked and present).

    The file's export metadata fixes the input size (its pooling was fixed to it) and says
    whether the graph already normalises; `infer` returns the raw embedding either way so all
    backends agree (normalising a normalised output changes nothing).

    Args:
        path: the exported `.onnx` file.
        providers: ONNX Runtime execution providers, in order of preference.
    """

    name = "onnxruntime"

    def __init__(
        self, path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailableError(
                "backend 'onnxruntime' needs the onnxruntime package; "
                'pip install "dve_perception[core]" or choose backend torch'
            ) from err
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"ONNX file {path} does not exist; create it with `dve-perception export-onnx`"
            )
        try:
            self._session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as err:  # onnxruntime's errors share no base class below Exception
            raise CheckpointError(f"onnxruntime cannot load {path}: {err}") from err
        self.metadata = ExportMetadata.from_props(
            self._session.get_modelmeta().custom_metadata_map, str(path)
        )
        super().__init__(
            fixed_size=(self.metadata.height, self.metadata.width),
            device=torch.device("cpu"),
            embedding_dim=self.metadata.embedding_dim,
        )

    def _infer_impl(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        feeds = {
            "rgb": np.ascontiguousarray(rgb.detach().cpu().numpy()),
            "depth": np.ascontiguousarray(depth.detach().cpu().numpy()),
        }
        (output,) = self._session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(output)

    def close(self) -> None:
        """Release the ONNX Runtime session."""
        super().close()
        self._session = None
