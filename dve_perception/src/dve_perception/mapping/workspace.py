"""Reusable scratch tensors for per-frame work.

Per-frame temporaries of the map are tens of MB (thousands of voxels x 768 floats). Allocated
afresh each frame, large blocks come straight from the OS and every page faults again on first
touch, which on a CPU costs as much as the arithmetic. A workspace keeps one growing buffer per
purpose and hands out views of it.
"""

from __future__ import annotations

import torch

__all__ = ["Workspace"]

#: Growth factor when a buffer is too small, so slowly growing frames do not reallocate often.
_GROWTH = 1.5


class Workspace:
    """Named scratch buffers on one device; a view is valid until the same name is asked again."""

    def __init__(self, device: torch.device) -> None:
        """Create an empty workspace for tensors on `device`."""
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return an uninitialised contiguous tensor of `shape` backed by the buffer `name`."""
        count = 1
        for size in shape:
            count *= size
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < count:
            capacity = count if buffer is None else max(count, int(_GROWTH * buffer.numel()))
            buffer = torch.empty(capacity, dtype=dtype, device=self.device)
            self._buffers[name] = buffer
        return buffer[:count].view(shape)

    def clear(self) -> None:
        """Release every buffer."""
        self._buffers.clear()
