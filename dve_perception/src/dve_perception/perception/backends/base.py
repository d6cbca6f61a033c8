"""The interface every inference backend implements: check the inputs once, then run.

Polygraphy's runner pattern: the public `infer` and `infer_outputs` validate shapes, dtypes and
sizes with the same words for every backend and then call `_infer_impl` / `_infer_outputs_impl`,
which subclasses write; `infer_outputs` also checks what comes back against the declared
`output_names`. Backends are context managers; `close` releases sessions, engines and device
memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType

import torch

from dve_perception.errors import CheckpointError, InputError
from dve_perception.model.dveformer import check_input_pair
from dve_perception.perception.backends.fused_outputs import OUTPUT_NAME, FusedOutputs

__all__ = ["InferenceBackend"]


class InferenceBackend(ABC):
    """Runs DVEFormer on preprocessed tensors.

    Subclasses implement `_infer_outputs_impl` (every output by name) and may override
    `_infer_impl` (the main embedding only) when that is cheaper than computing all outputs.

    Attributes:
        name: the backend's name as `make_backend` knows it.
        fixed_size: the (H, W) the backend accepts, or None for any multiple of 32.
        device: where `infer` returns its output.
        embedding_dim: channels D of the output (768 for the published models).
        fused: the outputs the backend's graph computes (`FusedOutputs`).
        output_names: the names `infer_outputs` returns, `fused.output_names` unless the
            subclass says otherwise (e.g. read from an engine); the first is the main embedding.
    """

    name: str = "abstract"

    def __init__(
        self,
        *,
        fixed_size: tuple[int, int] | None,
        device: torch.device,
        embedding_dim: int,
        fused: FusedOutputs | None = None,
        output_names: tuple[str, ...] | None = None,
    ) -> None:
        self.fixed_size = fixed_size
        self.device = device
        self.embedding_dim = embedding_dim
        self.fused = fused if fused is not None else FusedOutputs()
        names = tuple(output_names) if output_names is not None else self.fused.output_names
        if OUTPUT_NAME not in names:
            raise CheckpointError(
                f"the {self.name} backend's model has outputs {list(names)} but no "
                f"{OUTPUT_NAME!r}; it is not a dve_perception export"
            )
        self.output_names = names
        self._closed = False

    def infer(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Compute the main embedding of a preprocessed batch.

        Args:
            rgb: (B, 3, H, W) float32, ImageNet-normalised on the 0-255 scale, RGB order.
            depth: (B, 1, H, W) float32, NYUv2-normalised millimetres, invalid pixels 0.

        Returns:
            (B, D, H / s, W / s) float32 on `device` (s: output stride): the raw embedding, or
            unit vectors when the graph normalises (`fused.normalize`); callers that need unit
            vectors normalise either way, which changes nothing for unit vectors.

        Raises:
            InputError: malformed inputs, a size the backend was not built for, or a closed
                backend.
        """
        self._check_inputs(rgb, depth)
        return self._infer_impl(rgb.float(), depth.float())

    def infer_outputs(self, rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute every output of the backend's graph (see `fused_outputs` for their meaning).

        Args:
            rgb: as for `infer`.
            depth: as for `infer`.

        Returns:
            One tensor per name in `output_names`, each with the inputs' batch size, in the
            dtype the graph gives (see `FusedOutputs.output_dtypes`).

        Raises:
            InputError: as for `infer`.
            CheckpointError: the backend's model returned other outputs than it declares, or
                another batch size (a model file that does not match its metadata).
        """
        self._check_inputs(rgb, depth)
        outputs = self._infer_outputs_impl(rgb.float(), depth.float())
        self._check_outputs(outputs, int(rgb.shape[0]))
        return {name: outputs[name] for name in self.output_names}

    def _check_inputs(self, rgb: torch.Tensor, depth: torch.Tensor) -> None:
        if self._closed:
            raise InputError(f"the {self.name} backend was closed; create a new one")
        check_input_pair(rgb, depth)
        if self.fixed_size is not None and tuple(rgb.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise InputError(
                f"the {self.name} backend was built for {h}x{w} inputs, got "
                f"{rgb.shape[-2]}x{rgb.shape[-1]}; preprocess to {h}x{w} or re-export"
            )

    def _check_outputs(self, outputs: Mapping[str, torch.Tensor], batch: int) -> None:
        missing = [name for name in self.output_names if name not in outputs]
        if missing:
            raise CheckpointError(
                f"the {self.name} backend's model did not return {missing}; it returned "
                f"{sorted(outputs)}, but declares {list(self.output_names)}"
            )
        for name in self.output_names:
            value = outputs[name]
            if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != batch:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise CheckpointError(
                    f"the {self.name} backend's output {name!r} is {got}, expected a tensor "
                    f"with the inputs' batch size {batch} first"
                )

    def _infer_impl(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Return the main embedding as float32 for validated inputs (see `infer`)."""
        return self._infer_outputs_impl(rgb, depth)[OUTPUT_NAME].float()

    @abstractmethod
    def _infer_outputs_impl(
        self, rgb: torch.Tensor, depth: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the model on validated inputs and return every output by name."""

    def close(self) -> None:
        """Release what the backend holds; `infer` fails afterwards."""
        self._closed = True

    def __enter__(self) -> InferenceBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
