"""Positional depth encoding properties and the PDE variant of DVEFormer."""

from __future__ import annotations

import math

import pytest
import torch

from dve_perception.errors import ConfigError, InputError
from dve_perception.model.dveformer import TINY_TEST_CONFIG, build_dveformer
from dve_perception.training.depth_encoding import (
    PDEPatchEmbedConv,
    positional_depth_encoding,
    with_pde_depth_stem,
)

DEPTH_KEY = "encoder.backbone.patch_embedder.depth_layers.0.weight"


def _codes(depths_m, channels=32):
    d = torch.as_tensor(depths_m, dtype=torch.float32).view(1, 1, 1, -1)
    return positional_depth_encoding(d, channels)[0, :, 0, :].T  # (N, C)


@pytest.mark.parametrize("channels", [32, 64])
def test_codes_are_bounded_and_have_the_requested_channels(channels):
    depth = torch.rand(2, 1, 5, 6) * 30.0  # includes depths beyond the 15 m range
    code = positional_depth_encoding(depth, channels)
    assert code.shape == (2, channels, 5, 6)
    assert code.abs().max() <= 1.0


@pytest.mark.parametrize("channels", [32, 64])
def test_depths_across_the_range_get_distinct_codes(channels):
    codes = _codes(torch.arange(0.1, 15.0001, 0.05), channels)
    dist = torch.cdist(codes.double(), codes.double())
    dist.fill_diagonal_(math.inf)
    # Neighbours 5 cm apart must still be clearly apart (coarsest pair alone moves ~8e-3 rad).
    assert dist.min() > 0.05


def test_small_depth_changes_give_small_code_changes():
    d = torch.arange(0.1, 15.0, 0.37)
    delta = (_codes(d + 1e-4) - _codes(d)).norm(dim=1)
    # Lipschitz bound: |d code / d depth| <= sqrt(sum omega_i^2) with omega <= 2 pi / 5 cm.
    assert delta.max() < 1e-4 * 2 * math.pi / 0.05 * math.sqrt(16) * 1.01
    assert delta.max() < 0.1


def test_the_code_is_monotone_in_the_coarsest_channel():
    codes = _codes(torch.linspace(0.0, 15.0, 200)[1:])
    assert torch.all(torch.diff(codes[:, 0]) > 0)


def test_invalid_depth_encodes_to_zeros_unlike_any_valid_depth():
    depth = torch.tensor([0.0, -1.0, float("nan"), float("inf"), 2.0]).view(1, 1, 1, 5)
    code = positional_depth_encoding(depth)[0, :, 0, :].T
    assert torch.equal(code[:4], torch.zeros(4, 32))
    # Each sin/cos pair of a valid depth has unit norm, so its code has norm sqrt(16).
    assert code[4].norm().item() == pytest.approx(4.0, rel=1e-5)


def test_depths_beyond_the_range_are_clamped():
    assert torch.equal(_codes([20.0]), _codes([15.0]))


def test_bad_inputs_and_settings_are_rejected():
    with pytest.raises(InputError, match="\\(B, 1, H, W\\)"):
        positional_depth_encoding(torch.zeros(1, 2, 3, 3))
    with pytest.raises(InputError, match="floating point"):
        positional_depth_encoding(torch.zeros(1, 1, 3, 3, dtype=torch.int32))
    with pytest.raises(ConfigError, match="must be one of"):
        positional_depth_encoding(torch.zeros(1, 1, 3, 3), channels=16)
    with pytest.raises(ConfigError, match="max_depth_m > 0"):
        positional_depth_encoding(torch.zeros(1, 1, 3, 3), max_depth_m=0.0)


def test_pde_dveformer_runs_on_metric_depth_and_differs_only_in_the_depth_conv():
    torch.manual_seed(0)
    official = build_dveformer(TINY_TEST_CONFIG)
    pde = with_pde_depth_stem(build_dveformer(TINY_TEST_CONFIG), channels=64)
    assert isinstance(pde.encoder.backbone.patch_embedder.depth_layers[0], PDEPatchEmbedConv)
    ref, new = official.state_dict(), pde.state_dict()
    assert ref.keys() == new.keys()
    differing = [k for k in ref if ref[k].shape != new[k].shape]
    assert differing == [DEPTH_KEY]
    assert new[DEPTH_KEY].shape[1] == 64 and ref[DEPTH_KEY].shape[1] == 1

    depth_m = torch.rand(1, 1, 64, 64) * 10.0
    depth_m[..., :8, :] = 0.0  # missing measurements
    out = pde(torch.randn(1, 3, 64, 64), depth_m)
    assert out.shape == (1, TINY_TEST_CONFIG.embedding_dim, 64, 64)
    assert torch.isfinite(out).all()


def test_millimetre_input_matches_metre_input_with_the_right_scale():
    torch.manual_seed(1)
    conv_m = PDEPatchEmbedConv(4, 4, depth_scale_m=1.0)
    conv_mm = PDEPatchEmbedConv(4, 4, depth_scale_m=0.001)
    conv_mm.load_state_dict(conv_m.state_dict())
    depth_m = torch.rand(1, 1, 8, 8) * 10.0
    assert torch.allclose(conv_m(depth_m), conv_mm(depth_m * 1000.0), atol=1e-4)


def test_the_stem_is_applied_once_to_a_dveformer():
    model = with_pde_depth_stem(build_dveformer(TINY_TEST_CONFIG))
    with pytest.raises(InputError, match="applied once"):
        with_pde_depth_stem(model)
    with pytest.raises(InputError, match="expected a DVEFormer"):
        with_pde_depth_stem(torch.nn.Linear(2, 2))
