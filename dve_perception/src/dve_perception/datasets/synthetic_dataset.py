"""Write a tiny procedural dataset in the documented layout, for tests and smoke runs.

Each sample is a simple room seen from inside: a wall (class 1) in the upper part, a floor
(class 2) below a random horizon, and a few boxes (the remaining classes, one instance each)
standing on the floor, nearer than the wall. A void band (label 0, depth 0) runs along the left
edge, as unlabelled borders do in real datasets. Colours are per-class base colours with noise, so
an RGB-only model can learn the classes; depth follows the geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dve_perception.errors import ConfigError
from dve_perception.images import write_png

__all__ = ["write_synthetic_dataset"]

#: Width of the void band at the left edge, as a fraction of the image width.
_VOID_FRACTION = 1 / 16
_WALL_DEPTH_MM = 4000
_BOXES = 2


def write_synthetic_dataset(
    root: str | Path,
    *,
    samples: int = 4,
    size: tuple[int, int] = (96, 128),
    classes: Sequence[str] = ("wall", "floor", "chair"),
    seed: int = 0,
) -> Path:
    """Write `samples` procedural RGB-D samples with semantic and instance labels.

    Both `splits/train.txt` and `splits/val.txt` list every sample: the set is for exercising
    code, not for measuring generalisation.

    Args:
        root: output folder (created; existing files with the same names are overwritten).
        samples: number of samples, ids "000000", "000001", ...
        size: (height, width) of every image, each at least 16.
        classes: class names for classes.txt; label 1 is the wall, 2 the floor, the rest are
            boxes (with one class, everything labelled is class 1).
        seed: seed of the scene layout and colour noise.

    Returns:
        The dataset root.

    Raises:
        ConfigError: no samples or classes, a too small size, or blank/duplicate class names.
    """
    height, width = _check_args(samples, size, classes)
    root = Path(root)
    for folder in ("rgb", "depth", "semantic", "instance", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(len(classes) + 1, 3))
    ids = [f"{i:06d}" for i in range(samples)]
    for sample_id in ids:
        semantic, instance, depth = _render_scene(rng, height, width, len(classes))
        noise = rng.normal(0.0, 8.0, size=(height, width, 3))
        rgb = np.clip(palette[semantic] + noise, 0, 255).astype(np.uint8)
        write_png(root / "rgb" / f"{sample_id}.png", rgb)
        write_png(root / "depth" / f"{sample_id}.png", depth)
        write_png(root / "semantic" / f"{sample_id}.png", semantic.astype(np.uint8))
        write_png(root / "instance" / f"{sample_id}.png", instance.astype(np.uint16))
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return root


def _check_args(samples: int, size: tuple[int, int], classes: Sequence[str]) -> tuple[int, int]:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a positive integer, got {samples!r}")
    if len(size) != 2 or any(not isinstance(s, int) or s < 16 for s in size):
        raise ConfigError(f"size must be (height, width) with both >= 16, got {size!r}")
    names = [str(c) for c in classes] if not isinstance(classes, str) else []
    if not names or any(not n.strip() or "\n" in n for n in names):
        raise ConfigError(f"classes must be non-blank single-line names, got {classes!r}")
    if len(set(names)) != len(names) or len(names) > 255:
        raise ConfigError(f"classes must be unique and at most 255, got {classes!r}")
    return int(size[0]), int(size[1])


def _render_scene(
    rng: np.random.Generator, height: int, width: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (semantic, instance, depth_mm) arrays for one random room view."""
    rows = np.arange(height)[:, None].repeat(width, axis=1)
    horizon = int(rng.integers(height // 3, 2 * height // 3))
    floor_label = 2 if num_classes >= 2 else 1
    semantic = np.where(rows < horizon, 1, floor_label).astype(np.int64)
    instance = np.zeros((height, width), dtype=np.int64)
    # Floor depth falls from the wall's distance at the horizon to ~1 m at the bottom row.
    below = np.clip((rows - horizon) / max(height - horizon, 1), 0.0, 1.0)
    depth = np.where(rows < horizon, _WALL_DEPTH_MM, _WALL_DEPTH_MM - below * 3000.0)
    object_labels = list(range(3, num_classes + 1)) or list(range(1, num_classes + 1))
    for box in range(_BOXES):
        box_h = int(rng.integers(height // 6, height // 3))
        box_w = int(rng.integers(width // 8, width // 4))
        bottom = int(rng.integers(horizon + 1, height + 1))
        left = int(rng.integers(width // 8, width - box_w))
        top = max(bottom - box_h, 0)
        semantic[top:bottom, left : left + box_w] = object_labels[box % len(object_labels)]
        instance[top:bottom, left : left + box_w] = box + 1
        # A box stands on the floor at its bottom row, so it is as far as the floor there.
        depth[top:bottom, left : left + box_w] = depth[min(bottom, height) - 1, left]
    void = max(1, int(width * _VOID_FRACTION))
    semantic[:, :void] = 0
    instance[:, :void] = 0
    depth[:, :void] = 0
    return semantic, instance, np.round(depth).astype(np.uint16)
