"""Pictures of embeddings and labels for previews, debugging and documentation.

`pca_colors` shows an embedding as RGB from its first three principal components, so pixels with
similar embeddings get similar colours. `fit_pca` returns the fitted basis, which can be reused
for later frames so that colours stay consistent across a sequence. Everything here is
deterministic: no random subsampling or randomised SVD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dve_perception.errors import InputError
from dve_perception.perception.postprocess import normalize_embedding

__all__ = [
    "PcaBasis",
    "blend",
    "fit_pca",
    "heat_colors",
    "label_colors",
    "label_palette",
    "pca_colors",
]

#: Pixels used to fit the PCA; a strided subsample keeps the fit fast and deterministic.
_DEFAULT_PCA_SAMPLES = 20_000
#: Projections are scaled so these quantiles map to 0 and 255, ignoring outliers.
_LOW_QUANTILE, _HIGH_QUANTILE = 0.01, 0.99
_NORM_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class PcaBasis:
    """A fitted projection from embedding space to three colour channels.

    Attributes:
        mean: (C,) float32 mean of the fitted pixels.
        components: (C, 3) float32 principal directions, largest variance first.
        low: (3,) float32 projection mapped to 0 per channel.
        high: (3,) float32 projection mapped to 255 per channel.
        normalize: whether pixels are L2-normalised before projecting.
    """

    mean: torch.Tensor
    components: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    normalize: bool


def fit_pca(
    embedding: torch.Tensor, *, max_samples: int = _DEFAULT_PCA_SAMPLES, normalize: bool = True
) -> PcaBasis:
    """Fit the first three principal components of an embedding image.

    Args:
        embedding: (C, h, w) or (1, C, h, w) embedding, C >= 3.
        max_samples: at most this many pixels (an even stride over the image) are used.
        normalize: L2-normalise pixels first; the direction is what carries meaning, and raw
            norms would otherwise dominate the components.

    Returns:
        The basis; pass it to `pca_colors` to colour other frames the same way.

    Raises:
        InputError: wrong shape or dtype, fewer than 3 channels, or max_samples < 1.
    """
    if max_samples < 1:
        raise InputError(f"max_samples must be at least 1, got {max_samples}")
    pixels = _pixels(embedding)  # (N, C)
    step = math.ceil(pixels.shape[0] / max_samples)
    sample = normalize_embedding(pixels[::step], dim=1) if normalize else pixels[::step]
    mean = sample.mean(dim=0)
    centred = sample - mean
    # The C x C covariance is small (768 x 768) and eigh on it is deterministic, unlike
    # torch.pca_lowrank's randomised algorithm; float32 is plenty for colours.
    covariance = (centred.T @ centred) / sample.shape[0]
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    components = vectors[:, -3:].flip(-1)  # (C, 3), largest variance first
    # Eigenvectors are defined up to sign; fixing the sign of each one's largest loading keeps
    # colours from flipping between runs and between similar frames.
    largest = components.abs().argmax(dim=0)
    signs = torch.sign(components[largest, torch.arange(3, device=components.device)])
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    projected = centred @ components
    quantiles = torch.tensor([_LOW_QUANTILE, _HIGH_QUANTILE], device=projected.device)
    low, high = torch.quantile(projected, quantiles, dim=0)
    return PcaBasis(mean=mean, components=components, low=low, high=high, normalize=normalize)


def pca_colors(embedding: torch.Tensor, basis: PcaBasis | None = None) -> np.ndarray:
    """Colour an embedding image by its first three principal components.

    Args:
        embedding: (C, h, w) or (1, C, h, w) embedding.
        basis: a basis from `fit_pca`, e.g. fitted on the first frame of a sequence; None fits
            one on this embedding.

    Returns:
        (h, w, 3) uint8 RGB image.

    Raises:
        InputError: wrong shape or dtype, or a basis fitted on a different channel count.
    """
    if basis is None:
        basis = fit_pca(embedding)
    pixels = _pixels(embedding)  # (N, C), a view of the image where its layout allows
    if pixels.shape[1] != basis.mean.shape[0]:
        raise InputError(
            f"the embedding has {pixels.shape[1]} channels but the PCA basis was fitted on "
            f"{basis.mean.shape[0]}"
        )
    device = pixels.device
    components = basis.components.to(device)
    # (p / |p| - mean) @ V as (p @ V) / |p| - mean @ V: no normalised or centred (N, C) copy,
    # which at full resolution is a pass over 0.9 GB each.
    projected = pixels @ components  # (N, 3)
    if basis.normalize:
        norms = torch.linalg.vector_norm(pixels, dim=1, keepdim=True)
        projected /= norms.clamp_min(_NORM_EPS)
    projected -= basis.mean.to(device) @ components
    low, high = basis.low.to(device), basis.high.to(device)
    unit = ((projected - low) / (high - low).clamp_min(_NORM_EPS)).clamp(0.0, 1.0)
    h, w = embedding.shape[-2:]
    rgb = (unit * 255.0).round().to(torch.uint8).reshape(h, w, 3)
    return rgb.cpu().numpy()


#: Blue -> cyan -> green -> yellow -> red, evenly spaced: readable in RViz and in print.
_HEAT_STOPS = np.array(
    [[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], dtype=np.float32
)


def heat_colors(
    scores: np.ndarray | torch.Tensor, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Map scores to heat-map colours (blue = low, red = high).

    Args:
        scores: (N,) scores; NaN maps to grey.
        low: score mapped to blue; None uses the minimum finite score.
        high: score mapped to red; None uses the maximum finite score.

    Returns:
        (N, 3) uint8 RGB.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = np.isfinite(scores)
    colors = np.full((scores.shape[0], 3), 128, dtype=np.uint8)
    if not finite.any():
        return colors
    low = float(scores[finite].min()) if low is None else low
    high = float(scores[finite].max()) if high is None else high
    unit = np.clip((scores[finite] - low) / max(high - low, _NORM_EPS), 0.0, 1.0)
    position = unit * (len(_HEAT_STOPS) - 1)
    lower = np.minimum(position.astype(np.int64), len(_HEAT_STOPS) - 2)
    fraction = (position - lower)[:, None]
    mixed = (1 - fraction) * _HEAT_STOPS[lower] + fraction * _HEAT_STOPS[lower + 1]
    colors[finite] = np.round(mixed).astype(np.uint8)
    return colors


def label_palette(num_classes: int) -> np.ndarray:
    """Return distinct, deterministic colours for class indices 0..num_classes-1.

    The colours are the PASCAL VOC colour map shifted by one, so that no class is black
    (black is kept for unlabelled pixels).

    Args:
        num_classes: number of classes, at least 1.

    Returns:
        (num_classes, 3) uint8 RGB.

    Raises:
        InputError: num_classes < 1 or too large to keep colours distinct.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes >= 2**24:
        raise InputError(f"num_classes {num_classes} exceeds the 2**24 - 1 distinct RGB colours")
    ids = np.arange(1, num_classes + 1, dtype=np.int64)
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    # VOC colour map: spread the index's bits over the channels, most significant bits first,
    # which makes consecutive indices differ strongly.
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def label_colors(labels: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Colour a label image with `label_palette`.

    Args:
        labels: (H, W) or (1, H, W) integer class indices; negative values mean unlabelled and
            are drawn black.
        num_classes: number of classes the labels index into.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        InputError: wrong shape or dtype, or a label >= num_classes.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be an integer array or tensor, got {_describe(labels)}")
    if labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 2:
        raise InputError(f"labels must have shape (H, W) or (1, H, W), got {labels.shape}")
    palette = label_palette(num_classes)
    if labels.size and labels.max() >= num_classes:
        raise InputError(f"label {labels.max()} is out of range for {num_classes} classes")
    colors = palette[np.clip(labels, 0, None)]
    colors[labels < 0] = 0
    return colors


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend an overlay (e.g. label colours) onto an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        overlay: (H, W, 3) uint8 RGB of the same size.
        alpha: overlay weight in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB, round((1 - alpha) * image + alpha * overlay).

    Raises:
        InputError: shapes or dtypes differ from the above, or alpha is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    for name, array in (("image", image), ("overlay", overlay)):
        if (
            not isinstance(array, np.ndarray)
            or array.dtype != np.uint8
            or array.ndim != 3
            or array.shape[2] != 3
        ):
            raise InputError(f"{name} must be an (H, W, 3) uint8 array, got {_describe(array)}")
    if image.shape != overlay.shape:
        raise InputError(f"image {image.shape} and overlay {overlay.shape} differ in size")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * overlay.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _pixels(embedding: torch.Tensor) -> torch.Tensor:
    """Validate an embedding image and return its pixels as (h * w, C) float32."""
    if not isinstance(embedding, torch.Tensor) or not embedding.is_floating_point():
        raise InputError(f"embedding must be a floating-point tensor, got {_describe(embedding)}")
    if embedding.ndim == 4 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.ndim != 3:
        raise InputError(
            f"embedding must have shape (C, h, w) or (1, C, h, w), got {tuple(embedding.shape)}"
        )
    if embedding.shape[0] < 3 or embedding.shape[1] == 0 or embedding.shape[2] == 0:
        raise InputError(
            f"embedding needs at least 3 channels and one pixel, got {tuple(embedding.shape)}"
        )
    return embedding.detach().to(torch.float32).flatten(1).T  # (h * w, C)


def _describe(x: object) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} {x.dtype} of shape {tuple(x.shape)}"
    return type(x).__name__
