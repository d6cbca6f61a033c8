"""Open-vocabulary RGB-D scene understanding with the DVEFormer student.

Importing the package is cheap: heavy modules (torch models, transformers, onnx) are imported by
the submodules that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
