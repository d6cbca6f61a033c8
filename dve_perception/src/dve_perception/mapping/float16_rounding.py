"""Unbiased (stochastic) rounding of float32 values to float16, for running means.

A running mean stored in float16 and updated by small steps loses the steps smaller than half a
float16 spacing when rounded to nearest: the stored value stalls short of the mean it should
follow. Rounding up or down with probability by distance keeps every step on average.
"""

from __future__ import annotations

import torch

__all__ = ["StochasticFloat16", "round_stochastic_float16"]

#: Entries of the random table (4 MB of int16).
_TABLE = 1 << 21
#: float32 has 23 mantissa bits, float16 10: rounding drops the low 13.
_DROPPED_BITS = 13


def round_stochastic_float16(values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """float32 -> float16, rounding each value up or down with probability by its distance.

    Adds `noise` (random integers below 2^13, one per value) to the 13 float32 mantissa bits
    that float16 drops, then truncates them: magnitudes round away from zero with probability
    equal to the dropped fraction, so the result is unbiased (sign-magnitude bits make this
    symmetric). Exact for float16's normal range, which holds every coefficient of a unit
    vector but the tiniest.
    """
    bits = values.contiguous().view(torch.int32)
    dither = noise.view(values.shape).to(torch.int32)  # an int64 sum would not view as float32
    mask = ~((1 << _DROPPED_BITS) - 1)
    return ((bits + dither) & mask).view(torch.float32).to(torch.float16)


class StochasticFloat16:
    """`round_stochastic_float16` with noise from a seeded table read at random offsets.

    Drawing fresh numbers costs ~3 ms per 7k x 128 update on a 2-core CPU (torch's generator
    makes ~2.5 ns per number); a 4 MB table read at a random offset per call costs nothing,
    gives each position other values in each call (a fixed offset would round a voxel's
    coefficient the same way frame after frame), and makes a map built twice come out the
    same. Calls with over half a table of values draw fresh numbers.
    """

    def __init__(self, device: torch.device) -> None:
        """Round on `device`; the table is made on first use."""
        self.device = device
        self._generator: torch.Generator | None = None
        self._table: torch.Tensor | None = None

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Return `values` (float32) rounded to float16, unbiased."""
        return round_stochastic_float16(values, self._noise(values.numel()))

    def _noise(self, count: int) -> torch.Tensor:
        if self._generator is None or self._table is None:
            self._generator = torch.Generator(device=self.device).manual_seed(0)
            self._table = torch.randint(
                0,
                1 << _DROPPED_BITS,
                (_TABLE,),
                generator=self._generator,
                dtype=torch.int16,
                device=self.device,
            )
        if 2 * count > self._table.numel():
            return torch.randint(
                0,
                1 << _DROPPED_BITS,
                (count,),
                generator=self._generator,
                dtype=torch.int32,
                device=self.device,
            )
        offset = torch.randint(
            0,
            self._table.numel() - count + 1,
            (1,),
            generator=self._generator,
            device=self.device,  # a CUDA generator draws on the GPU only
        )
        start = int(offset.item())
        return self._table[start : start + count]
