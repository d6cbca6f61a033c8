"""Start-up of the nodes: the network with a fallback backend, text encoder, vocabulary, map."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from dve_perception.errors import BackendUnavailableError, CheckpointError, DvePerceptionError
from dve_perception.node_logic import (
    build_map,
    build_network,
    build_text_encoder,
    class_names,
)
from dve_perception.settings.node_config import MappingNodeConfig, PerceptionNodeConfig


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.perception.backends.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(build_dveformer(TINY_TEST_CONFIG), path, height=64, width=96)
    return path


def test_the_configured_onnxruntime_backend_runs(tiny_onnx):
    config = PerceptionNodeConfig(backend="onnxruntime", onnx_path=str(tiny_onnx))
    network = build_network(config)
    assert network.backend == "onnxruntime" and "fallback_from" not in network.provenance
    assert network.pipeline.embedding_dim == 16


@pytest.fixture
def plan(tmp_path, monkeypatch):
    """A plan file on a machine without TensorRT (blocked even where it is installed)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = tmp_path / "model.plan"
    path.write_bytes(b"plan")
    return str(path)


def test_tensorrt_without_a_fallback_fails_saying_how_to_install_it(plan):
    config = PerceptionNodeConfig(backend="tensorrt", engine_path=plan)
    with pytest.raises(BackendUnavailableError, match="need the tensorrt Python module"):
        build_network(config)


def test_a_missing_plan_is_named_before_anything_else(tmp_path):
    missing = tmp_path / "none.plan"
    config = PerceptionNodeConfig(backend="tensorrt", engine_path=str(missing))
    with pytest.raises(DvePerceptionError, match="none.plan does not exist"):
        build_network(config)


def test_an_unavailable_backend_falls_back_and_records_why(plan, tiny_onnx, caplog):
    config = PerceptionNodeConfig(
        backend="tensorrt",
        engine_path=plan,
        fallback_backend="onnxruntime",
        onnx_path=str(tiny_onnx),
    )
    network = build_network(config)
    assert network.backend == "onnxruntime"
    assert network.provenance["fallback_from"].startswith("tensorrt: TensorRT engines need")
    assert "falling back to 'onnxruntime'" in caplog.text


def test_when_the_fallback_fails_too_the_error_names_both_reasons(tmp_path):
    config = PerceptionNodeConfig(backend="onnxruntime", onnx_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(DvePerceptionError, match="missing.onnx"):
        build_network(config)
    # The fallback is tried with the torch backend's own file: here a missing checkpoint.
    broken = dataclasses.replace(
        config, fallback_backend="torch", weights_path=str(tmp_path / "none.pth")
    )
    with pytest.raises(CheckpointError, match="missing.onnx.*neither can the fallback 'torch'"):
        build_network(broken)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_cuda_device_is_refused_clearly():
    with pytest.raises(BackendUnavailableError, match="torch sees no CUDA device"):
        build_network(PerceptionNodeConfig(device="cuda"))


def test_the_text_encoder_comes_from_the_configured_folder(tiny_text_model):
    encoder, provenance = build_text_encoder(
        MappingNodeConfig(text_model_path=str(tiny_text_model))
    )
    assert provenance["text_model"] == str(tiny_text_model)
    assert tuple(encoder.encode(["a chair"]).shape) == (1, 768)


def test_the_vocabulary_defaults_to_nyuv2_and_accepts_names():
    assert len(class_names(PerceptionNodeConfig())) == 40
    assert class_names(PerceptionNodeConfig(vocabulary="chair, red mug")) == ["chair", "red mug"]


def test_the_map_takes_the_networks_embedding_size():
    emap = build_map(MappingNodeConfig(), embedding_dim=16)
    assert emap.config.embedding_dim == 16 and emap.voxel_size_m == 0.05
    assert build_map(MappingNodeConfig()).config.embedding_dim == 768
