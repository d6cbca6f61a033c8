"""Voxel coefficients as integers: 16-bit fixed point for the leading ones, 8 bits for the rest.

The "pca_int" encoding of the map stores each voxel's PCA coefficients c (|c| <= |m| <= 1) in
one int8 row of `row_bytes(F, H)` bytes:

    [ hi (H) | lo (H) | tail (F - H) | scale (2) | zero padding to a multiple of 8 ]

- The H leading coefficients are fixed point with step 2^-15: v = round(c * 2^15) in
  [-32767, 32767], split into hi = floor(v / 256) and lo = v - 256 hi - 128 (both int8), so
  c = (256 hi + lo + 128) / 2^15. A fixed step keeps the small steps of a capped running mean
  on the large leading coefficients, which float16 (steps of 2.4e-4 to 4.9e-4 there) rounds
  away (benchmarks/study_int4_fusion.py).
- The F - H trailing coefficients are int8 times a per-voxel scale s = max |tail| / 127,
  stored as float16 in the two scale bytes (little-endian bit pattern).

Scores are integer products: the query's coefficients are split into two int8 parts (16 bits),
multiplied with every row by `torch._int_mm` (int8 x int8 -> exact int32; oneDNN on a CPU,
cuBLASLt on CUDA), and combined in float32, so a score costs one pass over 1 byte per stored
value and is within ~1e-5 of the exact product of a unit query with the stored values. Where
`_int_mm` is missing, the same integers are multiplied in float32, which is exact for these
sizes: each column sums at most 2 x 511 products of at most 128 x 128, below 2^24 (hence
`MAX_PART`).
"""

from __future__ import annotations

import logging

import torch

from dve_perception.errors import ConfigError

__all__ = ["MAX_PART", "FixedPointCodes", "int8_products", "row_bytes"]

_LOG = logging.getLogger(__name__)
#: Step of the fixed-point leading coefficients.
_HEAD_SCALE = 2.0**-15
_HEAD_MAX = 32767
_INT8_MAX = 127
#: Columns of `_int_mm` per query: head hi, head mixed, head lo-lo, tail, tail low part.
_COLUMNS = 5
#: cuBLASLt's int8 product (CUDA) needs more than 16 rows and widths that are multiples of 8.
_MIN_ROWS = 17
_ALIGN = 8
#: Most coefficients in either part (head, tail): keeps every integer sum exact in int32 and in
#: the float32 fallback (see the module docstring).
MAX_PART = 511
_int_mm_missing = False


