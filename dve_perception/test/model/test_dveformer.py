"""Architecture tests: checkpoint layout, output shapes, input validation.

Most tests use the tiny configuration from conftest; the real-size models are built only where the
published layout itself is under test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dve_perception.errors import ConfigError, InputError
from dve_perception.model import DVEFormerConfig, build_dveformer

DATA = Path(__file__).parents[1] / "data"


def read_key_table(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (DATA / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


@pytest.mark.parametrize("variant", ["fullres", "reducedres"])
def test_state_dict_matches_published_checkpoint_layout(variant):
    expected = read_key_table(f"keys_{variant}.tsv")
    state = build_dveformer(variant).state_dict()
    actual = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert actual == expected


def test_swin_buffers_equal_the_official_ones(parity_fixture):
    attn = build_dveformer("reducedres").encoder.backbone.layer_1[0].attn
    torch.testing.assert_close(
        attn.relative_coords_table, torch.from_numpy(parity_fixture["relative_coords_table_stage1"])
    )
    assert torch.equal(
        attn.relative_position_index,
        torch.from_numpy(parity_fixture["relative_position_index_stage1"]),
    )


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (96, 64), (224, 320)])
@pytest.mark.parametrize("n_upsamplings,stride", [(2, 1), (0, 4)])
def test_output_shape_for_any_multiple_of_32(tiny_config, size, n_upsamplings, stride):
    config = DVEFormerConfig(**{**tiny_config.__dict__, "n_upsamplings": n_upsamplings})
    model = build_dveformer(config)
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w), torch.randn(2, 1, h, w))
    assert out.shape == (2, config.embedding_dim, h // stride, w // stride)
    assert torch.isfinite(out).all()
    assert config.output_stride == stride


def test_fullres_real_model_outputs_input_resolution():
    model = build_dveformer("fullres")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), torch.randn(1, 1, 64, 96))
    assert out.shape == (1, 768, 64, 96)


def test_batch_elements_are_independent(tiny_model):
    rgb, depth = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        both = tiny_model(rgb, depth)
        second = tiny_model(rgb[1:], depth[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_depth_changes_the_output(tiny_model):
    rgb = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = tiny_model(rgb, torch.zeros(1, 1, 64, 64))
        b = tiny_model(rgb, torch.ones(1, 1, 64, 64))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "rgb_shape,depth_shape,match",
    [
        ((1, 4, 64, 64), (1, 1, 64, 64), r"rgb must have shape \(B, 3, H, W\)"),
        ((1, 3, 64, 64), (1, 3, 64, 64), r"depth must have shape \(B, 1, H, W\)"),
        ((3, 64, 64), (1, 1, 64, 64), r"rgb must have shape"),
        ((1, 3, 64, 64), (1, 1, 64, 96), r"differ in batch or size"),
        ((2, 3, 64, 64), (1, 1, 64, 64), r"differ in batch or size"),
        ((1, 3, 60, 64), (1, 1, 60, 64), r"60x64 is not a multiple of 32"),
        ((1, 3, 0, 64), (1, 1, 0, 64), r"empty input"),
        ((0, 3, 64, 64), (0, 1, 64, 64), r"empty input"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, rgb_shape, depth_shape, match):
    with pytest.raises(InputError, match=match):
        tiny_model(torch.zeros(rgb_shape), torch.zeros(depth_shape))


def test_integer_input_is_rejected(tiny_model):
    with pytest.raises(InputError, match="floating-point"):
        tiny_model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 1, 64, 64))


def test_unknown_variant_and_bad_config_are_rejected():
    with pytest.raises(ConfigError, match="unknown DVEFormer variant 'halfres'"):
        build_dveformer("halfres")
    with pytest.raises(ConfigError, match="not divisible by 3 heads"):
        DVEFormerConfig(num_heads=(3, 8, 16, 32))
    with pytest.raises(ConfigError, match="n_upsamplings"):
        DVEFormerConfig(n_upsamplings=3)
