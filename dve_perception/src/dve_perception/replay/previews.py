"""Per-frame preview images written during replay: colour, PCA of the embedding, segmentation.

The PCA basis is fitted on the first previewed frame and reused, so a colour means the same
embedding direction in every preview of a run. Segmentation previews need class prototypes (text
or a linear-probing head); without them only colour and PCA are written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dve_perception.frames import EmbeddingFrame, RGBDFrame
from dve_perception.images import write_png
from dve_perception.perception.postprocess import class_scores, segment
from dve_perception.perception.visualization import (
    PcaBasis,
    blend,
    fit_pca,
    label_colors,
    pca_colors,
)

__all__ = ["PreviewWriter"]


class PreviewWriter:
    """Write previews for every `every`-th used frame, at most `limit` of them.

    Args:
        folder: where the PNGs go (created on first use).
        every: preview used frames 0, every, 2 * every, ...
        limit: stop after this many previewed frames.
        prototypes: (K, D) class prototypes for segmentation previews, or None.
    """

    def __init__(
        self,
        folder: Path,
        *,
        every: int = 10,
        limit: int = 8,
        prototypes: torch.Tensor | None = None,
    ) -> None:
        self.folder = folder
        self.every = max(1, every)
        self.limit = limit
        self.prototypes = prototypes
        self.written: list[Path] = []
        self._basis: PcaBasis | None = None
        self._count = 0

    def maybe_write(self, used_index: int, frame: RGBDFrame, embedded: EmbeddingFrame) -> None:
        """Write the previews of the `used_index`-th used frame if it is one of the sample."""
        if used_index % self.every or self._count >= self.limit:
            return
        self._count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        embedding = embedded.embedding.detach().float().cpu()
        if self._basis is None:
            self._basis = fit_pca(embedding)
        stem = self.folder / f"frame_{used_index:06d}"
        images = {"rgb": frame.rgb, "pca": pca_colors(embedding, self._basis)}
        if self.prototypes is not None:
            with torch.no_grad():
                scores = class_scores(embedding[None], self.prototypes.float().cpu())
                labels = segment(scores, frame.size).labels[0].numpy()
            colored = label_colors(labels, self.prototypes.shape[0])
            images["segmentation"] = blend(frame.rgb, colored, alpha=0.5)
        for name, image in images.items():
            path = Path(f"{stem}_{name}.png")
            write_png(path, image)
            self.written.append(path)
