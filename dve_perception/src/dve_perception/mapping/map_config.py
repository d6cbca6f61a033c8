"""Settings of the voxel embedding map, declared once with defaults, descriptions and checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from dve_perception.errors import ConfigError
from dve_perception.mapping.fixed_point_codes import MAX_PART

__all__ = ["FEATURE_ENCODINGS", "PCA_ENCODINGS", "MapConfig"]

#: "float16": the 768-d running mean itself (1536 B/voxel). "pca": its coefficients in an
#: orthonormal basis fitted on the map's first voxels, as float16 (2 * pca_dim B/voxel).
#: "pca_int": the same coefficients as integers, the first pca_head_dim in 16-bit fixed point and
#: the rest in 8 bits with a per-voxel scale (pca_dim + pca_head_dim + 2 B/voxel, rounded up to
#: a multiple of 8). See docs/mapping.md.
FEATURE_ENCODINGS = ("float16", "pca", "pca_int")
PCA_ENCODINGS = ("pca", "pca_int")


def _describe(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass(frozen=True)
class MapConfig:
    """How the map stores, fuses, bounds and forgets voxel embeddings."""

    voxel_size_m: float = field(default=0.05, metadata=_describe("voxel edge length in metres"))
    embedding_dim: int = field(default=768, metadata=_describe("dimension of the embeddings"))
    max_voxels: int = field(
        default=1_000_000,
        metadata=_describe("memory budget: the map never holds more voxels than this"),
    )
    eviction_fraction: float = field(
        default=0.05,
        metadata=_describe(
            "when the budget is reached, evict this fraction of it at once (least recently "
            "observed first, then farthest from the camera), so eviction is not paid per frame"
        ),
    )
    weight_cap: float = field(
        default=50.0,
        metadata=_describe(
            "cap on a voxel's fused weight (observations); a lower cap follows changes faster"
        ),
    )
    min_depth_m: float = field(default=0.1, metadata=_describe("ignore pixels closer than this"))
    max_depth_m: float = field(
        default=5.0, metadata=_describe("ignore pixels farther than this (depth noise grows)")
    )
    feature_encoding: str = field(
        default="float16",
        metadata={
            **_describe(f"voxel feature storage, one of {FEATURE_ENCODINGS}"),
            "choices": FEATURE_ENCODINGS,
        },
    )
    pca_dim: int = field(
        default=0,
        metadata=_describe(
            "basis size for feature_encoding 'pca' (2 B each) or 'pca_int'; 0 fills 256 B per "
            "voxel: 128 for 'pca', 254 - pca_head_dim (222) for 'pca_int'"
        ),
    )
    pca_head_dim: int = field(
        default=32,
        metadata=_describe(
            "with 'pca_int', the leading coefficients kept in 16-bit fixed point (2 B each); "
            "the other pca_dim - pca_head_dim take 1 B each"
        ),
    )
    pca_fit_voxels: int = field(
        default=20_000,
        metadata=_describe(
            "with 'pca' or 'pca_int', voxels are kept in float16 until this many exist, then "
            "the basis is fitted on them and every voxel is converted"
        ),
    )

    def __post_init__(self) -> None:
        """Check ranges and enums, naming the field and the value received."""
        _positive_finite("voxel_size_m", self.voxel_size_m)
        _positive_finite("weight_cap", self.weight_cap)
        _positive_finite("max_depth_m", self.max_depth_m)
        for name in ("embedding_dim", "max_voxels", "pca_dim", "pca_head_dim", "pca_fit_voxels"):
            value = getattr(self, name)
            least = 0 if name == "pca_dim" else 1  # pca_dim 0: the 256 B default
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if not 0.0 < self.eviction_fraction < 1.0:
            raise ConfigError(f"eviction_fraction must be in (0, 1), got {self.eviction_fraction}")
        if not 0.0 <= self.min_depth_m < self.max_depth_m:
            raise ConfigError(
                f"need 0 <= min_depth_m < max_depth_m, got {self.min_depth_m}, {self.max_depth_m}"
            )
        if self.feature_encoding not in FEATURE_ENCODINGS:
            raise ConfigError(
                f"feature_encoding must be one of {FEATURE_ENCODINGS}, "
                f"got {self.feature_encoding!r}"
            )
        if self.feature_encoding not in PCA_ENCODINGS:
            return
        dim = self.basis_dim
        if not 1 <= dim < self.embedding_dim:
            raise ConfigError(
                f"pca_dim ({dim}{' by default' if not self.pca_dim else ''}) must be in "
                f"1..{self.embedding_dim - 1} (below embedding_dim); set it, or use "
                "feature_encoding 'float16' to keep every dimension"
            )
        if self.pca_fit_voxels < dim:
            raise ConfigError(
                f"pca_fit_voxels ({self.pca_fit_voxels}) must be at least pca_dim ({dim})"
            )
        if self.feature_encoding == "pca_int" and self.pca_head_dim > dim:
            raise ConfigError(f"pca_head_dim ({self.pca_head_dim}) must be at most pca_dim ({dim})")
        tail = dim - self.pca_head_dim
        if self.feature_encoding == "pca_int" and max(self.pca_head_dim, tail) > MAX_PART:
            raise ConfigError(
                f"pca_int keeps at most {MAX_PART} fixed-point and {MAX_PART} int8 coefficients "
                f"(exact integer sums), got pca_head_dim {self.pca_head_dim} and "
                f"pca_dim - pca_head_dim {tail}"
            )

    @property
    def basis_dim(self) -> int:
        """The PCA basis size: `pca_dim`, or with 0 the size that fills 256 B per voxel."""
        if self.pca_dim:
            return self.pca_dim
        return 254 - self.pca_head_dim if self.feature_encoding == "pca_int" else 128

    def to_dict(self) -> dict[str, float | int | str]:
        """Return the settings as JSON scalars (stored in map files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> MapConfig:
        """Build a config from stored settings, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except TypeError as err:
            raise ConfigError(f"invalid map settings {values}: {err}") from err


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite positive number, got {value}")
