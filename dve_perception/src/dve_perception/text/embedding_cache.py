"""The on-disk cache of CLIP text embeddings: one unit vector per model fingerprint and prompt.

Entries live under `default_cache_dir()/<fingerprint>/<sha256 of the prompt>.npy`. A missing,
unreadable or malformed entry is a miss, and a cache that cannot be written only logs a warning:
the cache is an optimisation, never a source of errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from dve_perception.atomic_file import atomic_write

__all__ = ["CACHE_ENV_VAR", "TextEmbeddingCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

#: Environment variable naming the dve_perception cache root (embeddings go to `text_embeddings/`).
CACHE_ENV_VAR = "DVE_PERCEPTION_CACHE"


def default_cache_dir() -> Path:
    """Return `$DVE_PERCEPTION_CACHE/text_embeddings`.

    Without that variable the root is `$XDG_CACHE_HOME/dve_perception`, else
    `~/.cache/dve_perception`.
    """
    root = os.environ.get(CACHE_ENV_VAR)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "dve_perception") if xdg else "~/.cache/dve_perception"
    return Path(root).expanduser() / "text_embeddings"


class TextEmbeddingCache:
    """One .npy file per (model fingerprint, rendered prompt); bad entries count as misses.

    Args:
        root: The cache folder, e.g. `default_cache_dir()`.
        fingerprint: The model's fingerprint; its entries go to `root / fingerprint`.
        dim: The embedding size; entries of another shape are misses.
    """

    def __init__(self, root: Path, fingerprint: str, dim: int):
        self.folder = root / fingerprint
        self.dim = dim

    def path(self, prompt: str) -> Path:
        """Return the file that holds (or would hold) the embedding of `prompt`."""
        return self.folder / f"{hashlib.sha256(prompt.encode('utf-8')).hexdigest()}.npy"

    def get(self, prompt: str) -> np.ndarray | None:
        """Return the cached float32 unit vector of `prompt`, or None on a miss."""
        path = self.path(prompt)
        try:
            with open(path, "rb") as f:
                vector = np.load(f, allow_pickle=False)
            if vector.shape != (self.dim,) or vector.dtype != np.float32:
                raise ValueError(f"holds a {vector.dtype} array of shape {vector.shape}")
            if not abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3:  # also catches NaN
                raise ValueError("does not hold a unit vector")
        except FileNotFoundError:
            return None
        except Exception as exc:  # truncated, garbage, pickled...: recompute rather than fail
            logger.warning("ignoring bad text-embedding cache file %s (%s)", path, exc)
            return None
        return vector

    def put(self, prompt: str, vector: np.ndarray) -> None:
        """Store the embedding of `prompt`; a failed write only logs a warning."""
        path = self.path(prompt)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # No fsync: a file torn by a crash is merely unreadable, i.e. recomputed.
            with atomic_write(path, durable=False) as file:
                np.save(file, vector, allow_pickle=False)
        except OSError as exc:  # the cache is an optimisation: a read-only or full disk is no error
            logger.warning("cannot write text-embedding cache file %s (%s)", path, exc)
