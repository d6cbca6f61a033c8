"""ONNX export with the official recipe, checked against PyTorch with onnxruntime.

The small config exports in about a second. The real-size reduced-res export is checked against
PyTorch end to end through the CLI (test_cli.py), once, to keep the suite's runtime down: it takes
about 9 s here whatever the input size, since export time depends on the graph and the weights.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dve_perception import __version__
from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from dve_perception.model import build_dveformer
from dve_perception.model.dveformer import TINY_TEST_CONFIG
from dve_perception.model.generated_weights import generate_state_dict
from dve_perception.perception.backends import onnx_export
from dve_perception.perception.backends.onnx_export import (
    OUTPUT_NAME,
    ExportMetadata,
    compare_with_onnxruntime,
    export_onnx,
    read_export_metadata,
)

# fp32 onnxruntime vs PyTorch on CPU measures about 1e-6; 1e-4 leaves room for other CPUs' kernels.
TOLERANCE = 1e-4
SMALL = TINY_TEST_CONFIG


def small_model(n_upsamplings=2):
    model = build_dveformer(dataclasses.replace(SMALL, n_upsamplings=n_upsamplings))
    model.load_state_dict(generate_state_dict(model, seed=3))
    return model


@pytest.fixture
def small():
    """A fresh small full-res model (tests may change its mode)."""
    return small_model()


def run_onnx(path, rgb, depth):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"rgb": rgb.numpy(), "depth": depth.numpy()})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The small full-res model exported at 192x224 (pooling through the matrix form)."""
    model = small_model(n_upsamplings=2)
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_onnx(model, path, height=192, width=224)
    return model, path


@pytest.mark.parametrize(
    ("n_upsamplings", "height", "width", "avg_pools"),
    [
        # 160x160 pools a 5x5 map: both bins become the official kernel = stride AvgPool2d.
        (2, 160, 160, 2),
        # 96x128 pools a 3x4 map: the 5 bins overlap and go through the matrix form.
        (0, 96, 128, 1),
    ],
)
def test_export_of_both_heads_matches_torch(tmp_path, n_upsamplings, height, width, avg_pools):
    model = small_model(n_upsamplings)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, height=height, width=width)

    stride = 4 // 2**n_upsamplings
    out = run_onnx(path, *onnx_export._example_inputs(1, height, width, seed=5))
    assert out.shape == (1, 16, height // stride, width // stride)
    assert compare_with_onnxruntime(model, path, seed=5)[OUTPUT_NAME] < TOLERANCE
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("AveragePool") == avg_pools


def test_export_names_tensors_and_keeps_the_batch_dynamic(exported):
    model, path = exported
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["rgb", "depth"]
    assert [o.name for o in proto.graph.output] == ["dense_visual_embedding_decoder_0"]
    dims = [
        [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    ]
    assert dims == [["batch_size", 3, 192, 224], ["batch_size", 1, 192, 224]]
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 20)]

    rgb, depth = onnx_export._example_inputs(2, 192, 224, seed=7)
    with torch.no_grad():
        expected = model(rgb, depth).numpy()
    actual = run_onnx(path, rgb, depth)
    assert actual.shape == (2, 16, 192, 224)
    for i in range(2):  # each sample on its own: the batch axis must not mix samples
        assert np.linalg.norm(actual[i] - expected[i]) / np.linalg.norm(expected[i]) < TOLERANCE


def test_export_writes_metadata_into_a_normal_file(exported):
    model, path = exported
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0o600 of a temporary file
    expected = ExportMetadata("custom", model.config, 192, 224, False, __version__)
    assert read_export_metadata(path) == expected

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert props["output_stride"] == "1"
    assert props["embedding_dim"] == "16"
    assert ExportMetadata.from_props(props) == expected


def test_normalized_export_outputs_unit_vectors(tmp_path, small):
    path = tmp_path / "normalized.onnx"
    assert export_onnx(small, path, height=64, width=96, normalize=True).normalized

    rgb, depth = onnx_export._example_inputs(1, 64, 96, seed=1)
    actual = run_onnx(path, rgb, depth)
    with torch.no_grad():
        raw = small(rgb, depth)
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(actual, F.normalize(raw, dim=1).numpy(), atol=1e-5)
    assert not np.allclose(actual, raw.numpy(), atol=1e-3)  # the raw output is not unit-norm


def test_export_leaves_the_model_as_it_was(tmp_path, small):
    small.train()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    pools = [m for m in small.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]

    export_onnx(small, tmp_path / "m.onnx", height=32, width=32)

    assert small.training
    assert [m for m in small.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] == pools
    after = small.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


