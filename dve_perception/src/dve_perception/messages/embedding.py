"""Build and decode dve_perception_interfaces/EmbeddingFrame messages, without importing ROS.

Data is (h, w, D) row-major float16, always little-endian; depth is a 32FC1 image and the
camera model a CameraInfo, both at (h, w). See `messages.builders` for the `types` convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dve_perception.errors import InputError
from dve_perception.frames import EmbeddingFrame, sample_depth_at_centres, scale_intrinsics
from dve_perception.messages.builders import array_to_image, byte_buffer, check_size, make_header
from dve_perception.messages.conversions import (
    camera_info_size,
    camera_info_to_K,
    depth_to_metres,
    field_bytes,
    image_to_array,
    stamp_to_ns,
)
from dve_perception.perception.postprocess import downsample_unit_embedding

__all__ = ["embedding_frame_to_msg", "msg_to_embedding_frame"]

_EMBEDDING_DTYPE = "float16"


def embedding_frame_to_msg(
    frame: EmbeddingFrame, types: Any, size: tuple[int, int] | None = None
) -> Any:
    """Build a dve_perception_interfaces/EmbeddingFrame, optionally at a reduced size.

    Downsampling averages the embedding over each output pixel's area and re-normalises it (zero
    vectors stay zero), samples depth at output pixel centres and rescales K with the
    pixel-centre convention, so depth, K and embedding stay registered. The camera model says
    pinhole without distortion ("plumb_bob", d = 0): the network sees the image it was given,
    and the map back-projects its pixels with K alone, so the input must be rectified
    (image_rect) and that is how a subscriber must read it.

    Args:
        frame: the embeddings (D, h, w), depth (h, w) and K of one frame, on any device.
        types: the message types (`EmbeddingFrame`, `Header`, `Time`, `Image`, `CameraInfo`,
            `uint8_array`, `float64_sequence`).
        size: (height, width) to publish, at most the embedding's; None keeps it.

    Returns:
        The message: (h, w, D) row-major little-endian float16 data, 32FC1 depth in metres
        (0 = invalid), and the camera model at (h, w).

    Raises:
        InputError: a size that is not two positive integers, or larger than the embedding.
    """
    embedding, depth, K = _resized(frame, size)
    dim, height, width = (int(n) for n in embedding.shape)
    # Channel-last and half precision on the embedding's device, then one transfer.
    values = embedding.detach().permute(1, 2, 0).to(torch.float16).contiguous().cpu().numpy()
    depth_m = depth.detach().to(torch.float32).cpu().numpy()
    depth_m = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0).astype(np.float32)
    # One header per sub-message: a caller editing one must not change the others.
    headers = [make_header(types, frame.stamp_ns, frame.frame_id) for _ in range(3)]
    return types.EmbeddingFrame(
        header=headers[0],
        height=height,
        width=width,
        dim=dim,
        dtype=_EMBEDDING_DTYPE,
        is_bigendian=False,
        data=types.uint8_array(byte_buffer(values.astype("<f2", copy=False))),
        depth=array_to_image(depth_m, "32FC1", headers[1], types),
        camera_info=_camera_info(types, headers[2], K, (height, width)),
    )


def msg_to_embedding_frame(msg: Any, device: str = "cpu") -> EmbeddingFrame:
    """Decode a dve_perception_interfaces/EmbeddingFrame (the inverse of the builder above).

    Args:
        msg: the message.
        device: torch device of the returned tensors.

    Returns:
        The frame: float32 (D, h, w) embedding, float32 (h, w) depth in metres (0 = invalid),
        K from camera_info, stamp and frame id from the header, no pose.

    Raises:
        InputError: a dtype other than "float16", an empty size, data of the wrong length,
            NaN or inf embeddings, a depth image that is not a depth encoding or not (h, w),
            or a camera_info whose size is not (h, w) or whose K is not a pinhole matrix.
    """
    dtype = str(msg.dtype)
    if dtype != _EMBEDDING_DTYPE:
        raise InputError(
            f"embedding frame has dtype {dtype!r}; only {_EMBEDDING_DTYPE!r} is supported"
        )
    height, width, dim = int(msg.height), int(msg.width), int(msg.dim)
    if min(height, width, dim) <= 0:
        raise InputError(f"embedding frame is empty: height {height}, width {width}, dim {dim}")
    data = field_bytes(msg.data)
    expected = height * width * dim * 2
    if data.size != expected:
        raise InputError(
            f"embedding frame {height}x{width}x{dim} float16 needs {expected} bytes of data, got "
            f"{data.size}; the message is truncated or malformed"
        )
    values = data.view(">f2" if msg.is_bigendian else "<f2").astype(np.float16)
    depth_array, encoding = image_to_array(msg.depth)
    depth_m = depth_to_metres(depth_array, encoding)
    if depth_m.shape != (height, width):
        raise InputError(
            f"embedding frame depth is {depth_m.shape[0]}x{depth_m.shape[1]} but the embedding "
            f"is {height}x{width}; the publisher must resample depth to the embedding"
        )
    info_size = camera_info_size(msg.camera_info)
    if info_size != (height, width):
        raise InputError(
            f"embedding frame camera_info is {info_size[0]}x{info_size[1]} but the embedding is "
            f"{height}x{width}; the publisher must scale the camera model to the embedding"
        )
    K = camera_info_to_K(msg.camera_info)
    embedding = torch.from_numpy(values.reshape(height, width, dim)).to(device)
    embedding = embedding.permute(2, 0, 1).to(torch.float32).contiguous()
    if not bool(torch.isfinite(embedding).all()):
        raise InputError("embedding frame data has NaN or inf values")
    return EmbeddingFrame(
        embedding=embedding,
        depth_m=torch.from_numpy(depth_m).to(device),
        K=K,
        stamp_ns=stamp_to_ns(msg.header.stamp),
        frame_id=str(msg.header.frame_id),
    )


def _resized(
    frame: EmbeddingFrame, size: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The frame's embedding, depth and K at `size` (see `embedding_frame_to_msg`)."""
    embedding, depth, K = frame.embedding, frame.depth_m, frame.K
    height, width = (int(n) for n in embedding.shape[1:])
    if size is None:
        return embedding, depth, K
    target_h, target_w = check_size(size)
    if (target_h, target_w) == (height, width):
        return embedding, depth, K
    if target_h > height or target_w > width:
        raise InputError(
            "embedding frames are published at or below the network's output size: asked for "
            f"{target_h}x{target_w}, the embedding is {height}x{width}"
        )
    # Sizes that do not divide the embedding stay allowed here (adaptive windows); the exported
    # graph's publish output takes only dividing sizes, where both give the same vectors.
    pooled = downsample_unit_embedding(
        embedding.detach().unsqueeze(0), (target_h, target_w), allow_uneven=True
    ).squeeze(0)
    return (
        pooled,
        sample_depth_at_centres(depth, (target_h, target_w)),
        scale_intrinsics(K, target_w / width, target_h / height),
    )


def _camera_info(types: Any, header: Any, K: np.ndarray, size: tuple[int, int]) -> Any:
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return types.CameraInfo(
        header=header,
        height=int(size[0]),
        width=int(size[1]),
        distortion_model="plumb_bob",
        d=types.float64_sequence([0.0] * 5),
        k=K.reshape(9).copy(),
        r=np.eye(3).reshape(9),
        p=P.reshape(12),
    )
