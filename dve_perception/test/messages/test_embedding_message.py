"""EmbeddingFrame messages: layout, downsampling, round trip and refusal of malformed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ros_message_checks import DISTROS, check_message, message_types

from dve_perception.errors import InputError
from dve_perception.frames import EmbeddingFrame, scale_intrinsics
from dve_perception.messages.outputs import embedding_frame_to_msg, msg_to_embedding_frame

K = np.array([[50.0, 0.0, 39.5], [0.0, 52.0, 29.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module", params=DISTROS)
def types(request):
    return message_types(request.param)


@pytest.fixture(scope="module")
def humble():
    return message_types("humble")


def _unit_embedding(dim, height, width, seed=0):
    values = torch.randn(dim, height, width, generator=torch.Generator().manual_seed(seed))
    return values / values.norm(dim=0, keepdim=True)


def _frame(embedding, depth=None, stamp_ns=7_000_000_001):
    height, width = embedding.shape[1:]
    if depth is None:
        depth = torch.linspace(0.5, 3.0, height * width).reshape(height, width)
    K_here = scale_intrinsics(K, width / 80, height / 60)
    return EmbeddingFrame(embedding, depth, K_here, stamp_ns, "camera_color_optical_frame")


def test_embedding_frames_round_trip_to_half_precision(types):
    embedding = _unit_embedding(8, 6, 10)
    depth = torch.full((6, 10), 2.0)
    depth[0, 0], depth[1, 1], depth[2, 2] = float("nan"), 0.0, -1.0
    frame = _frame(embedding, depth)
    back = msg_to_embedding_frame(check_message(types, embedding_frame_to_msg(frame, types)))
    assert back.embedding.dtype == torch.float32 and back.embedding.shape == (8, 6, 10)
    torch.testing.assert_close(back.embedding, embedding, atol=1e-3, rtol=0)
    expected_depth = depth.clone()
    expected_depth[0, 0] = expected_depth[2, 2] = 0.0
    torch.testing.assert_close(back.depth_m, expected_depth)
    np.testing.assert_allclose(back.K, frame.K)
    assert (back.stamp_ns, back.frame_id) == (frame.stamp_ns, frame.frame_id)


def test_embedding_data_is_channel_last_little_endian_float16(humble):
    embedding = _unit_embedding(4, 3, 5)
    msg = embedding_frame_to_msg(_frame(embedding), humble)
    assert (msg.height, msg.width, msg.dim, msg.dtype) == (3, 5, 4, "float16")
    assert msg.is_bigendian is False
    data = np.frombuffer(msg.data.tobytes(), dtype="<f2").reshape(3, 5, 4)
    expected = embedding.numpy().transpose(1, 2, 0).astype(np.float16)
    np.testing.assert_array_equal(data, expected)


def test_embedding_camera_info_is_the_pinhole_model_at_the_embedding_size(humble):
    frame = _frame(_unit_embedding(4, 6, 8))
    info = embedding_frame_to_msg(frame, humble).camera_info
    assert (info.height, info.width, info.distortion_model) == (6, 8, "plumb_bob")
    np.testing.assert_array_equal(info.d, np.zeros(5))
    np.testing.assert_array_equal(info.k.reshape(3, 3), frame.K)
    np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(info.p.reshape(3, 4), np.hstack([frame.K, np.zeros((3, 1))]))
    assert info.header.stamp.sec == 7 and info.header.frame_id == frame.frame_id


def _adaptive_mean(values, size):
    """Area mean with adaptive pooling windows [floor(i*n/m), ceil((i+1)*n/m)), in numpy."""
    dim, height, width = values.shape
    out = np.zeros((dim, *size))
    for i in range(size[0]):
        r0, r1 = (i * height) // size[0], -((-(i + 1) * height) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * width) // size[1], -((-(j + 1) * width) // size[1])
            out[:, i, j] = values[:, r0:r1, c0:c1].reshape(dim, -1).mean(axis=1)
    return out


@pytest.mark.parametrize(("source", "target"), [((6, 8), (3, 4)), ((5, 7), (3, 4))])
def test_downsampled_embeddings_are_area_means_renormalised(humble, source, target):
    embedding = _unit_embedding(5, *source, seed=1)
    embedding[:, : source[0] // 2 + 1, : source[1] // 2 + 1] = 0.0  # a zero area stays zero
    msg = embedding_frame_to_msg(_frame(embedding), humble, size=target)
    got = msg_to_embedding_frame(msg).embedding.numpy()
    mean = _adaptive_mean(embedding.numpy().astype(np.float64), target)
    norm = np.linalg.norm(mean, axis=0, keepdims=True)
    expected = np.where(norm > 0, mean / np.where(norm > 0, norm, 1), 0)
    assert (norm == 0).any()
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_downsampling_samples_depth_at_centres_and_scales_K_about_pixel_centres(humble):
    depth = torch.arange(48, dtype=torch.float32).reshape(6, 8) + 1
    frame = _frame(_unit_embedding(3, 6, 8), depth)
    back = msg_to_embedding_frame(embedding_frame_to_msg(frame, humble, size=(3, 4)))
    # Output pixel i covers source rows [2i, 2i + 2); its centre falls in source row 2i + 1.
    np.testing.assert_array_equal(back.depth_m.numpy(), depth.numpy()[1::2, 1::2])
    fx, fy, cx, cy = frame.K[0, 0], frame.K[1, 1], frame.K[0, 2], frame.K[1, 2]
    expected_K = [[fx / 2, 0, (cx + 0.5) / 2 - 0.5], [0, fy / 2, (cy + 0.5) / 2 - 0.5], [0, 0, 1]]
    np.testing.assert_allclose(back.K, expected_K)


def test_the_embedding_size_is_kept_when_size_matches(humble):
    embedding = _unit_embedding(3, 4, 6)
    msg = embedding_frame_to_msg(_frame(embedding), humble, size=(4, 6))
    torch.testing.assert_close(msg_to_embedding_frame(msg).embedding, embedding, atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", [(7, 8), (6, 9)])
def test_upsampling_embedding_frames_is_refused(humble, size):
    with pytest.raises(InputError, match=r"at or below the network's output size: asked for"):
        embedding_frame_to_msg(_frame(_unit_embedding(3, 6, 8)), humble, size=size)


@pytest.mark.parametrize("size", [(0, 4), (3,), (3.0, 4), "34"])
def test_invalid_embedding_sizes_are_refused(humble, size):
    with pytest.raises(InputError, match=r"size must be \(height, width\) positive integers"):
        embedding_frame_to_msg(_frame(_unit_embedding(3, 6, 8)), humble, size=size)


def test_big_endian_embedding_messages_decode_to_the_same_values(humble):
    embedding = _unit_embedding(4, 3, 5)
    msg = embedding_frame_to_msg(_frame(embedding), humble)
    values = np.frombuffer(msg.data.tobytes(), dtype="<f2")
    msg.data = np.frombuffer(values.astype(">f2").tobytes(), np.uint8)
    msg.is_bigendian = True
    torch.testing.assert_close(msg_to_embedding_frame(msg).embedding, embedding, atol=1e-3, rtol=0)


def _malformed(humble, **changes):
    msg = embedding_frame_to_msg(_frame(_unit_embedding(4, 6, 8)), humble)
    for path, value in changes.items():
        target = msg
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return msg


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"dtype": "float32"}, r"dtype 'float32'; only 'float16' is supported"),
        ({"dim": 0}, r"embedding frame is empty: height 6, width 8, dim 0"),
        ({"dim": 5}, r"6x8x5 float16 needs 480 bytes of data, got 384"),
        ({"data": np.zeros(10, np.uint8)}, r"needs 384 bytes of data, got 10"),
        ({"depth__height": 3, "depth__data": np.zeros(96, np.uint8)}, r"depth is 3x8 but the"),
        ({"depth__encoding": "mono8"}, r"unsupported depth encoding 'mono8'"),
        ({"camera_info__height": 12}, r"camera_info is 12x8 but the embedding is 6x8"),
        ({"camera_info__k": np.zeros(9)}, r"all-zero K"),
    ],
)
def test_malformed_embedding_messages_are_refused(humble, changes, pattern):
    msg = _malformed(humble, **changes)
    if "depth__encoding" in changes:  # keep the data length right for a 1-byte encoding
        msg.depth.step, msg.depth.data = 8, np.zeros(48, np.uint8)
    with pytest.raises(InputError, match=pattern):
        msg_to_embedding_frame(msg)


def test_embedding_messages_with_nan_values_are_refused(humble):
    nan_data = np.full(6 * 8 * 4, np.nan, dtype="<f2").view(np.uint8)
    with pytest.raises(InputError, match=r"embedding frame data has NaN or inf values"):
        msg_to_embedding_frame(_malformed(humble, data=nan_data))


@pytest.mark.gpu
def test_embedding_frames_on_cuda_round_trip(humble):
    embedding = _unit_embedding(8, 6, 10).cuda()
    frame = EmbeddingFrame(embedding, torch.ones(6, 10, device="cuda"), K, 1, "cam")
    msg = embedding_frame_to_msg(frame, humble, size=(3, 5))
    back = msg_to_embedding_frame(msg, device="cuda")
    assert back.embedding.is_cuda and back.depth_m.is_cuda
    norms = back.embedding.norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=2e-3, rtol=0)
