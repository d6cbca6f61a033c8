"""Replace adaptive average pooling by fixed pooling for one input size, for export.

`nn.AdaptiveAvgPool2d` does not export to ONNX (its bins depend on the runtime input size), so the
official TensorRT export replaces every one by an `AvgPool2d` whose kernel and stride come from
the export size (dveformer-spec.md §3.4, §9). That is exact only when each pooled side is a
multiple of the bin count (H/32 and W/32 multiples of 5 for bins (1, 5)). For the other sizes
`FixedAvgPool2d` uses two constant averaging matrices instead, which is exact for every size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from dve_perception.errors import InputError

__all__ = ["FixedAvgPool2d", "fixed_pooling"]


def _bin_matrix(size: int, bins: int) -> torch.Tensor:
    """(bins, size) matrix whose row i averages adaptive-pooling bin i.

    Bin i covers [floor(i * size / bins), ceil((i + 1) * size / bins)), as in PyTorch's kernel.
    """
    matrix = torch.zeros(bins, size)
    for i in range(bins):
        start, end = (i * size) // bins, -(-(i + 1) * size // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class FixedAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d` specialised to one input size, in a form every exporter handles.

    When each input side is a multiple of its output side the adaptive bins are equal and disjoint,
    so the pooling is `AvgPool2d` with kernel = stride: the official export's replacement. Otherwise
    (e.g. 5 bins over 6 rows) the bins overlap; the pooling is then `rows @ x @ cols^T` with
    constant averaging matrices, which computes exactly what adaptive pooling does.

    Args:
        input_size: (h, w) of the feature maps this module will receive.
        output_size: (out_h, out_w) of the replaced adaptive pooling.
    """

    def __init__(self, input_size: Sequence[int], output_size: Sequence[int]) -> None:
        super().__init__()
        (h, w), (out_h, out_w) = input_size, output_size
        self.input_size = (int(h), int(w))
        self.output_size = (int(out_h), int(out_w))
        self.pool = None
        rows = cols = None
        if h % out_h == 0 and w % out_w == 0:
            kernel = (h // out_h, w // out_w)
            self.pool = nn.AvgPool2d(kernel, stride=kernel)
        else:
            rows, cols = _bin_matrix(h, out_h), _bin_matrix(w, out_w)
        # Not persistent: derived from the sizes, and the swap must not change the state_dict.
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, out_h, out_w); h, w must be the `input_size` given at build."""
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.input_size:
            raise InputError(
                f"fixed pooling was built for {self.input_size} inputs, got {tuple(x.shape[-2:])}"
            )
        if self.pool is not None:
            return self.pool(x)
        return self.rows @ x @ self.cols.transpose(0, 1)


class _ProbeComplete(Exception):
    """Raised by the last pooling hook to skip the rest of the probing forward pass."""


def _pool_input_sizes(
    model: nn.Module, height: int, width: int, device: torch.device
) -> dict[str, tuple[int, int]]:
    """Measure the input size of each adaptive pooling with one forward at batch 1."""
    pools = {n: m for n, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    sizes: dict[str, tuple[int, int]] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sizes[name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))
            if len(sizes) == len(pools):
                raise _ProbeComplete  # the decoder after the context module is not needed

        return hook

    if not pools:
        return sizes
    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pools.items()]
    try:
        with torch.no_grad(), contextlib.suppress(_ProbeComplete):
            model(
                torch.zeros(1, 3, height, width, device=device),
                torch.zeros(1, 1, height, width, device=device),
            )
    finally:
        for handle in handles:
            handle.remove()
    return sizes


@contextlib.contextmanager
def fixed_pooling(model: nn.Module, height: int, width: int) -> Iterator[nn.Module]:
    """Temporarily replace each `nn.AdaptiveAvgPool2d` of `model` by a `FixedAvgPool2d`.

    As in the official export, the pooling input sizes come from one real forward pass (batch 1,
    stopped once every pooling has been reached), so call it with the model in eval mode. The
    original modules are put back on exit, also after an error.

    Args:
        model: a DVEFormer (any module called as model(rgb, depth) works).
        height: export input height, a multiple of 32.
        width: export input width, a multiple of 32.

    Yields:
        The same model object with the replacements in place.
    """
    device = next(model.parameters(), torch.empty(0)).device
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, size in _pool_input_sizes(model, height, width, device).items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            original = getattr(parent, attr)
            out = original.output_size
            out = (out, out) if isinstance(out, int) else out
            out = tuple(s if o is None else o for o, s in zip(out, size, strict=True))
            setattr(parent, attr, FixedAvgPool2d(size, out).to(device))
            swapped.append((parent, attr, original))
        yield model
    finally:
        for parent, attr, original in reversed(swapped):
            setattr(parent, attr, original)
