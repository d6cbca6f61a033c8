"""Run DVEFormer with PyTorch eager on CPU or CUDA, optionally in fp16 and with CUDA graphs.

The network runs channels-last by default: on CUDA Tensor Cores prefer NHWC, and on a CPU
oneDNN's NHWC kernels made a 480x640 forward pass 1.07-1.12x (reducedres) and 1.4-1.8x (fullres)
faster on a 2-core x86 host; the embedding then comes out channel-last, which the voxel map fuses
~1.7x faster than channel-first. With `precision="fp16"` it runs under `torch.autocast`; the
fused outputs (`fused_outputs.FusedGraph.heads`) always run in fp32. With `cuda_graphs=True` the
whole forward pass is captured once per input shape, after warm-up on a side stream
(torch.cuda.graphs), and replayed afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from dve_perception.errors import ConfigError
from dve_perception.perception.backends.base import InferenceBackend
from dve_perception.perception.backends.fused_outputs import FusedGraph, FusedOutputs

__all__ = ["PRECISIONS", "TorchBackend"]

PRECISIONS = ("fp32", "fp16")
# Warm-up runs before capture: cuDNN/cuBLAS pick algorithms and allocate workspaces lazily,
# which must not happen during capture (torch.cuda.graphs' own examples use 3).
_WARMUP_RUNS = 3


class TorchBackend(InferenceBackend):
    """PyTorch inference; accepts any input size that is a multiple of 32.

    Outputs are returned as new tensors owned by the caller. With CUDA graphs they are clones
    of the graph's static outputs, which the next replay overwrites; the clone costs one
    device copy per output, so choose `fused` outputs that are small.

    Args:
        model: a DVEFormer (moved to `device` and put in eval mode, channels-last when asked);
            its `config` gives the embedding dimension.
        device: torch device, e.g. "cpu" or "cuda".
        precision: "fp32", or "fp16" (autocast; CUDA only).
        channels_last: run the network in channels-last memory format (None: yes); False keeps
            NCHW (the outputs are the same up to float rounding, ~3e-6).
        cuda_graphs: capture and replay the forward pass as a CUDA graph (CUDA only).
        fused: the outputs to compute (default: the official raw embedding only).
        prototypes: (K, D) class vectors when `fused.num_classes` = K > 0.

    Raises:
        ConfigError: CUDA asked for where torch sees none, an unknown precision, fp16 or CUDA
            graphs on the CPU, or prototypes that do not fit `fused`.
    """

    name = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        *,
        precision: str = "fp32",
        channels_last: bool | None = None,
        cuda_graphs: bool = False,
        fused: FusedOutputs | None = None,
        prototypes: torch.Tensor | None = None,
    ) -> None:
        device = torch.device(device)
        _check_options(device, precision, cuda_graphs)
        fused = fused if fused is not None else FusedOutputs()
        graph = FusedGraph(model, fused, prototypes)
        super().__init__(
            fixed_size=None,
            device=device,
            embedding_dim=int(model.config.embedding_dim),
            fused=fused,
        )
        self.precision = precision
        self.channels_last = True if channels_last is None else channels_last
        self.cuda_graphs = cuda_graphs
        self._format = torch.channels_last if self.channels_last else torch.contiguous_format
        self._graph = graph.to(device).eval()
        if self.channels_last:
            self._graph.to(memory_format=torch.channels_last)
        self._captured: _CapturedGraph | None = None

    def _infer_outputs_impl(
        self, rgb: torch.Tensor, depth: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        rgb = rgb.to(self.device, memory_format=self._format)
        depth = depth.to(self.device, memory_format=self._format)
        if self.cuda_graphs:
            outputs = self._replay(rgb, depth)
        else:
            outputs = self._run(rgb, depth)
        return dict(zip(self.output_names, outputs, strict=True))

    def _run(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            if self.precision == "fp16":
                # The autocast cache must be off inside a CUDA graph capture (torch.cuda.graphs).
                with torch.autocast(
                    "cuda", dtype=torch.float16, cache_enabled=not self.cuda_graphs
                ):
                    raw = self._graph.model(rgb, depth)
                return self._graph.heads(raw)
            if self.device.type == "cuda":
                # fp32 means fp32, heads (a 1x1 convolution) included: cuDNN convolutions default
                # to TF32 on Ampere and newer GPUs (Orin included), which would make "fp32"
                # differ from the CPU and from a TensorRT fp32 engine (TF32 off) by ~1e-3.
                with _no_tf32():
                    return self._graph.heads(self._graph.model(rgb, depth))
            return self._graph.heads(self._graph.model(rgb, depth))

    def _replay(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._captured is None or not self._captured.fits(rgb, depth):
            # A new shape re-captures; the old graph and its memory pool are released first.
            self._captured = None
            self._captured = _CapturedGraph(self._run, rgb, depth)
        return self._captured.replay(rgb, depth)

    def close(self) -> None:
        """Drop the model and any captured graph so their memory can be freed."""
        super().close()
        self._graph = None
        self._captured = None


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """IEEE float32 for cuBLAS matmuls and cuDNN convolutions inside, the caller's settings after.

    The settings are process-wide, so other threads see them while a frame runs (they only
    become more exact). torch 2.9 added per-backend `fp32_precision` settings; once a process
    has set those, reading the legacy `allow_tf32` flags raises, so the new ones are used
    wherever they exist.
    """
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    allowed = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allowed


def _check_options(device: torch.device, precision: str, cuda_graphs: bool) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but torch sees no CUDA device; use cpu")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda":
        if precision == "fp16":
            raise ConfigError(
                f"precision 'fp16' (autocast) needs a CUDA device, got {device}; use precision "
                "'fp32' on the CPU"
            )
        if cuda_graphs:
            raise ConfigError(
                f"cuda_graphs needs a CUDA device, got {device}; leave cuda_graphs off on the CPU"
            )


class _CapturedGraph:
    """One CUDA graph of the forward pass for one input shape, with its static buffers."""

    def __init__(
        self,
        run: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
        rgb: torch.Tensor,
        depth: torch.Tensor,
    ) -> None:
        self.static_rgb = rgb.clone()
        self.static_depth = depth.clone()
        # Warm-up and capture on one side stream (torch.cuda.graphs' whole-network example;
        # the same stream for both also keeps lazily created library handles valid).
        stream = torch.cuda.Stream(device=rgb.device)
        stream.wait_stream(torch.cuda.current_stream(rgb.device))
        try:
            with torch.cuda.stream(stream):
                for _ in range(_WARMUP_RUNS):
                    run(self.static_rgb, self.static_depth)
            torch.cuda.current_stream(rgb.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (a node's map queries) neither break
            # the capture nor fail because of it.
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                self.static_outputs = run(self.static_rgb, self.static_depth)
        except RuntimeError as err:
            raise ConfigError(
                f"cannot capture the model as a CUDA graph ({err}); run with cuda_graphs off"
            ) from err

    def fits(self, rgb: torch.Tensor, depth: torch.Tensor) -> bool:
        return (
            rgb.shape == self.static_rgb.shape
            and depth.shape == self.static_depth.shape
            and rgb.device == self.static_rgb.device
        )

    def replay(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.static_rgb.copy_(rgb)
        self.static_depth.copy_(depth)
        self.graph.replay()
        # The next replay overwrites the static outputs: hand out copies.
        return tuple(t.clone() for t in self.static_outputs)
