"""The model reproduces the official implementation's output on the real sample.

The reference was computed by the official code with the generated weights (seed 1) on the
bundled Kinect v2 frame (test/data/NOTICE.md). A faithful float32 CPU implementation differs
only by summation order, around 1e-6 relative; anything near 1e-4 is a semantic difference.
"""

from __future__ import annotations

import numpy as np
import torch

from dve_perception.model.checkpoint import load_checkpoint

REL_L2_TOL = 1e-4


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_reducedres_reproduces_official_output(parity_fixture, reducedres_checkpoint):
    model = load_checkpoint(reducedres_checkpoint)
    rgb = torch.from_numpy(parity_fixture["rgb_input"])[None]
    depth = torch.from_numpy(parity_fixture["depth_input"])[None]
    with torch.no_grad():
        out = model(rgb, depth)[0].numpy()

    assert out.shape == tuple(parity_fixture["output_shape"])
    values = out[parity_fixture["sample_c"], parity_fixture["sample_y"], parity_fixture["sample_x"]]
    assert rel_l2(values, parity_fixture["sample_values"]) < REL_L2_TOL
    assert rel_l2(out.mean(axis=(1, 2)), parity_fixture["channel_mean"]) < REL_L2_TOL
    assert abs(out.std() - parity_fixture["output_std"]) < REL_L2_TOL * parity_fixture["output_std"]
