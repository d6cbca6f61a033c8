"""Deterministic synthetic weights for a DVEFormer state_dict layout.

The published checkpoints cannot be downloaded in CI, so loading code, parity and export are
exercised on generated weights. The value of each entry depends only on (seed, key name, shape),
drawn from `numpy.random.default_rng([seed, crc32(key)])` with per-kind distributions; this is
the project's parity generator (from the internal parity fixtures), so the reference output
recorded with the official implementation for seed 1 applies to these weights. The values carry no
meaning: embeddings computed with them are not CLIP-aligned.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["PARITY_SEED", "build_generated", "generate_state_dict", "generated_values"]

#: Non-learned buffers that the model computes itself.
DERIVED_BUFFER_SUFFIXES = ("relative_coords_table", "relative_position_index")


def _value(key: str, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype == "int64":  # BatchNorm num_batches_tracked
        return np.zeros(shape, dtype=np.int64)
    if key.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if key.endswith("running_mean"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("logit_scale"):
        return (np.log(10.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("bias"):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:  # LayerNorm / BatchNorm scale
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def generated_values(
    layout: Iterable[tuple[str, tuple[int, ...], str]], seed: int
) -> dict[str, np.ndarray]:
    """Return {key: array} for each learned entry of a (key, shape, dtype-name) layout."""
    out = {}
    for key, shape, dtype in layout:
        if key.endswith(DERIVED_BUFFER_SUFFIXES):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        out[key] = _value(key, tuple(shape), dtype, rng)
    return out


def generate_state_dict(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Return a complete state_dict for `model`: generated values plus its derived buffers."""
    state = model.state_dict()
    layout = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    values = generated_values(layout, seed)
    return {k: torch.from_numpy(values[k]) if k in values else v.clone() for k, v in state.items()}


#: The seed of the official parity reference; stand-in weights use it everywhere.
PARITY_SEED = 1


def build_generated(variant: str, seed: int = PARITY_SEED) -> torch.nn.Module:
    """Build a published variant filled with generated weights (a stand-in, not a model)."""
    from dve_perception.model.dveformer import build_dveformer

    model = build_dveformer(variant)
    model.load_state_dict(generate_state_dict(model, seed=seed))
    return model
