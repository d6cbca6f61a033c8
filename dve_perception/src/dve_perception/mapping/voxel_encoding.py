"""How a `VoxelEmbeddingMap` stores its voxels' running means: float16, pca or pca_int rows.

float16 rows are the means themselves. pca rows are their coefficients c = B^T m in an
orthonormal basis B fitted on the map's first voxels, as float16 (rounded stochastically when
fused, float16_rounding.py) or, with pca_int, as fixed-point integers (fixed_point_codes.py).
The encoding owns the basis, the conversion of rows to and from float32, and the norm helpers
that account for the energy the basis drops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from dve_perception.errors import ConfigError
from dve_perception.mapping.fixed_point_codes import FixedPointCodes, row_bytes
from dve_perception.mapping.float16_rounding import StochasticFloat16
from dve_perception.mapping.map_config import PCA_ENCODINGS, MapConfig

__all__ = ["VoxelEncoding", "dropped_energy", "row_norms"]

_LOG = logging.getLogger(__name__)
_NORM_EPS = 1e-12


class VoxelEncoding:
    """The encoding half of `VoxelEmbeddingMap` (which provides the storage it converts)."""

    # Provided by VoxelEmbeddingMap.
    config: MapConfig
    basis: torch.Tensor | None
    codes: FixedPointCodes | None
    _features: torch.Tensor
    _norms: torch.Tensor
    _size: int
    _capacity: int
    device: torch.device
    _rounding: StochasticFloat16
    _mark_changed: Callable[[torch.Tensor | slice], None]  # from VoxelScoring

    @property
    def features(self) -> torch.Tensor:
        """Stored rows (`VoxelEmbeddingMap.features`)."""
        raise NotImplementedError

    @property
    def norms(self) -> torch.Tensor:
        """(N,) norms of the stored means (`VoxelEmbeddingMap.norms`)."""
        raise NotImplementedError

    def _resize(self, capacity: int, width: int, dtype: torch.dtype) -> None:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        """Return the values per voxel: embedding_dim, or pca_dim once a basis is fitted."""
        return self.config.embedding_dim if self.basis is None else self.basis.shape[1]

    @property
    def encoding(self) -> str:
        """How features are stored now: "float16" until a pca map has fitted its basis."""
        return "float16" if self.basis is None else self.config.feature_encoding

    def decode(self, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Stored rows (e.g. a slice of `features`) -> (M, feature_dim) float32 values."""
        if self.codes is not None:
            return self.codes.decode(rows, out)
        return rows.to(torch.float32) if out is None else out.copy_(rows)

    @property
    def residual_energy(self) -> torch.Tensor:
        """(N,) float32 |m|^2 - |c|^2, the energy the pca basis drops (computed; zeros without)."""
        if self.basis is None:
            return torch.zeros(self._size, device=self.device)
        return dropped_energy(self.norms, self.decode(self.features))

    def encode(self, directions: torch.Tensor) -> torch.Tensor:
        """Project (M, D) float32 embeddings into the stored feature space (float32)."""
        return directions if self.basis is None else directions @ self.basis

    def _residual_of(self, directions: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(M,) float32 1 - |B^T x|^2, the energy the basis drops of unit observations x.

        Zeros without a basis. `fuse` takes unit directions, so |x|^2 = 1 (to float32 rounding)
        saves a pass over the (M, D) observations (~15 % of a pca frame's fusion time).
        """
        if self.basis is None:
            return torch.zeros(directions.shape[0], device=directions.device)
        return torch.linalg.vector_norm(codes, dim=1).square_().neg_().add_(1.0).clamp_min_(0.0)

    def fit_basis(self) -> None:
        """Fit the PCA basis on the current voxels and convert every voxel to coefficients.

        The basis is uncentred (eigenvectors of sum m m^T over unit voxel means), because what
        must survive is the inner product with text vectors, not the variance about a mean.
        """
        if self.basis is not None:
            return
        if self.config.feature_encoding not in PCA_ENCODINGS or self._size < self.config.basis_dim:
            raise ConfigError(
                f"a PCA basis needs feature_encoding 'pca' or 'pca_int' and at least pca_dim "
                f"({self.config.basis_dim}) voxels; this map is "
                f"'{self.config.feature_encoding}' with {self._size} voxels"
            )
        # An even stride over at most pca_fit_voxels rows bounds the float32 copy on big maps.
        stride = max(1, self._size // self.config.pca_fit_voxels)
        sample = self.features[::stride].to(torch.float32)
        sample = sample / sample.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
        _, vectors = torch.linalg.eigh(sample.T @ sample)
        basis = vectors[:, -self.config.basis_dim :].flip(1).contiguous()  # (D, k), largest first
        # Fix each vector's sign (largest loading positive) so a refit on the same data agrees.
        signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
        basis = basis * torch.where(signs == 0, torch.ones_like(signs), signs)
        means = self.features.to(torch.float32)
        codes = means @ basis
        self._set_basis(basis)
        self._resize(self._capacity, *self._row_format())
        if self.codes is not None:
            self.codes.encode(codes, self._features[: self._size])
        else:
            self._features[: self._size] = codes.to(torch.float16)
        # |m| of the full means, not |c|: the scores then divide by the true norm (pca rankings
        # move closer to exact ones, docs/mapping.md); the norms are saved with the map.
        self._norms[: self._size] = row_norms(means)
        self._mark_changed(slice(0, self._size))
        _LOG.info("fitted a %d-d PCA basis on %d voxels", basis.shape[1], self._size)

    def _set_basis(self, basis: torch.Tensor | None) -> None:
        codes = None  # built first: a refused size leaves the map as it was
        if basis is not None and self.config.feature_encoding == "pca_int":
            codes = FixedPointCodes(basis.shape[1], self.config.pca_head_dim)
        self.basis, self.codes = basis, codes

    def _row_format(self, basis: torch.Tensor | None = None) -> tuple[int, torch.dtype]:
        """(width, dtype) of a stored row with `basis` (default: the map's own)."""
        basis = self.basis if basis is None else basis
        if basis is None:
            return self.config.embedding_dim, torch.float16
        if self.config.feature_encoding == "pca_int":
            return row_bytes(basis.shape[1], self.config.pca_head_dim), torch.int8
        return basis.shape[1], torch.float16

    def _store(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Write (M, feature_dim) float32 values into stored `rows`, rounding as the encoding does.

        Large leading pca coefficients have float16 spacings near the size of a capped update,
        which rounding to nearest then loses (benchmarks/study_int4_fusion.py): float16 pca rows
        round stochastically, pca_int rows are fixed point there; float16 maps store small
        coordinates and keep rounding to nearest (cheaper).
        """
        if self.codes is not None:
            self.codes.encode(values, rows)
        else:
            rows.copy_(values if self.basis is None else self._rounding(values))


def dropped_energy(norms: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(M,) norms |m|, (M, k) coefficient rows -> (M,) float32 |m|^2 - |c|^2, clamped at 0."""
    code = torch.linalg.vector_norm(rows.to(torch.float32), dim=1)
    return norms.square().sub_(code.square_()).clamp_min_(0.0)


def row_norms(rows: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """(M, F) rows (+ (M,) residual energy) -> (M,) float32 sqrt(|row|^2 + residual).

    Without a residual it is the plain norm, computed as a reload of a float16 map does, so that
    such a reload scores bit-identically; pca maps save their norms.
    """
    norms = torch.linalg.vector_norm(rows.to(torch.float32), dim=1)
    if residual is None:
        return norms
    return norms.square_().add_(residual).sqrt_()
