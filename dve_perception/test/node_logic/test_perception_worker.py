"""The perception node's logic: messages to a checked frame, the network, the published images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.frames import RGBDFrame, to_embedding_frame
from dve_perception.messages.conversions import ns_to_stamp_fields
from dve_perception.node_logic import PerceptionWorker, frame_from_messages
from dve_perception.settings.node_config import PerceptionNodeConfig

H, W = 8, 12
K = np.array([[10.0, 0.0, 5.5], [0.0, 10.0, 3.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def types():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE).types


def _header(types, stamp_ns=1_500_000_000, frame_id="cam_optical"):
    sec, nanosec = ns_to_stamp_fields(stamp_ns)
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
    )


def _image(types, array, encoding, **header):
    array = np.ascontiguousarray(array)
    return types["sensor_msgs/msg/Image"](
        header=_header(types, **header),
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=array.strides[0],
        data=array.reshape(-1).view(np.uint8),
    )


def _info(types, size=(H, W), k=K):
    roi = types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return types["sensor_msgs/msg/CameraInfo"](
        header=_header(types),
        height=size[0],
        width=size[1],
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.asarray(k, dtype=np.float64).reshape(-1),
        r=np.eye(3).reshape(-1),
        p=np.zeros(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_messages_become_a_frame_in_rgb_order_and_metres(types):
    rgb = _rgb()
    depth_mm = np.full((H, W), 1500, dtype=np.uint16)
    depth_mm[0, 0] = 0
    color = _image(types, rgb[:, :, ::-1], "bgr8", stamp_ns=7_000_000_123)
    frame = frame_from_messages(color, _image(types, depth_mm, "16UC1"), _info(types))
    np.testing.assert_array_equal(frame.rgb, rgb)
    assert frame.depth_m[0, 0] == 0.0 and frame.depth_m[1, 1] == pytest.approx(1.5)
    np.testing.assert_allclose(frame.K, K)
    assert (frame.stamp_ns, frame.frame_id) == (7_000_000_123, "cam_optical")


def test_nan_and_inf_metric_depth_become_invalid(types):
    depth = np.full((H, W), 2.0, dtype=np.float32)
    depth[0, :3] = [np.nan, np.inf, -1.0]
    frame = frame_from_messages(
        _image(types, _rgb(), "rgb8"), _image(types, depth, "32FC1"), _info(types)
    )
    np.testing.assert_array_equal(frame.depth_m[0, :4], [0.0, 0.0, 0.0, 2.0])


def test_depth_of_another_size_is_refused_with_the_fix(types):
    depth = np.ones((H // 2, W // 2), dtype=np.uint16)
    with pytest.raises(InputError, match="register depth to colour"):
        frame_from_messages(
            _image(types, _rgb(), "rgb8"), _image(types, depth, "16UC1"), _info(types)
        )


def test_camera_info_of_another_size_is_refused(types):
    depth = np.ones((H, W), dtype=np.uint16)
    with pytest.raises(InputError, match="camera_info is for 16x24 images"):
        frame_from_messages(
            _image(types, _rgb(), "rgb8"), _image(types, depth, "16UC1"), _info(types, (16, 24))
        )


def test_an_uncalibrated_camera_info_is_refused(types):
    depth = np.ones((H, W), dtype=np.uint16)
    with pytest.raises(InputError, match="uncalibrated"):
        frame_from_messages(
            _image(types, _rgb(), "rgb8"),
            _image(types, depth, "16UC1"),
            _info(types, k=np.zeros(9)),
        )


@pytest.mark.parametrize(
    ("role", "encoding", "match"),
    [("color", "yuv422", "unsupported image encoding"), ("depth", "rgb8", "depth encoding")],
)
def test_unsupported_encodings_are_refused(types, role, encoding, match):
    color = _image(types, _rgb(), "rgb8")
    depth = _image(types, np.ones((H, W), dtype=np.uint16), "16UC1")
    if role == "color":
        color.encoding = encoding
    else:
        depth = _image(types, _rgb(), encoding)
    with pytest.raises(InputError, match=match):
        frame_from_messages(color, depth, _info(types))


def test_a_colour_image_without_frame_id_is_refused(types):
    depth = _image(types, np.ones((H, W), dtype=np.uint16), "16UC1")
    with pytest.raises(InputError, match="empty header.frame_id"):
        frame_from_messages(_image(types, _rgb(), "rgb8", frame_id=""), depth, _info(types))


class HalfPlanes:
    """A stand-in network: the left half of every frame is class 0's vector, the right class 1's."""

    def __init__(self, prototypes: torch.Tensor, out=(2, 3)) -> None:
        self.prototypes, self.out, self.calls = prototypes, out, 0

    def embed(self, frame: RGBDFrame):
        self.calls += 1
        h, w = self.out
        embedding = torch.empty(self.prototypes.shape[1], h, w)
        embedding[:, :, : w // 2 + 1] = self.prototypes[0][:, None, None]
        embedding[:, :, w // 2 + 1 :] = self.prototypes[1][:, None, None]
        return to_embedding_frame(frame, embedding)


def _frame(stamp_ns=0):
    return RGBDFrame(_rgb(), np.ones((H, W), np.float32), K, stamp_ns, "cam_optical")


def _prototypes():
    return torch.nn.functional.normalize(
        torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=1
    )


def test_process_publishes_class_ids_at_the_input_size_and_their_colours():
    prototypes = _prototypes()
    worker = PerceptionWorker(
        HalfPlanes(prototypes), prototypes, ["mug", "table"], PerceptionNodeConfig()
    )
    out = worker.process(_frame())
    assert out.labels.shape == (H, W) and out.labels.dtype == np.uint16
    assert (out.labels[:, 0] == 0).all() and (out.labels[:, -1] == 1).all()
    assert out.labels_color.shape == (H, W, 3)
    assert not np.array_equal(out.labels_color[0, 0], out.labels_color[0, -1])
    assert out.pca.shape == (2, 3, 3) and out.pca.dtype == np.uint8
    assert tuple(out.embedding.embedding.shape) == (8, 2, 3)


def test_the_pca_preview_keeps_its_colours_from_frame_to_frame():
    prototypes = _prototypes()
    worker = PerceptionWorker(
        HalfPlanes(prototypes), None, ["mug", "table"], PerceptionNodeConfig()
    )
    first = worker.process(_frame(0)).pca
    # A frame showing only the table: with the first frame's basis it keeps the table's colour
    # (a basis fitted on this frame alone would have no variance to show).
    worker.pipeline = HalfPlanes(prototypes[[1, 1]])
    second = worker.process(_frame(1)).pca
    assert not np.array_equal(first[0, 0], first[0, 2])
    assert (second == first[0, 2]).all()


def test_disabled_outputs_are_not_computed():
    prototypes = _prototypes()
    config = PerceptionNodeConfig(publish_segmentation=False, publish_previews=False)
    out = PerceptionWorker(HalfPlanes(prototypes), prototypes, ["a", "b"], config).process(_frame())
    assert out.labels is None and out.labels_color is None and out.pca is None


def test_embeddings_are_due_at_the_configured_rate_of_message_time():
    prototypes = _prototypes()
    config = PerceptionNodeConfig(embedding_rate_hz=2.0)
    worker = PerceptionWorker(HalfPlanes(prototypes), None, ["a", "b"], config)
    due = [worker.process(_frame(i * 100_000_000)).publish_embedding for i in range(12)]
    assert due == [True, False, False, False, False, True, False, False, False, False, True, False]
    off = PerceptionWorker(
        HalfPlanes(prototypes), None, ["a", "b"], PerceptionNodeConfig(publish_embedding=False)
    )
    assert not off.process(_frame()).publish_embedding


def test_prototypes_must_match_the_class_names():
    with pytest.raises(InputError, match=r"prototypes must be \(3, D\)"):
        PerceptionWorker(
            HalfPlanes(_prototypes()), _prototypes(), ["a", "b", "c"], PerceptionNodeConfig()
        )


def test_the_real_pipeline_runs_through_the_worker(tiny_model):
    from dve_perception.perception.backends import make_backend
    from dve_perception.perception.pipeline import PerceptionPipeline

    pipeline = PerceptionPipeline(make_backend("torch", model=tiny_model))
    dim = pipeline.embedding_dim
    prototypes = torch.nn.functional.normalize(torch.randn(3, dim), dim=1)
    worker = PerceptionWorker(pipeline, prototypes, ["a", "b", "c"], PerceptionNodeConfig())
    frame = RGBDFrame(
        np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8),
        np.full((48, 64), 2.0, np.float32),
        K,
        0,
        "cam",
    )
    out = worker.process(frame)
    assert out.labels.shape == (48, 64) and int(out.labels.max()) < 3
    norms = out.embedding.embedding.norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-4)
