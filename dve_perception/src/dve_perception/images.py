"""Read and write the image files the pipeline uses: 8-bit RGB colour and 16-bit depth in mm.

Arrays follow the camera conventions used everywhere else in the package: colour is (H, W, 3)
uint8 in RGB order, depth is (H, W) uint16 millimetres with 0 meaning "no measurement". Pixels
are returned as stored; EXIF orientation tags are ignored so colour and depth stay registered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dve_perception.errors import InputError

__all__ = ["read_depth", "read_rgb", "write_png"]

# Pillow names for single-channel 16-bit images (native, little- and big-endian).
_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes that hold more than 8 bits per sample: reading them as colour would silently clip.
_WIDE_MODES = (*_DEPTH_MODES, "I", "F")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a colour image (PNG, JPEG, anything Pillow decodes) as RGB.

    Greyscale and palette images are expanded to three channels and an alpha channel is dropped,
    because the network takes plain RGB.

    Args:
        path: image file.

    Returns:
        (H, W, 3) uint8 array in RGB order.

    Raises:
        InputError: the file is missing, not a decodable image, or has more than 8 bits per
            sample (e.g. a depth image passed by mistake).
    """
    with _open(path, "colour") as image:
        if image.mode in _WIDE_MODES:
            raise InputError(
                f"colour image {path} has {_describe(image.mode)}; expected an 8-bit RGB image "
                "(is this the depth image?)"
            )
        return np.array(image.convert("RGB"), dtype=np.uint8)


def read_depth(path: str | Path) -> np.ndarray:
    """Read a 16-bit single-channel depth PNG in millimetres.

    Args:
        path: depth image file; 0 marks invalid pixels, as the sensor drivers write it.

    Returns:
        (H, W) uint16 array of millimetres.

    Raises:
        InputError: the file is missing, not a decodable image, or not 16-bit single-channel
            (8-bit or colour "depth" images lose range and cannot be converted back to mm).
    """
    with _open(path, "depth") as image:
        if image.mode in _DEPTH_MODES:
            return np.array(image).astype(np.uint16, copy=False)
        if image.mode == "I":
            # Older Pillow versions open 16-bit greyscale PNGs as 32-bit "I"; accept those as
            # long as the values fit, so the same file reads the same everywhere.
            values = np.array(image)
            if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
                raise InputError(
                    f"depth image {path} holds 32-bit values outside 0..65535; expected a 16-bit "
                    "PNG in millimetres"
                )
            return values.astype(np.uint16)
        raise InputError(
            f"depth image {path} has {_describe(image.mode)}; expected a 16-bit single-channel "
            "PNG in millimetres (0 = invalid)"
        )


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an image as PNG, choosing the PNG type from the array.

    Args:
        path: output file; its directory must exist.
        image: (H, W, 3) uint8 RGB, (H, W) uint8 greyscale, or (H, W) uint16 (e.g. depth in mm).

    Raises:
        InputError: the array has another shape or dtype.
        OSError: the file cannot be written.
    """
    array = np.asarray(image)
    is_rgb8 = array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    is_mono = array.dtype in (np.uint8, np.uint16) and array.ndim == 2
    if not (is_rgb8 or is_mono):
        raise InputError(
            f"cannot write an array of shape {array.shape} and dtype {array.dtype} as PNG; "
            "expected (H, W, 3) uint8 RGB, (H, W) uint8 or (H, W) uint16"
        )
    if array.size == 0:
        raise InputError(f"cannot write an empty image of shape {array.shape} as PNG")
    # Image.fromarray maps these three layouts to RGB, L and I;16 (16-bit PNG) in every Pillow
    # version we support, so no (deprecated) `mode=` argument is needed.
    Image.fromarray(np.ascontiguousarray(array)).save(Path(path), format="PNG")


def _open(path: str | Path, role: str) -> Image.Image:
    """Open and fully decode an image, turning every failure into an `InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{role} image {path} does not exist or is not a file")
    try:
        image = Image.open(path)
        # Decode now: Pillow is lazy and would otherwise report truncated files much later.
        image.load()
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as err:
        raise InputError(f"cannot read {role} image {path}: {err}") from err
    return image


def _describe(mode: str) -> str:
    """Say in words what a Pillow mode holds, for error messages."""
    descriptions = {
        "1": "1-bit pixels",
        "L": "8-bit greyscale pixels",
        "P": "8-bit palette pixels",
        "RGB": "8-bit RGB pixels",
        "RGBA": "8-bit RGBA pixels",
        "I": "32-bit integer pixels",
        "F": "32-bit float pixels",
    }
    return f"Pillow mode {mode!r} ({descriptions.get(mode, 'unsupported pixel format')})"
