"""Distillation toolkit: dataset layout and loader, augmentation, teacher targets and training.

Import the modules directly (e.g. `dve_perception.training.dataset`); this package re-exports
nothing so that importing one part never pulls in the heavy dependencies of another.
"""

from __future__ import annotations

__all__: list[str] = []
