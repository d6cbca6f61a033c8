"""Turn registered camera images into DVEFormer's input tensors, as the official code does.

The official pipeline (dveformer-spec.md §5) resizes with OpenCV to 480x640 without keeping the
aspect ratio: colour with INTER_LINEAR on uint8 (so the result is rounded to whole grey levels),
depth with INTER_NEAREST. It then normalises colour with the ImageNet statistics on the 0-255
scale and depth in millimetres with the NYUv2 statistics, and sets invalid depth back to 0 after
normalising. Here the same steps run in torch, so they can run on the inference device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dve_perception.errors import ConfigError, InputError

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "NYUV2_DEPTH_MEAN_MM",
    "NYUV2_DEPTH_STD_MM",
    "NetworkInput",
    "PreprocessConfig",
    "prepare_inputs",
    "resize_depth_m",
    "to_rgb8",
]

#: NYUv2 depth statistics. The mixed model normalised all of its training data with them,
#: because the preprocessor was built from the main (first) dataset (dveformer-spec.md §5).
NYUV2_DEPTH_MEAN_MM = 2841.94941272766
NYUV2_DEPTH_STD_MM = 1417.2594281672277
#: ImageNet statistics, applied on the 0-255 scale as in the official code.
_RGB_MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
_RGB_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))
#: The encoder's total stride; network input sides must be multiples of it.
_SIZE_MULTIPLE = 32

#: ROS colour encodings: channel count and the indices of R, G and B.
COLOR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
}
#: ROS depth encodings: expected dtype and millimetres per unit.
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {
    "16UC1": ("uint16", 1.0),
    "mono16": ("uint16", 1.0),
    "32FC1": ("float32", 1000.0),
}

ImageArray = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class PreprocessConfig:
    """Network input size and depth normalisation; the defaults are the official ones."""

    height: int = field(default=480, metadata={"description": "network input height in pixels"})
    width: int = field(default=640, metadata={"description": "network input width in pixels"})
    depth_mean_mm: float = field(
        default=NYUV2_DEPTH_MEAN_MM,
        metadata={"description": "depth normalisation mean in mm (NYUv2, used in training)"},
    )
    depth_std_mm: float = field(
        default=NYUV2_DEPTH_STD_MM,
        metadata={"description": "depth normalisation standard deviation in mm"},
    )

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value % _SIZE_MULTIPLE:
                raise ConfigError(
                    f"{name} {value} is not a multiple of {_SIZE_MULTIPLE}, the network's stride; "
                    "the model was trained at 480x640"
                )
        if not math.isfinite(self.depth_mean_mm):
            raise ConfigError(f"depth_mean_mm must be finite, got {self.depth_mean_mm}")
        if not (math.isfinite(self.depth_std_mm) and self.depth_std_mm > 0):
            raise ConfigError(f"depth_std_mm must be positive and finite, got {self.depth_std_mm}")


@dataclass(frozen=True, eq=False)
class NetworkInput:
    """One preprocessed frame, plus what is needed to map outputs back to the camera image.

    Attributes:
        rgb: (1, 3, H, W) float32, ImageNet-normalised on the 0-255 scale, RGB order.
        depth: (1, 1, H, W) float32, (mm - mean) / std, invalid pixels 0.
        depth_m: (1, 1, H, W) float32 depth in metres at network resolution, invalid pixels 0.
        original_size: (height, width) of the camera images.
        network_size: (height, width) of the network input, H and W above.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    depth_m: torch.Tensor
    original_size: tuple[int, int]
    network_size: tuple[int, int]

    @property
    def scale_x(self) -> float:
        """Network pixels per original pixel along x.

        For the colour image (pixel-centre convention of the bilinear resize) the intrinsics
        become fx' = fx * scale_x and cx' = (cx + 0.5) * scale_x - 0.5. Depth was resized with
        nearest: network pixel i holds original pixel floor(i / scale_x).
        """
        return self.network_size[1] / self.original_size[1]

    @property
    def scale_y(self) -> float:
        """Network pixels per original pixel along y (see `scale_x`)."""
        return self.network_size[0] / self.original_size[0]


