"""Synthetic dense embeddings: per-label prototypes, smooth spatial variation and pixel noise.

Real dense CLIP features of one object are not constant: they drift smoothly across the surface
and that drift spreads over many dimensions with a decaying (power-law) spectrum, neither
low-rank nor isotropic. `SmoothFeatureField` mimics this with random Fourier features of the
world position, so the same surface point gets the same variation from every viewpoint, as a
map fusing several frames expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from dve_perception.errors import InputError
from dve_perception.simulation.synthetic_scene import RenderedFrame, SyntheticScene

__all__ = ["SmoothFeatureField", "make_embeddings"]

#: Norms below this count as zero when normalising, so a zero vector cannot become NaN.
_NORM_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class SmoothFeatureField:
    """A deterministic, spatially smooth feature variation f: R^3 -> R^dim.

    f(p) = amplitude * mixing @ phi(p), with random Fourier features
    phi(p) = sqrt(2 / F) cos(frequencies_per_m @ p + phases_rad), which approximate a Gaussian
    kernel, so f is smooth in space and decorrelates over about the length scale. Build one with
    `SmoothFeatureField.random`.

    Attributes:
        frequencies_per_m: (F, 3) float64 angular frequencies in rad/m (world frame).
        phases_rad: (F,) float64 phases.
        mixing: (dim, F) float64 mixing matrix, orthogonal columns with decaying norms.
        amplitude: overall scale (>= 0); E||f(p)||^2 = amplitude^2 for a `random` field.
    """

    frequencies_per_m: np.ndarray
    phases_rad: np.ndarray
    mixing: np.ndarray
    amplitude: float

    def __post_init__(self) -> None:
        freqs = np.array(self.frequencies_per_m, dtype=np.float64)
        phases = np.array(self.phases_rad, dtype=np.float64)
        mixing = np.array(self.mixing, dtype=np.float64)
        if freqs.ndim != 2 or freqs.shape[1] != 3 or freqs.shape[0] < 1:
            raise InputError(f"frequencies_per_m must be (F, 3) with F >= 1, got {freqs.shape}")
        num_features = freqs.shape[0]
        if phases.shape != (num_features,) or mixing.ndim != 2 or mixing.shape[1] != num_features:
            raise InputError(
                f"phases_rad must be ({num_features},) and mixing (dim, {num_features}); got "
                f"{phases.shape} and {mixing.shape}"
            )
        if not isinstance(self.amplitude, Real) or not 0.0 <= self.amplitude < math.inf:
            raise InputError(f"amplitude must be a finite number >= 0, got {self.amplitude!r}")
        for array in (freqs, phases, mixing):
            array.flags.writeable = False
        object.__setattr__(self, "frequencies_per_m", freqs)
        object.__setattr__(self, "phases_rad", phases)
        object.__setattr__(self, "mixing", mixing)
        object.__setattr__(self, "amplitude", float(self.amplitude))

    @classmethod
    def random(
        cls,
        dim: int = 768,
        amplitude: float = 0.5,
        length_scale_m: float = 0.5,
        num_features: int = 64,
        spectrum_exponent: float = 1.0,
        seed: int = 0,
    ) -> SmoothFeatureField:
        """A seeded random field with a power-law spectrum across dimensions.

        The mixing columns are random orthonormal directions q_i scaled by s_i with
        s_i^2 proportional to i^-spectrum_exponent (i = 1..F), so the spatial variance of f along
        q_i decays like i^-spectrum_exponent; the s_i are normalised so that
        E||f(p)||^2 = amplitude^2 (expectation over space).

        Args:
            dim: output dimension D.
            amplitude: root-mean-square norm of f relative to a unit prototype (>= 0).
            length_scale_m: Gaussian-kernel length scale in metres: points much closer than this
                get nearly equal features, points several length scales apart independent ones.
            num_features: number F of Fourier features (1 <= F <= dim).
            spectrum_exponent: power-law exponent of the variance spectrum (>= 0; 0 = isotropic
                within the F-dimensional span).
            seed: the same seed gives the same field.

        Returns:
            The field.
        """
        for name, value in (("dim", dim), ("num_features", num_features)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if num_features > dim:
            raise InputError(
                f"num_features ({num_features}) must not exceed dim ({dim}): the mixing columns "
                "are orthonormal directions in R^dim"
            )
        if not isinstance(length_scale_m, Real) or not 0.0 < length_scale_m < math.inf:
            raise InputError(f"length_scale_m must be a positive number, got {length_scale_m!r}")
        if not isinstance(spectrum_exponent, Real) or not 0.0 <= spectrum_exponent < math.inf:
            raise InputError(f"spectrum_exponent must be >= 0, got {spectrum_exponent!r}")
        rng = np.random.default_rng(seed)
        # Frequencies ~ N(0, 1 / l^2) give the kernel exp(-|p - q|^2 / (2 l^2)).
        freqs = rng.standard_normal((num_features, 3)) / length_scale_m
        phases = rng.uniform(0.0, 2.0 * math.pi, num_features)
        directions, _ = np.linalg.qr(rng.standard_normal((dim, num_features)))
        scales = np.arange(1, num_features + 1, dtype=np.float64) ** (-spectrum_exponent / 2.0)
        # E[phi_i^2] = 1 / F, so sum(s_i^2) = F makes E||mixing @ phi||^2 = 1.
        scales *= math.sqrt(num_features / float(np.sum(scales**2)))
        return cls(freqs, phases, directions * scales, amplitude)

    @property
    def dim(self) -> int:
        """Output dimension D."""
        return int(self.mixing.shape[0])

    def __call__(self, points_world: np.ndarray) -> np.ndarray:
        """Evaluate the field.

        Args:
            points_world: (..., 3) positions in the world frame, metres.

        Returns:
            (..., dim) float32 feature variation.
        """
        points = np.asarray(points_world, dtype=np.float64)
        if points.ndim < 1 or points.shape[-1] != 3:
            raise InputError(f"points_world must have shape (..., 3), got {points.shape}")
        num_features = self.frequencies_per_m.shape[0]
        # Phases in float64: positions times frequencies of ~10 rad/m would lose digits in float32.
        phi = np.cos(points @ self.frequencies_per_m.T + self.phases_rad)
        weights = (self.amplitude * math.sqrt(2.0 / num_features)) * self.mixing.T
        return phi.astype(np.float32) @ weights.astype(np.float32)


def make_embeddings(
    frame: RenderedFrame,
    scene: SyntheticScene,
    *,
    pixel_noise_std: float = 0.0,
    field: SmoothFeatureField | None = None,
    rng: np.random.Generator | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Per-pixel unit embeddings of a rendered frame, like a dense CLIP-aligned network output.

    Each hit pixel gets normalize(prototypes[label] + field(p_world) + noise). The noise is iid
    Gaussian with per-component std pixel_noise_std / sqrt(D), so its expected norm squared is
    pixel_noise_std^2: `pixel_noise_std` is relative to the unit prototype (1.0 = noise as large as
    the signal). Pixels without a hit are zero.

    Args:
        frame: the rendered frame.
        scene: the scene it was rendered from (for the prototypes).
        pixel_noise_std: noise norm relative to a unit vector (>= 0).
        field: smooth spatial variation evaluated at the exact hit points; None for none.
        rng: generator for the noise; required when pixel_noise_std > 0 so every frame's noise is
            an explicit choice (a hidden fixed seed would repeat the same noise in every frame).
            Only hit pixels draw noise, in row-major order.
        channels_last: if True, the result is a (D, h, w) view of a contiguous (h, w, D) array
            (`result.transpose(1, 2, 0)` is that array, free of copies); values are identical.

    Returns:
        (D, h, w) float32 embeddings, unit-norm where hit and 0 elsewhere; C-contiguous unless
        `channels_last`.

    Raises:
        InputError: bad noise settings, a field of the wrong dimension, or labels that do not fit
            the scene.
    """
    if not isinstance(frame, RenderedFrame):
        raise InputError(f"frame must be a RenderedFrame, got {type(frame).__name__}")
    dim = scene.embedding_dim
    if not isinstance(pixel_noise_std, Real) or not 0.0 <= pixel_noise_std < math.inf:
        raise InputError(f"pixel_noise_std must be a finite number >= 0, got {pixel_noise_std!r}")
    if pixel_noise_std > 0.0 and rng is None:
        raise InputError(
            "pixel_noise_std > 0 needs rng, e.g. rng=np.random.default_rng(seed), so the noise "
            "of each frame is reproducible and not silently identical across frames"
        )
    if field is not None and field.dim != dim:
        raise InputError(f"field has dim {field.dim} but the scene prototypes have dim {dim}")
    labels = frame.labels
    if labels.size and labels.max() >= len(scene.prototypes):
        raise InputError(
            f"frame has label {labels.max()} but the scene has only {len(scene.prototypes)} labels"
        )
    height, width = labels.shape
    hit = np.flatnonzero(labels.ravel() >= 0)
    embeddings = scene.prototypes[labels.ravel()[hit]]  # fancy indexing copies: safe to modify
    if field is not None:
        embeddings += field(frame.points_world.reshape(-1, 3)[hit])
    if pixel_noise_std > 0.0:
        noise = rng.standard_normal(embeddings.shape, dtype=np.float32)
        embeddings += noise * np.float32(pixel_noise_std / math.sqrt(dim))
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), _NORM_EPS)
    if channels_last:
        out_hwc = np.zeros((height * width, dim), dtype=np.float32)
        out_hwc[hit] = embeddings
        return out_hwc.reshape(height, width, dim).transpose(2, 0, 1)
    out = np.zeros((dim, height * width), dtype=np.float32)
    out[:, hit] = embeddings.T
    return out.reshape(dim, height, width)
