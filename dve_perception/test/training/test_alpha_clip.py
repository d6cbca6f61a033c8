"""The Alpha-CLIP vision tower: architecture, alpha, preprocessing and checkpoint files."""

from __future__ import annotations

import pytest
import torch

from dve_perception.errors import CheckpointError, ConfigError, InputError
from dve_perception.training.alpha_clip import (
    ALPHA_CLIP_L14_336,
    CLIP_MEAN,
    CLIP_STD,
    TINY_ALPHA_CLIP_CONFIG,
    AlphaCLIPVisionConfig,
    AlphaCLIPVisionTransformer,
    preprocess_alpha,
    preprocess_rgb,
)
from dve_perception.training.alpha_clip_checkpoint import (
    describe_architecture,
    load_alpha_clip,
)

TINY = TINY_ALPHA_CLIP_CONFIG


def tiny_model(seed: int = 0, alpha_weights: bool = True) -> AlphaCLIPVisionTransformer:
    torch.manual_seed(seed)
    model = AlphaCLIPVisionTransformer(TINY).eval()
    if alpha_weights:
        with torch.no_grad():
            model.conv1_alpha.weight.normal_(0.0, 0.2)
    return model


def tiny_inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    s = TINY.image_size
    image = torch.randn(n, 3, s, s)
    mask = torch.zeros(n, s, s, dtype=torch.bool)
    mask[:, : s // 2] = True
    return image, preprocess_alpha(mask, s)


def test_real_l14_336_tower_has_clip_parameter_names_shapes_and_count():
    with torch.device("meta"):
        model = AlphaCLIPVisionTransformer(ALPHA_CLIP_L14_336)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    w, blocks = 1024, 24
    assert shapes["conv1.weight"] == (w, 3, 14, 14)
    assert shapes["conv1_alpha.weight"] == (w, 1, 14, 14)
    assert shapes["class_embedding"] == (w,)
    assert shapes["positional_embedding"] == ((336 // 14) ** 2 + 1, w)
    assert shapes["proj"] == (w, 768)
    for name in ("ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias"):
        assert shapes[name] == (w,)
    block = "transformer.resblocks.23."
    assert shapes[block + "attn.in_proj.weight"] == (3 * w, w)
    assert shapes[block + "attn.in_proj.bias"] == (3 * w,)
    assert shapes[block + "attn.out_proj.weight"] == (w, w)
    assert shapes[block + "mlp.c_fc.weight"] == (4 * w, w)
    assert shapes[block + "mlp.c_proj.weight"] == (w, 4 * w)
    assert {block + n for n in ("ln_1.weight", "ln_2.bias")} <= set(shapes)
    assert "transformer.resblocks.24.ln_1.weight" not in shapes
    # Independent count: stems, tokens, 24 blocks (qkv, out, 2 LNs, MLP), final LN and projection.
    per_block = (
        (3 * w * w + 3 * w) + (w * w + w) + 2 * 2 * w + (4 * w * w + 4 * w) + (4 * w * w + w)
    )
    expected = 3 * w * 196 + w * 196 + w + 577 * w + 2 * w + blocks * per_block + 2 * w + w * 768
    assert sum(p.numel() for p in model.parameters()) == expected
    assert describe_architecture(model.state_dict()).startswith("ViT-L/14@336px")


def test_tiny_tower_embeds_a_batch_with_alpha():
    image, alpha = tiny_inputs(3)
    out = tiny_model()(image, alpha)
    assert out.shape == (3, TINY.output_dim)
    assert torch.isfinite(out).all()


def test_zero_alpha_convolution_makes_the_output_independent_of_the_mask():
    model = tiny_model(alpha_weights=False)  # fresh towers start with conv1_alpha = 0
    assert torch.count_nonzero(model.conv1_alpha.weight) == 0
    image, alpha = tiny_inputs(1)
    full = preprocess_alpha(torch.ones(1, TINY.image_size, TINY.image_size), TINY.image_size)
    torch.testing.assert_close(model(image, alpha), model(image, full))


def test_nonzero_alpha_convolution_makes_the_mask_matter():
    model = tiny_model()
    image, alpha = tiny_inputs(1)
    full = preprocess_alpha(torch.ones(1, TINY.image_size, TINY.image_size), TINY.image_size)
    assert not torch.allclose(model(image, alpha), model(image, full), atol=1e-4)


def test_tower_rejects_wrong_input_shapes():
    model = tiny_model()
    image, alpha = tiny_inputs(2)
    with pytest.raises(InputError, match=r"image has shape \(2, 3, 14, 14\)"):
        model(image[:, :, :14, :14], alpha)
    with pytest.raises(InputError, match="alpha has shape"):
        model(image, alpha[:1])


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        AlphaCLIPVisionConfig(image_size=30, patch_size=14)
    with pytest.raises(ConfigError, match="not divisible by heads"):
        AlphaCLIPVisionConfig(width=30, heads=4)


def test_rgb_preprocessing_resizes_without_aspect_and_applies_clip_mean_std():
    rgb = torch.empty(3, 48, 80, dtype=torch.uint8)
    values = (200, 100, 10)
    for c, v in enumerate(values):
        rgb[c] = v
    out = preprocess_rgb(rgb)
    assert out.shape == (1, 3, 336, 336)
    for c, v in enumerate(values):
        expected = (v / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(out[0, c], torch.full((336, 336), expected))


def test_rgb_preprocessing_stretches_the_whole_image_instead_of_cropping():
    rgb = torch.zeros(3, 10, 40, dtype=torch.uint8)
    rgb[:, :, :4] = 255  # a white band at the far left survives only without a centre crop
    out = preprocess_rgb(rgb, size=20)
    assert out[0, 0, 10, 0] > 1.5 and out[0, 0, 10, 19] < -1.5


def test_alpha_preprocessing_is_nearest_and_normalised():
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, :4] = True
    out = preprocess_alpha(mask, size=16)
    assert out.shape == (1, 1, 16, 16)
    inside, outside = (1 - 0.5) / 0.26, (0 - 0.5) / 0.26
    torch.testing.assert_close(out[0, 0, :, :8], torch.full((16, 8), inside))
    torch.testing.assert_close(out[0, 0, :, 8:], torch.full((16, 8), outside))


def test_preprocessing_rejects_wrong_shapes():
    with pytest.raises(InputError, match=r"rgb has shape \(4, 5, 5\)"):
        preprocess_rgb(torch.zeros(4, 5, 5))
    with pytest.raises(InputError, match="mask has shape"):
        preprocess_alpha(torch.zeros(1, 1, 5, 5))


def openai_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full CLIP + alpha state dict: `visual.` prefix, OpenAI attention names, a text tower."""
    full = {}
    for key, value in state.items():
        key = key.replace("attn.in_proj.weight", "attn.in_proj_weight")
        full["visual." + key.replace("attn.in_proj.bias", "attn.in_proj_bias")] = value
    full["token_embedding.weight"] = torch.zeros(10, 8)
    full["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(24, 8)
    full["logit_scale"] = torch.zeros(())
    return full


@pytest.mark.parametrize(
    "layout",
    [
        lambda s: s,
        openai_layout,
        lambda s: {"state_dict": {"module." + k: v for k, v in s.items()}},
    ],
    ids=["visual-only", "full-clip", "wrapped-ddp"],
)
def test_checkpoint_layouts_load_strictly_and_reproduce_outputs(tmp_path, layout):
    source = tiny_model(seed=3)
    path = tmp_path / "alpha.pth"
    torch.save(layout(source.state_dict()), path)
    loaded = load_alpha_clip(path, TINY)
    image, alpha = tiny_inputs(2)
    torch.testing.assert_close(loaded(image, alpha), source(image, alpha))
    assert not loaded.training


def test_checkpoint_of_another_vit_is_refused_with_what_it_looks_like(tmp_path):
    other = AlphaCLIPVisionConfig(image_size=28, patch_size=7, width=48, layers=1, heads=2)
    path = tmp_path / "other.pth"
    torch.save(AlphaCLIPVisionTransformer(other).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"looks like a ViT \(width 48, patch 7.*mismatch"):
        load_alpha_clip(path, TINY)


def test_vit_b16_shapes_are_named():
    config = AlphaCLIPVisionConfig(image_size=224, patch_size=16, width=768, layers=12, heads=12)
    with torch.device("meta"):
        state = AlphaCLIPVisionTransformer(config).state_dict()
    assert describe_architecture(state).startswith("ViT-B/16 (width 768, patch 16, 224 px")


def test_dveformer_checkpoint_is_refused(tmp_path):
    path = tmp_path / "dveformer.pth"
    torch.save({"state_dict": {"encoder.a": torch.zeros(1), "decoders.b": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="looks like a DVEFormer checkpoint"):
        load_alpha_clip(path, TINY)


def test_plain_clip_without_alpha_convolution_is_refused(tmp_path):
    state = tiny_model().state_dict()
    del state["conv1_alpha.weight"]
    path = tmp_path / "clip.pth"
    torch.save(openai_layout(state), path)
    with pytest.raises(CheckpointError, match="without 'conv1_alpha.weight'"):
        load_alpha_clip(path, TINY)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = tiny_model().state_dict()
    del state["ln_post.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="1 missing keys: ln_post.bias.*extra.weight"):
        load_alpha_clip(path, TINY)


class _Payload:
    pass


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": tiny_model().state_dict(), "obj": _Payload()}, path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_alpha_clip(path, TINY)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-L-14-336px.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_alpha_clip(path, TINY)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_alpha_clip(tmp_path / "nope.pth", TINY)


@pytest.mark.slow
def test_the_real_size_tower_with_random_weights_loads_from_file_and_runs(tmp_path):
    # ViT-L/14@336 as published (304M parameters), seeded random weights stored in float16 like
    # the released files: the loader must take them strictly and reproduce the source's output.
    torch.manual_seed(0)
    source = AlphaCLIPVisionTransformer(ALPHA_CLIP_L14_336).eval()
    with torch.no_grad():
        source.conv1_alpha.weight.normal_(0.0, 0.02)  # zero-initialised: make alpha matter
        for parameter in source.parameters():  # what a float16 file can hold
            parameter.copy_(parameter.half().float())
    path = tmp_path / "alpha_clip_l14_336.pth"
    torch.save({k: v.half() for k, v in source.state_dict().items()}, path)
    loaded = load_alpha_clip(path, ALPHA_CLIP_L14_336)
    del path
    size = ALPHA_CLIP_L14_336.image_size
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, : size // 2] = True
    alpha = preprocess_alpha(mask, size)
    with torch.no_grad():
        out, reference = loaded(image, alpha), source(image, alpha)
        other_mask = source(image, preprocess_alpha(~mask, size))
    assert out.shape == (1, 768) and torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    assert (other_mask - reference).abs().max() > 1e-3  # the alpha channel is wired in
