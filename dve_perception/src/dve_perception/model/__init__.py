"""The DVEFormer student network, its checkpoint loading and synthetic weights."""

from __future__ import annotations

from dve_perception.model.dveformer import VARIANTS, DVEFormer, DVEFormerConfig, build_dveformer

__all__ = ["VARIANTS", "DVEFormer", "DVEFormerConfig", "build_dveformer"]