class PooledConv(nn.Module):
    """A stand-in with DVEFormer's interface: (rgb, depth) -> 1/4-resolution map, adaptive pooling.

    torch.export takes about 20 s on even the small DVEFormer here (DVEFormer itself exports
    with dynamo=True to 1e-6), so the dynamo path's plumbing is tested on this module instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = dataclasses.replace(SMALL, n_upsamplings=0)
        self.conv = nn.Conv2d(4, 16, 4, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(5)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([rgb, depth], dim=1))
        return x + F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear")


def test_dynamo_export_matches_torch_with_dynamic_batch(tmp_path):
    model = PooledConv().eval()
    path = tmp_path / "dynamo.onnx"
    export_onnx(model, path, height=96, width=128, normalize=True, dynamo=True)

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["rgb", "depth"]
    assert [o.name for o in proto.graph.output] == ["dense_visual_embedding_decoder_0"]
    assert read_export_metadata(path).normalized
    assert compare_with_onnxruntime(model, path, batch_size=3) == {
        OUTPUT_NAME: pytest.approx(0, abs=TOLERANCE)
    }


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (100, 640, "height must be a positive multiple of 32, got 100; use e.g. 96 or 128"),
        (480, 650, "width must be a positive multiple of 32, got 650; use e.g. 640 or 672"),
        (16, 640, "height must be a positive multiple of 32, got 16; use e.g. 32"),
        (0, 640, "height must be a positive multiple of 32, got 0"),
        (480, -32, "width must be a positive multiple of 32, got -32"),
        (480.0, 640, "height must be a positive multiple of 32, got 480.0"),
    ],
)
def test_export_rejects_sizes_that_are_not_multiples_of_32(tmp_path, small, height, width, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        export_onnx(small, tmp_path / "m.onnx", height=height, width=width)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opset", [17, 21])
def test_export_rejects_unsupported_opsets(tmp_path, small, opset):
    with pytest.raises(
        ConfigError,
        match=f"opset {opset} is not supported by the TorchScript exporter; use 18 to 20",
    ):
        export_onnx(small, tmp_path / "m.onnx", height=64, width=64, opset=opset)


def test_export_into_a_missing_directory_is_a_config_error(tmp_path, small):
    with pytest.raises(ConfigError, match="output directory .*nope does not exist"):
        export_onnx(small, tmp_path / "nope" / "m.onnx", height=64, width=64)


@pytest.mark.parametrize(("module", "dynamo"), [("onnx", False), ("onnxscript", True)])
def test_export_without_onnx_packages_names_the_install_command(
    monkeypatch, tmp_path, small, module, dynamo
):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(
        BackendUnavailableError, match=re.escape('pip install "dve_perception[export]"')
    ):
        export_onnx(small, tmp_path / "m.onnx", height=64, width=64, dynamo=dynamo)


def test_compare_without_onnxruntime_names_the_install_command(monkeypatch, exported):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=re.escape('"dve_perception[core]"')):
        compare_with_onnxruntime(*exported)


def test_failed_write_keeps_the_previous_file(monkeypatch, tmp_path, small):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the atomic writer renames via os.replace
    with pytest.raises(ConfigError, match="cannot write the ONNX file .*disk full"):
        export_onnx(small, path, height=32, width=32)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_compare_rejects_inputs_of_another_size(exported):
    model, path = exported
    rgb, depth = torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64)
    with pytest.raises(InputError, match="exported for 192x224"):
        compare_with_onnxruntime(model, path, rgb=rgb, depth=depth)


def test_foreign_or_broken_onnx_files_are_checkpoint_errors(tmp_path, small):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")

    with pytest.raises(CheckpointError, match="foreign.onnx has no dve_perception export metadata"):
        read_export_metadata(foreign)
    with pytest.raises(CheckpointError, match="broken.onnx is not an ONNX model"):
        read_export_metadata(broken)
    with pytest.raises(CheckpointError, match="onnxruntime cannot load .*broken.onnx"):
        compare_with_onnxruntime(small, broken)
    with pytest.raises(CheckpointError, match="missing.onnx does not exist"):
        read_export_metadata(tmp_path / "missing.onnx")


def test_metadata_round_trips_and_rejects_malformed_values():
    metadata = ExportMetadata("custom", SMALL, 480, 640, True)
    assert ExportMetadata.from_props(metadata.to_props()) == metadata

    props = metadata.to_props() | {"normalized": "yes"}
    with pytest.raises(CheckpointError, match="malformed dve_perception metadata: normalized"):
        ExportMetadata.from_props(props)
    props = metadata.to_props() | {"config": '{"n_upsamplings": 7}'}
    with pytest.raises(CheckpointError, match="malformed .* n_upsamplings must be 0, 1 or 2"):
        ExportMetadata.from_props(props)
