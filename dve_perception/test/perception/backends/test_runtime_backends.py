"""The torch and onnxruntime backends agree, check inputs with the same words, and feed the
perception pipeline the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import CheckpointError, ConfigError, InputError
from dve_perception.frames import RGBDFrame
from dve_perception.perception.backends import make_backend
from dve_perception.perception.backends.onnx_export import export_onnx
from dve_perception.perception.pipeline import PerceptionPipeline
from dve_perception.perception.preprocess import PreprocessConfig

SIZE = (64, 96)


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer(TINY_TEST_CONFIG)
    model.load_state_dict(generate_state_dict(model, seed=3))
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, path, height=SIZE[0], width=SIZE[1])
    return {
        "torch": make_backend("torch", model=model),
        "onnxruntime": make_backend("onnxruntime", onnx_path=path),
    }


def _inputs(h=SIZE[0], w=SIZE[1]):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, h, w, generator=gen), torch.randn(1, 1, h, w, generator=gen)


def test_backends_agree_on_the_embedding(backends):
    rgb, depth = _inputs()
    expected = backends["torch"].infer(rgb, depth)
    actual = backends["onnxruntime"].infer(rgb, depth)
    assert actual.shape == expected.shape
    assert (actual - expected).norm() / expected.norm() < 1e-4


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
@pytest.mark.parametrize(
    ("rgb_shape", "depth_shape", "match"),
    [
        ((1, 3, 64, 96), (1, 1, 64, 64), "differ in batch or size"),
        ((1, 4, 64, 96), (1, 1, 64, 96), r"rgb must have shape \(B, 3, H, W\)"),
        ((1, 3, 60, 96), (1, 1, 60, 96), "not a multiple of 32"),
    ],
)
def test_every_backend_rejects_bad_inputs_with_the_same_words(
    backends, name, rgb_shape, depth_shape, match
):
    with pytest.raises(InputError, match=match):
        backends[name].infer(torch.zeros(rgb_shape), torch.zeros(depth_shape))


def test_a_static_export_refuses_other_sizes_and_says_which(backends):
    with pytest.raises(InputError, match="built for 64x96 inputs, got 96x96"):
        backends["onnxruntime"].infer(*_inputs(96, 96))


def test_pipeline_follows_a_static_export_size_and_gives_unit_embeddings(backends):
    frame = RGBDFrame(
        rgb=np.full((120, 160, 3), 90, np.uint8),
        depth_m=np.full((120, 160), 1.5, np.float32),
        K=np.array([[100.0, 0, 79.5], [0, 100.0, 59.5], [0, 0, 1]]),
        stamp_ns=5,
    )
    ort = PerceptionPipeline(backends["onnxruntime"], PreprocessConfig())  # 480x640 asked for
    assert (ort.config.height, ort.config.width) == SIZE
    out = ort.embed(frame)
    reference = PerceptionPipeline(backends["torch"], PreprocessConfig(*SIZE)).embed(frame)
    assert out.embedding.shape == reference.embedding.shape == (16, 64, 96)
    norms = out.embedding.norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert torch.allclose(out.embedding, reference.embedding, atol=1e-3)
    assert out.depth_m.shape == (64, 96) and out.stamp_ns == 5
    np.testing.assert_allclose(out.K[0, 0], 100.0 * 96 / 160)


def test_closed_backends_and_bad_choices_fail_clearly(tmp_path, backends):
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG

    backend = make_backend("torch", model=build_dveformer(TINY_TEST_CONFIG))
    with backend:
        pass
    with pytest.raises(InputError, match="was closed"):
        backend.infer(*_inputs())
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        make_backend("tensorflow")
    with pytest.raises(ConfigError, match="--onnx FILE"):
        make_backend("onnxruntime")
    with pytest.raises(CheckpointError, match="export-onnx"):
        make_backend("onnxruntime", onnx_path=tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load"):
        make_backend("onnxruntime", onnx_path=tmp_path / "junk.onnx")