def prepare_inputs(
    color: ImageArray,
    depth: ImageArray,
    *,
    color_encoding: str = "rgb8",
    depth_encoding: str | None = None,
    config: PreprocessConfig | None = None,
    device: torch.device | str = "cpu",
) -> NetworkInput:
    """Resize and normalise a registered colour/depth pair for the network.

    Args:
        color: (H, W, 3) or (H, W, 4) uint8 image, numpy or torch, laid out as `color_encoding`.
        depth: (H, W) or (H, W, 1) depth registered to `color` (same size): uint16 millimetres
            ("16UC1", "mono16") or float32 metres ("32FC1"). 0, negative, NaN and inf mark
            invalid pixels.
        color_encoding: one of `COLOR_ENCODINGS` (ROS names: rgb8, bgr8, rgba8, bgra8).
        depth_encoding: one of `DEPTH_ENCODINGS`; None infers it from the dtype.
        config: network size and depth statistics; None uses the official defaults.
        device: where the resizing runs and the tensors live.

    Returns:
        The network inputs and the geometry needed to map outputs back.

    Raises:
        InputError: an image has an unknown encoding, wrong shape or dtype, is empty, or the two
            images differ in size.
    """
    config = config or PreprocessConfig()
    rgb = to_rgb8(color, color_encoding)  # (H, W, 3) uint8
    rgb = (torch.from_numpy(rgb) if isinstance(rgb, np.ndarray) else rgb).to(device)
    depth_mm = _depth_mm_tensor(depth, depth_encoding, device)  # (H, W) float32
    if tuple(depth_mm.shape) != tuple(rgb.shape[:2]):
        (h, w), (rgb_h, rgb_w) = depth_mm.shape, rgb.shape[:2]
        raise InputError(
            f"depth image is {h}x{w} but the colour image is {rgb_h}x{rgb_w}; "
            "register depth to color first (e.g. depth_image_proc/register)"
        )
    size = (config.height, config.width)
    depth_mm = _resize_nearest(depth_mm, size)[None, None]  # (1, 1, h, w)
    valid = depth_mm > 0
    depth_norm = (depth_mm - config.depth_mean_mm) / config.depth_std_mm
    return NetworkInput(
        rgb=_rgb_input(rgb, size),
        # Invalid pixels are set back to 0 after normalising, as in the official code.
        depth=torch.where(valid, depth_norm, torch.zeros_like(depth_norm)),
        depth_m=depth_mm / 1000.0,
        original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
        network_size=size,
    )


def to_rgb8(color: ImageArray, encoding: str) -> ImageArray:
    """Reorder a colour image to RGB and drop alpha, keeping its type (numpy or torch).

    Args:
        color: (H, W, 3) or (H, W, 4) uint8 image laid out as `encoding`.
        encoding: one of `COLOR_ENCODINGS`.

    Returns:
        (H, W, 3) uint8 RGB copy of the same type as `color`.

    Raises:
        InputError: unknown encoding, wrong shape or dtype, or an empty image.
    """
    if encoding not in COLOR_ENCODINGS:
        raise InputError(
            f"unsupported colour encoding {encoding!r}; expected one of {sorted(COLOR_ENCODINGS)}"
        )
    channels, order = COLOR_ENCODINGS[encoding]
    _check_array("colour", color)
    if color.ndim != 3 or color.shape[2] != channels:
        raise InputError(
            f"colour image with encoding {encoding!r} must have shape (H, W, {channels}), "
            f"got {tuple(color.shape)}"
        )
    if _dtype_name(color) != "uint8":
        raise InputError(
            f"colour image with encoding {encoding!r} must be uint8, got {_dtype_name(color)}"
        )
    _check_not_empty("colour", color)
    return color[..., list(order)]  # advanced indexing copies in numpy and torch alike