def row_bytes(coefficients: int, head: int) -> int:
    """Bytes of one stored row for `coefficients` of which `head` are fixed point."""
    return -(-(2 * head + (coefficients - head) + 2) // _ALIGN) * _ALIGN


def int8_products(columns: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(C, W) int8 and (M, W) int8 rows -> (C, M) exact int32 products, on any device and size.

    Computed as columns @ rows.T, so each query's products with all rows come out contiguous
    (transposing an (M, C) result costs more than the product on a CPU).
    """
    global _int_mm_missing
    c, m = columns.shape[0], rows.shape[0]
    if not _int_mm_missing:
        left = columns
        if _cublaslt_limits(rows) and c < _MIN_ROWS:  # a CPU needs no padding
            left = columns.new_zeros(_MIN_ROWS, columns.shape[1])
            left[:c] = columns
        # cuBLASLt takes a row count that is a multiple of 8: the aligned prefix of the rows is
        # a view, the last few rows go through the exact float path (padding would copy all).
        aligned = m - m % _ALIGN if _cublaslt_limits(rows) else m
        try:
            products = torch._int_mm(left, rows[:aligned].T)[:c] if aligned else None
        except torch.OutOfMemoryError:
            raise
        except (AttributeError, RuntimeError, NotImplementedError) as err:
            _int_mm_missing = True
            _LOG.warning("torch._int_mm unavailable (%s); scoring int8 rows in float32", err)
        else:
            if aligned == m:
                return products
            rest = _float_products(columns, rows[aligned:])
            return rest if products is None else torch.cat([products, rest], dim=1)
    return _float_products(columns, rows)


def _cublaslt_limits(rows: torch.Tensor) -> bool:
    """Whether `_int_mm` on this tensor's device has cuBLASLt's shape limits (CUDA does)."""
    return rows.is_cuda


def _float_products(columns: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    # Exact: a column sums at most 2 * MAX_PART products of at most 128 * 128 < 2^24.
    return (columns.to(torch.float32) @ rows.to(torch.float32).T).to(torch.int32)


class FixedPointCodes:
    """Encode, decode and score rows of the layout in this module's docstring."""

    def __init__(self, coefficients: int, head: int) -> None:
        """Rows of `coefficients` values, the first `head` (1..coefficients) in fixed point."""
        if not 1 <= head <= coefficients or max(head, coefficients - head) > MAX_PART:
            raise ConfigError(
                f"need 1 <= head ({head}) <= coefficients ({coefficients}), at most {MAX_PART} "
                "in each part"
            )
        self.coefficients = coefficients
        self.head = head
        self.tail = coefficients - head
        self.row_bytes = row_bytes(coefficients, head)
        self._scale_at = 2 * head + self.tail

    def encode(self, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write (M, F) float32 coefficients (|c| <= 1) into `out`, (M, row_bytes) int8 rows.

        Rounds to nearest: values are clamped to [-1, 1] (a unit mean's coefficients are
        within it; float rounding may step out by an ulp). Returns `out`.
        """
        h, t = self.head, self.tail
        fixed = values[:, :h].mul(1.0 / _HEAD_SCALE).round_().clamp_(-_HEAD_MAX, _HEAD_MAX)
        hi = fixed.div(256).floor_()
        out[:, :h] = hi
        out[:, h : 2 * h] = fixed.sub_(hi.mul_(256)).sub_(128)  # fixed - 256 hi in [0, 255]
        tail = values[:, h:]
        scale = torch.zeros(values.shape[0], dtype=torch.float16, device=values.device)
        if t:
            scale = (tail.abs().amax(dim=1) / _INT8_MAX).to(torch.float16)
        step = scale.to(torch.float32).clamp_min_(torch.finfo(torch.float32).tiny).unsqueeze(1)
        out[:, 2 * h : 2 * h + t] = tail.div(step).round_().clamp_(-_INT8_MAX, _INT8_MAX)
        out[:, self._scale_at : self._scale_at + 2] = scale.view(torch.int8).view(-1, 2)
        out[:, self._scale_at + 2 :] = 0
        return out

    def scales(self, rows: torch.Tensor) -> torch.Tensor:
        """(M, row_bytes) int8 rows -> (M,) float32 tail scales."""
        scale_bytes = rows[:, self._scale_at : self._scale_at + 2].contiguous()
        return scale_bytes.view(torch.float16).squeeze(1).to(torch.float32)

    def decode(self, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(M, row_bytes) int8 rows -> (M, F) float32 coefficients (exactly the stored values).

        Writes into `out` when given (a float32 (M, F) buffer) and returns it.
        """
        h, t = self.head, self.tail
        if out is None:
            out = torch.empty(rows.shape[0], self.coefficients, device=rows.device)
        head = out[:, :h]
        head.copy_(rows[:, :h]).mul_(256).add_(rows[:, h : 2 * h]).add_(128).mul_(_HEAD_SCALE)
        out[:, h:] = rows[:, 2 * h : 2 * h + t]
        out[:, h:] *= self.scales(rows).unsqueeze(1)
        return out

    def query_columns(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, F) float32 query coefficients -> (5Q, row_bytes) int8 columns and (Q, 3) factors.

        Each query u is split per part (head, tail) into u ~ sigma (p + r / 256) with int8 p, r,
        i.e. 16 bits: p = round(u / sigma), r = round(256 (u / sigma - p)). The factors are
        sigma_head, sigma_tail and the head's constant term 128 * 2^-15 * sum(u_head).
        """
        q, h, t = codes.shape[0], self.head, self.tail
        columns = torch.zeros(self.row_bytes, q, _COLUMNS, dtype=torch.int8, device=codes.device)
        factors = torch.empty(q, 3, device=codes.device)
        # Summed one query at a time: a batched reduction may add in another order.
        factors[:, 2] = torch.stack([row[:h].sum() for row in codes]) * (128 * _HEAD_SCALE)
        factors[:, 1] = 0.0  # no tail
        for part, (start, stop) in enumerate(((0, h), (h, h + t)) if t else ((0, h),)):
            values = codes[:, start:stop]
            sigma = values.abs().amax(dim=1) / _INT8_MAX
            factors[:, part] = sigma
            scaled = values / sigma.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
            coarse = scaled.round()
            fine = scaled.sub(coarse).mul_(256).round_().clamp_(-_INT8_MAX, _INT8_MAX)
            coarse, fine = coarse.T.to(torch.int8), fine.T.to(torch.int8)  # (width, Q)
            if part == 0:  # hi rows take p (x 256) and r; lo rows take p and r (/ 256)
                columns[:h, :, 0], columns[:h, :, 1] = coarse, fine
                columns[h : 2 * h, :, 1], columns[h : 2 * h, :, 2] = coarse, fine
            else:
                columns[2 * h : 2 * h + t, :, 3], columns[2 * h : 2 * h + t, :, 4] = coarse, fine
        return columns.view(self.row_bytes, _COLUMNS * q).T.contiguous(), factors

    def scores(
        self, rows: torch.Tensor, columns: torch.Tensor, factors: torch.Tensor
    ) -> torch.Tensor:
        """(M, row_bytes) rows, `query_columns(...)` -> (Q, M) float32 products <u, c>."""
        q, m = factors.shape[0], rows.shape[0]
        # (5Q, M) float32, one contiguous row per column; only single-rounding operations
        # follow (no fused multiply-add, whose vector and scalar kernels round differently), so
        # a voxel's score does not depend on the batch it is scored in (the negative cache
        # relies on that).
        part = int8_products(columns, rows).reshape(q, _COLUMNS, m)
        # 256 p hi + r hi + p lo and 256 p t + r t stay below 2^31: exact in int32 (MAX_PART).
        head = part[:, 0].mul(256).add_(part[:, 1]).to(torch.float32)
        head.add_(part[:, 2].to(torch.float32).mul_(1 / 256))
        head.mul_((factors[:, 0] * _HEAD_SCALE).unsqueeze(1)).add_(factors[:, 2].unsqueeze(1))
        tail = part[:, 3].mul(256).add_(part[:, 4]).to(torch.float32)
        tail.mul_((factors[:, 1] / 256).unsqueeze(1)).mul_(self.scales(rows))
        return head.add_(tail)
