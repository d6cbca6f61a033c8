"""The ROS adapters (`dve_perception.ros`) run against a strict fake ROS (see `ros_fakes`).

The core they call is tested elsewhere; these tests catch wiring bugs: constructor and callback
signatures, parameter declarations, message construction through `ros_types.MSG`, service
responses, TF lookups and logging calls, all checked the way rclpy and friends check them.
A tiny 768-d DVEFormer exported to ONNX and a small CLIP text tower stand in for the models.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from ros_fakes import install_fake_ros

from dve_perception.settings.node_config import MappingNodeConfig, PerceptionNodeConfig
from dve_perception.settings.parameters import parameter_specs

H, W = 64, 96
K = np.array([[60.0, 0.0, 47.5], [0.0, 60.0, 31.5], [0.0, 0.0, 1.0]])
CAMERA = "camera_color_optical_frame"
DEPTH_MM = 1500
CAMERA_HEIGHT_M = 1.0
STAMP_NS = 1_700_000_000_000_000_000
RGBD_TOPICS = ("color/image", "depth/image", "color/camera_info")


@pytest.fixture(scope="module")
def onnx_768(tmp_path_factory) -> Path:
    """A tiny DVEFormer with the real 768-d embeddings, exported for onnxruntime at H x W."""
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.perception.backends.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny_768.onnx"
    model = build_dveformer(dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=768))
    export_onnx(model, path, height=H, width=W)
    return path


@pytest.fixture
def fake(monkeypatch):
    """The fake ROS, uninitialised; the core logger is restored afterwards."""
    core = logging.getLogger("dve_perception")
    saved = list(core.handlers), core.level, core.propagate
    ros = install_fake_ros(monkeypatch)
    yield ros
    ros.close()  # rclpy.ok() turns False: worker threads leave their loops
    core.handlers[:] = saved[0]
    core.setLevel(saved[1])
    core.propagate = saved[2]


@pytest.fixture
def ros(fake, onnx_768, tiny_text_model, tmp_path):
    """rclpy initialised, with the parameters a robot would pass to the nodes."""
    fake.init()
    fake.overrides.update(
        backend="onnxruntime",
        onnx_path=str(onnx_768),
        text_model_path=str(tiny_text_model),
        vocabulary="chair,table",
        map_directory=str(tmp_path),
        embedding_height=16,
        embedding_width=24,
        cloud_period_s=0.5,
    )
    return fake


def rgbd(msg, stamp_ns: int, frame_id: str = CAMERA, encoding: str = "rgb8"):
    """A colour, depth and camera_info triple built with the adapters' message classes."""
    from dve_perception.messages.outputs import array_to_image, make_header

    rgb = np.random.default_rng(stamp_ns % 997).integers(0, 256, (H, W, 3), dtype=np.uint8)
    color = array_to_image(rgb, "rgb8", make_header(msg, stamp_ns, frame_id), msg)
    color.encoding = encoding
    depth_mm = np.full((H, W), DEPTH_MM, dtype=np.uint16)
    depth = array_to_image(depth_mm, "16UC1", make_header(msg, stamp_ns, frame_id), msg)
    info = msg.CameraInfo(
        header=make_header(msg, stamp_ns, frame_id),
        height=H,
        width=W,
        distortion_model="plumb_bob",
        k=K.reshape(9).copy(),
    )
    return color, depth, info


def feed(fake, node, triple) -> None:
    for topic, message in zip(RGBD_TOPICS, triple, strict=True):
        fake.deliver(node, topic, message)