def resize_depth_m(depth_m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize depth with OpenCV's INTER_NEAREST rule, e.g. to the embedding resolution.

    Nearest keeps invalid pixels (0) invalid and never blends surfaces at depth edges. Output
    pixel i takes source pixel floor(i * src / dst), so it samples the top-left source pixel of
    its cell rather than the cell centre.

    Args:
        depth_m: (..., H, W) depth tensor (any unit and dtype, any leading dimensions).
        size: output (height, width).

    Returns:
        (..., height, width) tensor of the same dtype and device.

    Raises:
        InputError: `depth_m` has fewer than 2 dimensions or `size` is not two positive ints.
    """
    if not isinstance(depth_m, torch.Tensor) or depth_m.ndim < 2:
        raise InputError(f"depth must be a tensor of shape (..., H, W), got {_describe(depth_m)}")
    return _resize_nearest(depth_m, _check_size(size))


def _depth_mm_tensor(
    depth: ImageArray, encoding: str | None, device: torch.device | str
) -> torch.Tensor:
    """Validate a depth image and return (H, W) float32 millimetres, invalid pixels 0."""
    _check_array("depth", depth)
    dtype = _dtype_name(depth)
    if encoding is None:
        encoding = {"uint16": "16UC1", "float32": "32FC1"}.get(dtype)
        if encoding is None:
            raise InputError(
                f"cannot infer the depth encoding from dtype {dtype}; pass uint16 millimetres "
                "(16UC1) or float32 metres (32FC1)"
            )
    if encoding not in DEPTH_ENCODINGS:
        raise InputError(
            f"unsupported depth encoding {encoding!r}; expected one of {sorted(DEPTH_ENCODINGS)}"
        )
    expected_dtype, mm_per_unit = DEPTH_ENCODINGS[encoding]
    if dtype != expected_dtype:
        raise InputError(
            f"depth image with encoding {encoding!r} must be {expected_dtype}, got {dtype}"
        )
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise InputError(
            f"depth image must have shape (H, W) or (H, W, 1), got {tuple(depth.shape)}"
        )
    _check_not_empty("depth", depth)
    if isinstance(depth, np.ndarray):
        # astype copies, which also makes read-only buffers (e.g. from ROS messages) usable.
        depth_mm = torch.from_numpy(depth.astype(np.float32)).to(device)
    else:
        depth_mm = depth.to(device=device, dtype=torch.float32)
    if mm_per_unit != 1.0:
        depth_mm = depth_mm * mm_per_unit
    valid = torch.isfinite(depth_mm) & (depth_mm > 0)
    return torch.where(valid, depth_mm, torch.zeros_like(depth_mm))


def _rgb_input(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (H, W, 3) uint8 bilinearly and normalise it to (1, 3, h, w) float32."""
    x = rgb.permute(2, 0, 1)[None].to(torch.float32)  # (1, 3, H, W)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        # OpenCV resizes the uint8 image and returns uint8: the network saw whole grey levels.
        x = x.round_().clamp_(0.0, 255.0)
    mean = torch.tensor(_RGB_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_RGB_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _resize_nearest(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the last two dims with OpenCV's INTER_NEAREST index rule."""
    rows = _nearest_indices(image.shape[-2], size[0], image.device)
    cols = _nearest_indices(image.shape[-1], size[1], image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def _nearest_indices(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """Source index of each output pixel, computed exactly as OpenCV's resizeNN does.

    OpenCV takes floor(i * (1 / (dst / src))) in double precision. torch's "nearest" uses a
    float32 scale, which picks a different source pixel for some size pairs, so the table is
    built here in float64 to reproduce OpenCV bit for bit.
    """
    inverse_scale = 1.0 / (dst / src)
    index = np.floor(np.arange(dst, dtype=np.float64) * inverse_scale).astype(np.int64)
    return torch.from_numpy(np.minimum(index, src - 1)).to(device)


def _check_array(role: str, image: object) -> None:
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise InputError(
            f"{role} image must be a numpy array or torch tensor, got {_describe(image)}"
        )


def _check_not_empty(role: str, image: ImageArray) -> None:
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{role} image is empty: shape {tuple(image.shape)}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list, torch.Size))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
        or min(size) <= 0
    ):
        raise InputError(f"size must be two positive integers (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _dtype_name(image: ImageArray) -> str:
    if isinstance(image, np.ndarray):
        return image.dtype.name  # "uint16" also for big-endian data
    return str(image.dtype).removeprefix("torch.")


def _describe(value: object) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return type(value).__name__
