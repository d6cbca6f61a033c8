"""The perception pipeline and worker on a graph with fused outputs (scores, labels, publish)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.frames import RGBDFrame, scale_intrinsics, to_embedding_frame
from dve_perception.node_logic import PerceptionWorker
from dve_perception.perception.backends import make_backend
from dve_perception.perception.backends.fused_outputs import FusedOutputs
from dve_perception.perception.backends.onnx_export import export_onnx
from dve_perception.perception.backends.torch_backend import TorchBackend
from dve_perception.perception.pipeline import PerceptionPipeline, PipelineOutputs
from dve_perception.settings.node_config import PerceptionNodeConfig

SIZE = (64, 96)
NAMES = ["wall", "floor", "chair"]
K = np.array([[80.0, 0.0, 79.5], [0.0, 80.0, 59.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def model():
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer(TINY_TEST_CONFIG)
    model.load_state_dict(generate_state_dict(model, seed=3))
    return model


@pytest.fixture(scope="module")
def prototypes():
    gen = torch.Generator().manual_seed(7)
    return torch.nn.functional.normalize(torch.randn(len(NAMES), 16, generator=gen), dim=1)


@pytest.fixture(scope="module")
def pipelines(model, prototypes, tmp_path_factory):
    """The plain official export and a fused one of the same model."""
    folder = tmp_path_factory.mktemp("fused")
    with torch.no_grad():
        h, w = model(torch.zeros(1, 3, *SIZE), torch.zeros(1, 1, *SIZE)).shape[-2:]
    fused = FusedOutputs(
        normalize=True, half=True, num_classes=3, argmax=True, publish_size=(h // 2, w // 2)
    )
    export_onnx(model, folder / "plain.onnx", height=SIZE[0], width=SIZE[1])
    export_onnx(
        model,
        folder / "fused.onnx",
        height=SIZE[0],
        width=SIZE[1],
        fused=fused,
        prototypes=prototypes,
        class_names=NAMES,
    )
    plain = PerceptionPipeline(make_backend("onnxruntime", onnx_path=folder / "plain.onnx"))
    fused_pipeline = PerceptionPipeline(
        make_backend("onnxruntime", onnx_path=folder / "fused.onnx")
    )
    return plain, fused_pipeline, (int(h), int(w))


def _frame():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    return RGBDFrame(rgb, np.full((120, 160), 2.0, np.float32), K, 42, "cam")


def test_the_fused_graph_gives_unit_embeddings_scores_labels_and_a_publishable_frame(pipelines):
    plain, fused, (h, w) = pipelines
    reference = plain.run(_frame())
    out = fused.run(_frame())
    assert fused.class_names == tuple(NAMES) and plain.class_names == ()
    assert reference.scores is None and reference.publish is None
    embedding = out.embedding.embedding
    assert embedding.dtype == torch.float32 and tuple(embedding.shape) == (16, h, w)
    relative = (embedding - reference.embedding.embedding).norm() / embedding.norm()
    assert relative < 2e-3  # the fused main output is fp16
    assert tuple(out.scores.shape) == (3, h, w) and tuple(out.labels.shape) == (h, w)
    torch.testing.assert_close(out.labels.long(), out.scores.argmax(dim=0))
    publish = out.publish
    assert tuple(publish.embedding.shape) == (16, h // 2, w // 2)
    assert publish.embedding.dtype == torch.float16
    np.testing.assert_allclose(publish.K, scale_intrinsics(out.embedding.K, 0.5, 0.5))
    assert tuple(publish.depth_m.shape) == (h // 2, w // 2) and publish.stamp_ns == 42


def test_the_default_torch_pipeline_hands_the_map_channel_last_embeddings(model):
    # The map sums channel-last embeddings ~1.7x faster (bench_mapping.py section 1).
    out = PerceptionPipeline(make_backend("torch", model=copy.deepcopy(model))).run(_frame())
    embedding = out.embedding.embedding
    assert embedding.stride(0) == 1  # a (D, h, w) view of (h, w, D) memory
    nchw = TorchBackend(copy.deepcopy(model), channels_last=False)
    reference = PerceptionPipeline(nchw).run(_frame()).embedding.embedding
    assert reference.is_contiguous()
    torch.testing.assert_close(embedding, reference, rtol=1e-4, atol=1e-5)


def test_the_worker_takes_classes_and_names_from_the_graph(pipelines, prototypes):
    plain, fused, _ = pipelines
    config = PerceptionNodeConfig()
    # No prototypes and other names: the graph's vocabulary wins.
    from_graph = PerceptionWorker(fused, None, ["ignored"], config)
    assert from_graph.class_names == NAMES
    by_prototypes = PerceptionWorker(plain, prototypes, NAMES, config)
    labels = from_graph.process(_frame()).labels
    expected = by_prototypes.process(_frame()).labels
    assert labels.shape == expected.shape == (120, 160) and labels.dtype == np.uint16
    # fp16 embeddings move a few near-tied pixels; everything else must agree.
    assert (labels == expected).mean() > 0.97
    out = from_graph.process(_frame())
    assert out.publish is not None and out.labels_color.shape == (120, 160, 3)


class _LabelsOnly:
    """A graph that outputs labels without scores."""

    def __init__(self, labels: torch.Tensor, names=("a", "b")) -> None:
        self.labels, self.class_names = labels, tuple(names)

    def run(self, frame):
        embedding = torch.nn.functional.normalize(torch.ones(4, *self.labels.shape), dim=0)
        return PipelineOutputs(to_embedding_frame(frame, embedding), labels=self.labels)


def test_labels_without_scores_are_upsampled_by_nearest_neighbour():
    labels = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
    out = PerceptionWorker(_LabelsOnly(labels), None, [], PerceptionNodeConfig()).process(_frame())
    assert out.labels.shape == (120, 160)
    assert out.labels[0, 0] == 0 and out.labels[0, -1] == 1 and out.labels[-1, 0] == 1


def test_a_graph_with_more_classes_than_names_is_refused():
    labels = torch.tensor([[0, 5]], dtype=torch.int32)
    worker = PerceptionWorker(_LabelsOnly(labels), None, [], PerceptionNodeConfig())
    with pytest.raises(InputError, match="scores 6 classes but 2 class names"):
        worker.process(_frame())
