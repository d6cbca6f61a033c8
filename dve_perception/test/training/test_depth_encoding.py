"""Positional depth encoding properties and the PDE variant of DVEFormer."""

from __future__ import annotations

import math

import pytest
import torch

from dve_perception.errors import ConfigError, InputError
from dve_perception.model.dveformer import TINY_TEST_CONFIG, build_dveformer
from dve_perception.training.depth_encoding import (
    PDEPatchEmbedConv,
    pde_wavelengths_m,
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


def test_the_code_is_vanishing_depths_formula_written_out():
    # Their DepthPositionalEncoding with temperature 3e-4, scale 2 pi, max depth 15 m, 32
    # channels: channel i gets (d / 15) * 2 pi / 3e-4 ** (2 * (i // 2) / 32), sin on even i,
    # cos on odd i. Written here element by element, independently of the vectorised code.
    for depth in (0.37, 2.0, 9.81, 15.0):
        expected = []
        for i in range(32):
            phase = (depth / 15.0) * 2 * math.pi / 3e-4 ** (2 * (i // 2) / 32)
            expected.append(math.sin(phase) if i % 2 == 0 else math.cos(phase))
        torch.testing.assert_close(
            _codes([depth])[0], torch.tensor(expected), rtol=0, atol=2e-3
        )  # float32 phases of up to ~1.2e4 rad round by ~1e-3 rad (their code is float32 too)


@pytest.mark.parametrize(("channels", "shortest_m"), [(32, 7.6e-3), (64, 5.8e-3)])
def test_wavelengths_run_from_the_range_down_to_millimetres(channels, shortest_m):
    wavelengths = pde_wavelengths_m(channels)
    assert wavelengths.shape == (channels // 2,)
    assert wavelengths[0].item() == 15.0
    assert torch.all(torch.diff(wavelengths) < 0)
    assert wavelengths[-1].item() == pytest.approx(shortest_m, rel=0.02)


@pytest.mark.parametrize("channels", [32, 64])
def test_depths_across_the_range_get_distinct_codes(channels):
    codes = _codes(torch.arange(0.1, 14.95, 0.05), channels)
    dist = torch.cdist(codes.double(), codes.double())
    dist.fill_diagonal_(math.inf)
    assert dist.min() > 0.05  # neighbours 5 cm apart are clearly apart


def test_small_depth_changes_give_small_code_changes():
    d = torch.arange(0.1, 15.0, 0.37)
    delta = (_codes(d + 1e-4) - _codes(d)).norm(dim=1)
    # Lipschitz bound: |d code / d depth| <= sqrt(sum omega_k^2) <= sqrt(16) * 2 pi / shortest.
    shortest = pde_wavelengths_m(32)[-1].item()
    assert delta.max() < 1e-4 * 2 * math.pi / shortest * math.sqrt(16) * 1.01


def test_missing_depth_is_encoded_as_the_official_code_encodes_zero():
    depth = torch.tensor([0.0, -1.0, float("nan"), float("inf"), 1e-6, 2.0]).view(1, 1, 1, 6)
    code = positional_depth_encoding(depth)[0, :, 0, :].T
    for row in range(4):
        torch.testing.assert_close(code[row], code[4], rtol=0, atol=0)
    # 1e-6 m: every sine ~0 and every cosine ~1, unlike a measured depth.
    torch.testing.assert_close(code[4, 1::2], torch.ones(16))
    assert code[4, 0::2].abs().max() < 1e-2
    assert (code[5] - code[4]).norm() > 1.0


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
    with pytest.raises(ConfigError, match="temperature < 1"):
        positional_depth_encoding(torch.zeros(1, 1, 3, 3), temperature=1.0)


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
