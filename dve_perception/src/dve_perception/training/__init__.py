"""Distillation toolkit: augmentation, teacher targets, losses and the training loop.

Import the modules directly (e.g. `dve_perception.training.targets`); this package re-exports
nothing so that importing one part never pulls in the heavy dependencies of another.
"""

from __future__ import annotations

__all__: list[str] = []
