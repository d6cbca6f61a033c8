"""Evaluation: 2D segmentation mIoU with the official protocol and 3D evaluation of maps.

Import the modules directly (e.g. `dve_perception.evaluation.miou`); nothing is re-exported.
"""

from __future__ import annotations

__all__: list[str] = []
