"""Fused outputs: the choice is validated, the graph computes exactly what the core functions do,
and an exported fused graph gives the same outputs in onnxruntime as in PyTorch.

Tolerances (onnxruntime vs PyTorch, CPU): fp32 outputs relative L2 < 1e-5 (measured ~1e-7 on the
tiny model), fp16 outputs < 2e-3 (fp16 rounding of unit-vector components alone is ~1e-4), and
labels identical wherever PyTorch's two best scores differ by more than 1e-4.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dve_perception.errors import ConfigError
from dve_perception.model import build_dveformer
from dve_perception.model.dveformer import TINY_TEST_CONFIG
from dve_perception.model.generated_weights import generate_state_dict
from dve_perception.perception.backends.fused_outputs import (
    ALL_OUTPUT_NAMES,
    LABELS_OUTPUT,
    OUTPUT_NAME,
    PUBLISH_OUTPUT,
    SCORES_OUTPUT,
    FusedGraph,
    FusedOutputs,
    check_publish_size,
)
from dve_perception.perception.backends.onnx_export import (
    LABEL_MARGIN,
    compare_with_onnxruntime,
    comparison_tolerance,
    export_onnx,
    read_export_metadata,
)
from dve_perception.perception.postprocess import (
    class_scores,
    downsample_unit_embedding,
    normalize_embedding,
)

SIZE = (64, 96)
K = 5
PUBLISH = (16, 24)
ALL = FusedOutputs(normalize=True, half=True, num_classes=K, argmax=True, publish_size=PUBLISH)


@pytest.fixture(scope="module")
def model():
    model = build_dveformer(dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=16))
    model.load_state_dict(generate_state_dict(model, seed=3))
    return model


@pytest.fixture(scope="module")
def prototypes():
    return torch.randn(K, 16, generator=torch.Generator().manual_seed(11))


def _inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, *SIZE, generator=gen)
    return rgb, torch.randn(batch, 1, *SIZE, generator=gen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(half=True), r"half \(--half\) needs normalize \(--normalize\)"),
        (dict(argmax=True), r"argmax \(--argmax\) needs class prototypes"),
        (dict(num_classes=-1), "num_classes must be an integer >= 0, got -1"),
        (dict(num_classes=2.0), "num_classes must be an integer >= 0, got 2.0"),
        (dict(normalize=1), "normalize must be True or False, got 1"),
        (dict(publish_size=(0, 4)), r"publish_size must be \(height, width\) positive integers"),
        (dict(publish_size=(4,)), r"publish_size must be \(height, width\) positive"),
        (dict(publish_size="4x4"), r"publish_size must be \(height, width\) positive"),
    ],
)
def test_inconsistent_fused_choices_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FusedOutputs(**kwargs)


def test_outputs_come_in_a_fixed_order_with_fixed_names_and_dtypes():
    assert FusedOutputs().output_names == (OUTPUT_NAME,)
    assert FusedOutputs(normalize=True).is_official
    assert not FusedOutputs(normalize=True, half=True).is_official
    assert (
        ALL.output_names
        == ALL_OUTPUT_NAMES
        == (
            "dense_visual_embedding_decoder_0",
            "class_scores",
            "class_labels",
            "embedding_publish",
        )
    )
    assert FusedOutputs(publish_size=[2, 3], num_classes=1).output_names == (
        OUTPUT_NAME,
        SCORES_OUTPUT,
        PUBLISH_OUTPUT,
    )
    assert FusedOutputs(publish_size=[2, 3]).publish_size == (2, 3)  # lists become tuples
    assert ALL.output_dtypes == {
        OUTPUT_NAME: torch.float16,
        SCORES_OUTPUT: torch.float32,
        LABELS_OUTPUT: torch.int32,
        PUBLISH_OUTPUT: torch.float16,
    }


def test_fused_graph_computes_what_the_core_functions_compute(model, prototypes):
    rgb, depth = _inputs()
    with torch.no_grad():
        raw = model(rgb, depth)
        main, scores, labels, publish = FusedGraph(model, ALL, prototypes)(rgb, depth)
        (raw_again,) = FusedGraph(model, FusedOutputs(), None)(rgb, depth)

    assert torch.equal(raw_again, raw)  # the official output is the network's, untouched
    unit = normalize_embedding(raw)
    assert main.dtype == torch.float16
    torch.testing.assert_close(main, unit.half(), rtol=0, atol=1e-3)
    expected_scores = class_scores(raw, prototypes)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-6)
    assert labels.dtype == torch.int32 and labels.shape == (2, *SIZE)
    assert torch.equal(labels.long(), expected_scores.argmax(dim=1))
    assert publish.dtype == torch.float16 and publish.shape == (2, 16, *PUBLISH)
    torch.testing.assert_close(
        publish.float(), downsample_unit_embedding(unit, PUBLISH), atol=1e-3, rtol=0
    )


def test_heads_run_in_fp32_whatever_the_network_precision(model, prototypes):
    graph = FusedGraph(model, dataclasses.replace(ALL, half=False), prototypes)
    raw = torch.randn(1, 16, 32, 48, generator=torch.Generator().manual_seed(2)).half()
    main, scores, labels, publish = graph.heads(raw)
    assert (main.dtype, scores.dtype) == (torch.float32, torch.float32)
    torch.testing.assert_close(scores, class_scores(raw.float(), prototypes))
    norms = torch.linalg.vector_norm(publish.float(), dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=2e-3, rtol=0)


def test_linear_probing_shaped_prototypes_are_accepted(model, prototypes):
    fused = FusedOutputs(num_classes=K)
    rgb, depth = _inputs(batch=1)
    with torch.no_grad():
        flat = FusedGraph(model, fused, prototypes)(rgb, depth)
        conv = FusedGraph(model, fused, prototypes[:, :, None, None])(rgb, depth)
    assert torch.equal(flat[1], conv[1])


@pytest.mark.parametrize(
    ("fused", "protos", "message"),
    [
        (FusedOutputs(num_classes=K), None, "num_classes is 5 but no prototypes were given"),
        (FusedOutputs(), torch.zeros(K, 16), "prototypes were given but no class outputs"),
        (FusedOutputs(num_classes=K), torch.zeros(K, 8), r"must have shape \(5, 16\).*\(5, 8\)"),
        (FusedOutputs(num_classes=K), torch.zeros(4, 16), r"must have shape \(5, 16\).*\(4, 16\)"),
        (FusedOutputs(num_classes=K), torch.zeros(K, 16, dtype=torch.int64), "torch.int64"),
        (FusedOutputs(num_classes=K), [[0.0] * 16] * K, "floating-point tensor, got list"),
    ],
)
def test_fused_graph_checks_its_prototypes(model, fused, protos, message):
    with pytest.raises(ConfigError, match=message):
        FusedGraph(model, fused, protos)


def test_publish_size_must_divide_the_embedding():
    check_publish_size((30, 40), (120, 160))
    check_publish_size((120, 160), (120, 160))
    message = "publish size 7x9 must divide the 120x160 embedding .* use e.g. 60x80 or 30x40"
    with pytest.raises(ConfigError, match=message):
        check_publish_size((7, 9), (120, 160))
    with pytest.raises(ConfigError, match="publish size 240x160 must divide"):
        check_publish_size((240, 160), (120, 160))


@pytest.fixture(scope="module")
def exported(model, prototypes, tmp_path_factory):
    path = tmp_path_factory.mktemp("fused") / "fused.onnx"
    metadata = export_onnx(
        model,
        path,
        height=SIZE[0],
        width=SIZE[1],
        fused=ALL,
        prototypes=prototypes,
        class_names=[f"class {i}" for i in range(K)],
    )
    return path, metadata


def _relative(actual: np.ndarray, expected: torch.Tensor) -> float:
    reference = expected.double().numpy()
    return float(np.linalg.norm(actual.astype(np.float64) - reference) / np.linalg.norm(reference))


def test_exported_fused_graph_matches_torch_for_every_output(model, prototypes, exported):
    path, _ = exported
    rgb, depth = _inputs(batch=2, seed=4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = dict(
        zip(
            ALL.output_names,
            session.run(None, {"rgb": rgb.numpy(), "depth": depth.numpy()}),
            strict=True,
        )
    )
    with torch.no_grad():
        raw = model(rgb, depth)
    unit = normalize_embedding(raw)
    scores = class_scores(raw, prototypes)

    assert actual[OUTPUT_NAME].dtype == np.float16
    assert _relative(actual[OUTPUT_NAME], unit) < 2e-3
    assert actual[SCORES_OUTPUT].dtype == np.float32
    assert _relative(actual[SCORES_OUTPUT], scores) < 1e-5
    top2 = scores.topk(2, dim=1).values
    clear = ((top2[:, 0] - top2[:, 1]) > 1e-4).numpy()
    assert clear.mean() > 0.9  # the comparison below covers most pixels
    assert actual[LABELS_OUTPUT].dtype == np.int32
    np.testing.assert_array_equal(actual[LABELS_OUTPUT][clear], scores.argmax(1).numpy()[clear])
    # Independent of the shared downsampler: block means of 4x4 areas, re-normalised.
    blocks = unit.reshape(2, 16, PUBLISH[0], 4, PUBLISH[1], 4).mean(dim=(3, 5))
    expected_publish = blocks / blocks.norm(dim=1, keepdim=True)
    assert actual[PUBLISH_OUTPUT].dtype == np.float16
    assert actual[PUBLISH_OUTPUT].shape == (2, 16, *PUBLISH)
    assert _relative(actual[PUBLISH_OUTPUT], expected_publish) < 2e-3


def test_every_fused_output_has_a_dynamic_batch_and_its_dtype(exported):
    path, _ = exported
    proto = onnx.load(str(path))
    outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert list(outputs) == list(ALL.output_names)
    assert {name: t.shape.dim[0].dim_param for name, t in outputs.items()} == dict.fromkeys(
        ALL.output_names, "batch_size"
    )
    elem = {name: t.elem_type for name, t in outputs.items()}
    P = onnx.TensorProto
    assert elem == {
        OUTPUT_NAME: P.FLOAT16,
        SCORES_OUTPUT: P.FLOAT,
        LABELS_OUTPUT: P.INT32,
        PUBLISH_OUTPUT: P.FLOAT16,
    }


def test_the_fused_configuration_is_stored_in_the_metadata(exported):
    path, metadata = exported
    assert read_export_metadata(path) == metadata
    assert metadata.fused == ALL
    assert metadata.output_names == ALL.output_names
    assert metadata.class_names == tuple(f"class {i}" for i in range(K))
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["outputs"] == (
        '["dense_visual_embedding_decoder_0", "class_scores", "class_labels", "embedding_publish"]'
    )
    assert (props["half"], props["argmax"], props["num_classes"]) == ("true", "true", "5")
    assert (props["publish_size"], props["normalized"]) == ("16x24", "true")
    assert props["class_names"] == '["class 0", "class 1", "class 2", "class 3", "class 4"]'


def test_compare_with_onnxruntime_checks_every_output(model, prototypes, exported):
    path, metadata = exported
    errors = compare_with_onnxruntime(model, path, batch_size=2, prototypes=prototypes)
    assert list(errors) == list(ALL.output_names)
    for name, error in errors.items():
        assert error <= comparison_tolerance(name, metadata.fused), name
    assert errors[LABELS_OUTPUT] == 0.0
    assert errors[SCORES_OUTPUT] < 1e-5
    assert LABEL_MARGIN == 1e-4

    with pytest.raises(ConfigError, match="num_classes is 5 but no prototypes were given"):
        compare_with_onnxruntime(model, path)


def test_label_comparison_ignores_close_calls_only(model, prototypes, exported, monkeypatch):
    """Swap the two best classes of torch's scores: a clear pixel must count as a mismatch."""
    path, _ = exported
    real_heads = FusedGraph.heads

    def swapped(self, raw):
        outputs = list(real_heads(self, raw))
        outputs[2] = torch.where(outputs[2] == 0, 1, torch.where(outputs[2] == 1, 0, outputs[2]))
        return tuple(outputs)

    monkeypatch.setattr(FusedGraph, "heads", swapped)
    errors = compare_with_onnxruntime(model, path, prototypes=prototypes)
    assert errors[LABELS_OUTPUT] > 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(fused=FusedOutputs(publish_size=(7, 9))), "publish size 7x9 must divide the 64x96"),
        (
            dict(normalize=True, fused=FusedOutputs()),
            re.escape("normalize=True contradicts fused.normalize=False"),
        ),
        (dict(class_names=["a"]), "class_names must be 0 strings"),
        (
            dict(fused=FusedOutputs(num_classes=2), prototypes=torch.ones(2, 16), class_names="ab"),
            "class_names must be 2 strings",
        ),
        (dict(prototypes=torch.ones(2, 16)), "prototypes were given but no class outputs"),
    ],
)
def test_export_rejects_bad_fused_choices_before_writing(model, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export_onnx(model, tmp_path / "m.onnx", height=SIZE[0], width=SIZE[1], **kwargs)
    assert not list(tmp_path.iterdir())


def test_metadata_of_fused_exports_round_trips_and_old_files_read_as_official():
    from dve_perception.perception.backends.export_metadata import ExportMetadata

    fused_meta = ExportMetadata.create("custom", TINY_TEST_CONFIG, 64, 96, ALL, ("a",) * K)
    assert ExportMetadata.from_props(fused_meta.to_props()) == fused_meta

    official = ExportMetadata("custom", TINY_TEST_CONFIG, 64, 96, True)
    props = official.to_props()
    assert not {"outputs", "half", "num_classes", "publish_size", "class_names"} & set(props)
    old = ExportMetadata.from_props(props)  # a file written before fused outputs existed
    assert old.fused == FusedOutputs(normalize=True)
    assert (old.output_names, old.class_names) == ((OUTPUT_NAME,), ())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"half": "yes"}, "half is 'yes', not true/false"),
        ({"num_classes": "many"}, "invalid literal"),
        ({"publish_size": "16by24"}, "publish_size is '16by24', not HxW"),
        ({"class_names": '"a"'}, "class_names is '\"a\"', not a JSON list"),
        ({"class_names": '["a"]'}, "class_names must be 5 strings"),
        ({"argmax": "true", "num_classes": "0"}, r"argmax \(--argmax\) needs class prototypes"),
        ({"outputs": '["dense_visual_embedding_decoder_0"]'}, "disagree with the fused config"),
    ],
)
def test_malformed_fused_metadata_is_a_checkpoint_error(changes, message):
    from dve_perception.errors import CheckpointError
    from dve_perception.perception.backends.export_metadata import ExportMetadata

    props = ExportMetadata.create("custom", TINY_TEST_CONFIG, 64, 96, ALL).to_props()
    with pytest.raises(CheckpointError, match="malformed dve_perception metadata: .*" + message):
        ExportMetadata.from_props(props | changes)