def wait_for(fake, node, condition, timeout_s: float = 15.0):
    """Poll `condition` until it is truthy; fail with the node's error logs otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out; node errors: {fake.logs(node, 'ERROR')}")


def processed(fake, node, key: str = "total") -> int:
    return int(dict_values(fake.diagnostics(node)["perception"])[key])


def dict_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def cloud_array(cloud) -> np.ndarray:
    """The (N, fields) float32 values of an unpadded cloud of float32 fields."""
    return np.frombuffer(cloud.data, dtype=np.float32).reshape(cloud.width, len(cloud.fields))


def query_until_success(fake, node, text: str = "chair"):
    def ask():
        answer = fake.call_service(node, "/query_text", text=text, top_k=3)
        return answer if answer.success else None

    return wait_for(fake, node, ask)


def test_combined_node_declares_each_parameter_once_read_only_with_overrides(ros):
    from dve_perception.ros.combined_node import CombinedNode

    node = CombinedNode()
    node.shutdown()
    perception, mapping = parameter_specs(PerceptionNodeConfig), parameter_specs(MappingNodeConfig)
    shared = {s.name for s in perception} & {s.name for s in mapping}
    assert {"models_dir", "text_model_path", "device", "warn_period_s"} <= shared
    values = ros.parameters(node)
    # rclpy's own use_sim_time and diagnostic_updater's period come on top of both configs.
    expected = {s.name for s in perception + mapping} | {
        "use_sim_time",
        "diagnostic_updater.period",
    }
    assert set(values) == expected
    ros_types = {"bool": 1, "int": 2, "double": 3, "string": 4}  # rcl_interfaces/ParameterType
    for spec in perception + mapping:
        descriptor = node.describe_parameter(spec.name)
        assert descriptor.read_only, spec.name
        assert descriptor.description == spec.description
        assert descriptor.type == ros_types[spec.type]
        assert values[spec.name] == ros.overrides.get(spec.name, spec.default), spec.name
    assert (
        values["backend"] == "onnxruntime"
        and values["map_directory"] == ros.overrides["map_directory"]
    )


def test_a_synced_rgbd_frame_is_published_fused_and_answers_a_query(ros):
    from dve_perception.messages.outputs import msg_to_embedding_frame
    from dve_perception.ros.combined_node import CombinedNode
    from dve_perception.ros.ros_types import MSG

    node = CombinedNode()
    # sensor_data QoS by default: BEST_EFFORT (2).
    assert all(ros.subscriptions(node, t)[0].qos_profile.reliability == 2 for t in RGBD_TOPICS)
    ros.send_static_transform("map", CAMERA, (0.0, 0.0, CAMERA_HEIGHT_M))
    feed(ros, node, rgbd(MSG, STAMP_NS))
    wait_for(ros, node, lambda: ros.published(node, "embedding"))  # the last one published

    seg = ros.published(node, "segmentation")[-1]
    assert (seg.height, seg.width, seg.encoding) == (H, W, "mono16")
    assert (seg.header.frame_id, seg.header.stamp.sec) == (CAMERA, STAMP_NS // 10**9)
    labels = np.frombuffer(seg.data, dtype=np.uint16)
    assert labels.size == H * W and labels.max() < 2  # two classes: chair, table
    colour = ros.published(node, "segmentation/color")[-1]
    assert (colour.height, colour.width, colour.encoding) == (H, W, "rgb8")
    assert ros.published(node, "embedding/pca")[-1].encoding == "rgb8"
    frame = msg_to_embedding_frame(ros.published(node, "embedding")[-1])
    assert tuple(frame.embedding.shape) == (768, 16, 24) and frame.stamp_ns == STAMP_NS

    answer = query_until_success(ros, node)
    # Canonical negatives ("object", "things", ...) make the default score relevancy.
    assert answer.score_name == "relevancy" and len(answer.matches) <= 3
    assert [f.name for f in answer.cloud.fields] == ["x", "y", "z", "score"]
    points = cloud_array(answer.cloud)
    assert answer.cloud.width > 0 and answer.cloud.header.frame_id == "map"
    # Identity rotation, camera 1 m up its optical axis: every voxel lies at 1 m + the depth.
    np.testing.assert_allclose(points[:, 2], CAMERA_HEIGHT_M + DEPTH_MM / 1000, atol=0.05)
    assert ros.published(node, "query/heatmap")[-1].width == answer.cloud.width
    markers = ros.published(node, "query/markers")[-1].markers
    assert markers[0].action == 3 and len(markers) == 1 + 2 * len(answer.matches)  # DELETEALL
    [buffer] = ros.buffers
    assert ("map", CAMERA, STAMP_NS, 100_000_000) in buffer.lookups  # at the frame's stamp

    wait_for(ros, node, lambda: processed(ros, node) == 1)  # counted after the fusion
    status = ros.diagnostics(node)
    assert status["perception"].level == b"\x00" and "Hz" in status["perception"].message
    assert status["mapping"].level == b"\x00" and "voxels" in status["mapping"].message
    assert dict_values(status["mapping"])["fused"] == "1"
    node.shutdown()


def test_perception_node_publishes_embeddings_that_the_mapping_node_fuses(ros):
    from dve_perception.messages.outputs import msg_to_embedding_frame
    from dve_perception.ros.mapping_node import MappingNode
    from dve_perception.ros.perception_node import PerceptionNode
    from dve_perception.ros.ros_types import MSG

    ros.overrides.update(embedding_rate_hz=0.0, input_qos="reliable", qos_depth=3)
    perception = PerceptionNode()
    for topic in RGBD_TOPICS:
        [sub] = ros.subscriptions(perception, topic)
        qos = sub.qos_profile
        assert (qos.reliability, qos.history, qos.depth) == (1, 1, 3)  # RELIABLE, KEEP_LAST
    feed(ros, perception, rgbd(MSG, STAMP_NS))
    [msg] = wait_for(ros, perception, lambda: ros.published(perception, "embedding"))
    perception.shutdown()
    frame = msg_to_embedding_frame(msg)
    assert tuple(frame.embedding.shape) == (768, 16, 24)
    assert tuple(frame.depth_m.shape) == (16, 24) and frame.frame_id == CAMERA
    np.testing.assert_allclose(frame.embedding.norm(dim=0).numpy(), 1.0, atol=1e-2)

    mapping = MappingNode()
    assert "embedding" not in ros.topics(mapping)
    ros.send_static_transform("map", CAMERA, (0.0, 0.0, CAMERA_HEIGHT_M))
    ros.deliver(mapping, "embedding", msg)
    answer = query_until_success(ros, mapping)
    np.testing.assert_allclose(
        cloud_array(answer.cloud)[:, 2], CAMERA_HEIGHT_M + DEPTH_MM / 1000, atol=0.05
    )
    msg.dtype = "float32"  # a malformed frame is rejected with a warning, twice: one warning
    ros.deliver(mapping, "embedding", msg)
    ros.deliver(mapping, "embedding", msg)
    assert len([m for m in ros.logs(mapping, "WARN") if "rejected" in m]) == 1
    mapping.shutdown()


def test_a_fused_export_publishes_its_own_downsampled_embedding_and_labels(
    ros, tmp_path, monkeypatch
):
    import torch

    from dve_perception.messages import embedding as msg_embedding
    from dve_perception.messages.outputs import msg_to_embedding_frame
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.perception.backends.fused_outputs import FusedOutputs
    from dve_perception.perception.backends.onnx_export import export_onnx
    from dve_perception.ros.perception_node import PerceptionNode
    from dve_perception.ros.ros_types import MSG

    path = tmp_path / "fused.onnx"
    model = build_dveformer(dataclasses.replace(TINY_TEST_CONFIG, embedding_dim=768))
    fused = FusedOutputs(
        normalize=True, half=True, num_classes=2, argmax=True, publish_size=(8, 12)
    )
    prototypes = torch.nn.functional.normalize(torch.randn(2, 768), dim=1)
    export_onnx(
        model,
        path,
        height=H,
        width=W,
        fused=fused,
        prototypes=prototypes,
        class_names=["wall", "floor"],
    )

    def must_not_downsample(*args, **kwargs):
        raise AssertionError("the node downsampled although the graph had done it")

    monkeypatch.setattr(msg_embedding, "downsample_unit_embedding", must_not_downsample)
    ros.overrides.update(
        onnx_path=str(path), embedding_rate_hz=0.0, embedding_height=8, embedding_width=12
    )
    perception = PerceptionNode()
    feed(ros, perception, rgbd(MSG, STAMP_NS))
    [msg] = wait_for(ros, perception, lambda: ros.published(perception, "embedding"))
    [labels] = wait_for(ros, perception, lambda: ros.published(perception, "segmentation"))
    perception.shutdown()
    frame = msg_to_embedding_frame(msg)
    assert tuple(frame.embedding.shape) == (768, 8, 12)
    np.testing.assert_allclose(frame.embedding.norm(dim=0).numpy(), 1.0, atol=1e-2)
    values = np.frombuffer(bytes(labels.data), dtype=np.uint16)
    assert (labels.height, labels.width) == (H, W) and values.max() < 2


def test_the_fakes_refuse_calls_that_rclpy_refuses(ros):
    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException, ParameterAlreadyDeclaredException
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

    from dve_perception.ros.ros_types import MSG

    node = Node("strict")
    publisher = node.create_publisher(MSG.Image, "image", 1)
    with pytest.raises(TypeError, match="Expected Image"):
        publisher.publish(MSG.CameraInfo())
    with pytest.raises(AssertionError, match="Image.height"):
        MSG.Image(height=np.uint32(4))  # rclpy wants a Python int
    with pytest.raises(AssertionError, match="CameraInfo.d"):
        MSG.CameraInfo(d=np.zeros(5))  # a numpy array is no sequence to rclpy
    with pytest.raises(TypeError, match="recognized logging options"):
        node.get_logger().info("x", exc_info=True)
    with pytest.raises(TypeError):
        node.create_timer(1.0, lambda: None, autostart=True)  # Jazzy only
    with pytest.raises(AssertionError, match="Invalid arguments"):
        QoSProfile(depth=1, durabilty=1)
    node.declare_parameter("rate", 1.0)
    with pytest.raises(ParameterAlreadyDeclaredException, match="rate"):
        node.declare_parameter("rate", 2.0)
    ros.overrides["count"] = 1.5
    node = Node("overridden")
    with pytest.raises(InvalidParameterTypeException, match="count"):
        node.declare_parameter("count", 3)  # a double override for an int parameter
    log = node.get_logger()
    with pytest.raises(ValueError, match="severity cannot be changed"):
        for ok in (True, False):  # one call site, two severities
            (log.info if ok else log.error)("message")
    assert rclpy.ok()
