"""Answer a text query on a saved map and report it: a table, JSON, a heat PLY and a top-down PNG.

This is the work behind `dve-perception query MAP "a red mug"`: load the map, score it against the
phrase and LERF's canonical negatives (plus the user's), then describe the ranked matches. With an
output folder it writes `<slug>_heat.ply` (the map coloured by the query), `<slug>_topdown.png`
(a floor-plan view of the scores with the matched boxes) and `<slug>.json` (the report), each
atomically. matplotlib is optional: without it the PNG is skipped and the report says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import BackendUnavailableError, InputError
from dve_perception.mapping.embedding_map import EmbeddingMap
from dve_perception.mapping.query import CANONICAL_NEGATIVES, QueryResult, VoxelCluster
from dve_perception.mapping.text_query import TextEncoder, query_text

__all__ = [
    "TOPDOWN_SIZE_PX",
    "QueryReport",
    "query_slug",
    "run_query",
    "write_topdown_png",
]

_LOG = logging.getLogger(__name__)
#: (width, height) of the top-down image in pixels.
TOPDOWN_SIZE_PX = (960, 800)
_DPI = 100
_MAX_SLUG_CHARS = 60
#: Cells per axis of the top-down grid; larger maps are binned coarser than a voxel, so the image
#: costs the same for a room and a campus.
_MAX_GRID_CELLS = 2048
_MAP_GREY = (0.85, 0.85, 0.85, 1.0)
# Rounding in the JSON: millimetres for positions, 1e-4 for scores (finer is noise).
_POSITION_DECIMALS = 3
_SCORE_DECIMALS = 4


@dataclass(frozen=True)
class QueryReport:
    """The outcome of one query on a map, ready to print or save.

    Attributes:
        text: the phrase searched for.
        negatives: every phrase the answer had to beat (canonical ones first, then the user's).
        score_name: "relevancy" (with negatives) or "cosine".
        threshold: minimum voxel score of a match.
        matches: one dict per cluster, best first: rank, centroid_m, box_min_m, box_max_m,
            box_size_m ([x, y, z] metres, world frame), score, mean_score, num_voxels.
        num_voxels_scored: voxels in the map.
        files: what was written (empty without an output folder).
        notes: things the reader should know, e.g. a file that could not be written.
    """

    text: str
    negatives: tuple[str, ...]
    score_name: str
    threshold: float
    matches: tuple[dict[str, Any], ...]
    num_voxels_scored: int
    files: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (positions in metres to 1 mm, scores to 1e-4)."""
        return {
            "text": self.text,
            "negatives": list(self.negatives),
            "score_name": self.score_name,
            "threshold": round(self.threshold, _SCORE_DECIMALS),
            "num_voxels_scored": self.num_voxels_scored,
            "matches": [_rounded_match(m) for m in self.matches],
            "files": [str(f) for f in self.files],
            "notes": list(self.notes),
        }

    def format_text(self) -> str:
        """Return a human-readable table of the matches."""
        lines = [
            f"query {self.text!r}: {self.score_name} against {len(self.negatives)} negatives "
            f"({', '.join(self.negatives) or 'none'}), {self.num_voxels_scored} voxels scored"
        ]
        if not self.matches:
            lines.append(f"no match above the threshold {self.threshold:.4g}")
        else:
            lines.append(f"matches with {self.score_name} >= {self.threshold:.4g} (world frame):")
            lines.append(
                f"{'rank':>4}  {'x m':>8} {'y m':>8} {'z m':>8}  {'box size m':<17} "
                f"{'score':>7} {'voxels':>7}"
            )
            for m in self.matches:
                x, y, z = m["centroid_m"]
                size = "x".join(f"{s:.2f}" for s in m["box_size_m"])
                lines.append(
                    f"{m['rank']:>4}  {x:>8.3f} {y:>8.3f} {z:>8.3f}  {size:<17} "
                    f"{m['score']:>7.4f} {m['num_voxels']:>7}"
                )
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"wrote {f}" for f in self.files]
        return "\n".join(lines)


def _rounded_match(match: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in match.items():
        if key.endswith("_m"):
            out[key] = [round(float(v), _POSITION_DECIMALS) for v in value]
        elif isinstance(value, float):
            out[key] = round(value, _SCORE_DECIMALS)
        else:
            out[key] = value
    return out


def _match(rank: int, cluster: VoxelCluster) -> dict[str, Any]:
    return {
        "rank": rank,
        "centroid_m": [float(v) for v in cluster.centroid_m],
        "box_min_m": [float(v) for v in cluster.box_min_m],
        "box_max_m": [float(v) for v in cluster.box_max_m],
        "box_size_m": [float(v) for v in cluster.box_size_m],
        "score": float(cluster.score),
        "mean_score": float(cluster.mean_score),
        "num_voxels": int(cluster.voxel_count),
    }


def query_slug(text: str) -> str:
    """Return a filesystem-safe lowercase name for a query, e.g. "a red mug" -> "a_red_mug".

    Only [a-z0-9_] survive (accents are stripped, "../" disappears), so the name can never leave
    the output folder or be hidden. A phrase with nothing left, or one cut at 60 characters, gets
    a short hash of the phrase, so distinct queries do not overwrite each other's files.
    """
    text = text if isinstance(text, str) else str(text)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if not slug:
        return f"query_{digest}"
    if len(slug) > _MAX_SLUG_CHARS:
        slug = slug[: _MAX_SLUG_CHARS - len(digest) - 1].rstrip("_") + "_" + digest
    return slug


def run_query(
    emap: EmbeddingMap | str | os.PathLike[str],
    encoder: TextEncoder,
    text: str,
    *,
    negatives: Sequence[str] = (),
    top_k: int = 5,
    threshold: float | None = None,
    min_cluster_voxels: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
) -> QueryReport:
    """Find `text` in a map and describe the matches; optionally write PLY, PNG and JSON.

    Args:
        emap: the map, or the path of a map file written by `EmbeddingMap.save`.
        encoder: turns phrases into unit embeddings of the map's dimension.
        text: what to look for, e.g. "a red mug".
        negatives: extra phrases the answer must beat (LERF's canonical ones are always used).
        top_k: number of matches to report.
        threshold: minimum voxel score of a match; None uses the score's default (0.5 relevancy).
        min_cluster_voxels: ignore matches with fewer voxels.
        out_dir: folder for `<slug>_heat.ply`, `<slug>_topdown.png` and `<slug>.json` (created
            if needed); None writes nothing.

    Returns:
        The report.

    Raises:
        MapFileError: the map file is missing, truncated or not a map.
        InputError: a blank phrase, or the query listed among the negatives.
    """
    if not isinstance(emap, EmbeddingMap):
        emap = EmbeddingMap.load(emap)
    result = query_text(
        emap,
        encoder,
        text,
        negatives,
        top_k=top_k,
        threshold=threshold,
        min_cluster_voxels=min_cluster_voxels,
    )
    # The same phrase list query_text scored against, so the report says what was beaten.
    used = [*CANONICAL_NEGATIVES, *(n for n in negatives if n not in CANONICAL_NEGATIVES)]
    report = QueryReport(
        text=text,
        negatives=tuple(dict.fromkeys(used)),
        score_name=result.score_name,
        threshold=result.threshold,
        matches=tuple(_match(i, c) for i, c in enumerate(result.clusters, start=1)),
        num_voxels_scored=int(result.scores.shape[0]),
    )
    return report if out_dir is None else _write_outputs(emap, result, report, Path(out_dir))


def _write_outputs(
    emap: EmbeddingMap, result: QueryResult, report: QueryReport, out: Path
) -> QueryReport:
    """Write the heat PLY, the top-down PNG and the JSON (last, listing all three)."""
    out.mkdir(parents=True, exist_ok=True)
    slug = query_slug(report.text)
    files = [emap.save_ply(out / f"{slug}_heat.ply", mode="heat", result=result)]
    notes: list[str] = []
    try:
        files.append(
            write_topdown_png(
                out / f"{slug}_topdown.png",
                result.points_m,
                result.scores,
                result.voxel_size_m,
                result.clusters,
                title=f"{report.text!r}: {result.score_name}",
                score_name=result.score_name,
                min_score=result.threshold,
            )
        )
    except BackendUnavailableError as err:
        # The PLY and JSON still answer the query; only the picture needs the optional library.
        _LOG.warning("skipping the top-down image: %s", err)
        notes.append(f"no top-down image: {err}")
    json_path = out / f"{slug}.json"
    report = replace(report, files=(*files, json_path), notes=tuple(notes))
    with atomic_write(json_path) as file:
        file.write((json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8"))
    return report


def _column_max(
    points_m: np.ndarray, scores: np.ndarray, voxel_size_m: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """Bin voxels into an x/y grid: (max score per cell, NaN where none), occupancy, extent."""
    xy = points_m[:, :2].astype(np.float64)
    low, high = xy.min(axis=0) - voxel_size_m / 2, xy.max(axis=0) + voxel_size_m / 2
    cell = max(voxel_size_m, float((high - low).max()) / _MAX_GRID_CELLS)
    shape = np.maximum(np.ceil((high - low) / cell).astype(np.int64), 1)  # (nx, ny)
    index = np.minimum(((xy - low) / cell).astype(np.int64), shape - 1)
    flat = index[:, 1] * shape[0] + index[:, 0]  # row = y, so the image is (ny, nx)
    best = np.full(int(shape[0] * shape[1]), -np.inf)
    finite = np.isfinite(scores)
    np.maximum.at(best, flat[finite], scores[finite].astype(np.float64))
    occupied = np.zeros(best.shape, dtype=bool)
    occupied[flat] = True
    best[~np.isfinite(best)] = np.nan
    extent = (low[0], low[0] + shape[0] * cell, low[1], low[1] + shape[1] * cell)
    grid_shape = (int(shape[1]), int(shape[0]))
    return best.reshape(grid_shape), occupied.reshape(grid_shape), extent


def write_topdown_png(
    path: str | os.PathLike[str],
    points_m: np.ndarray,
    scores: np.ndarray,
    voxel_size_m: float,
    clusters: Sequence[VoxelCluster],
    title: str,
    *,
    score_name: str = "score",
    min_score: float | None = None,
    size_px: tuple[int, int] = TOPDOWN_SIZE_PX,
) -> Path:
    """Draw the map from above (x right, y up) coloured by the best score in each column.

    Every occupied x/y cell is light grey; cells whose maximum score over z is at least
    `min_score` are coloured (viridis, colour bar labelled `score_name`); each cluster's box is
    outlined and labelled with its rank. Voxels are binned into a grid first, so a million voxels
    cost one image, not a million markers. The file is written atomically.

    Args:
        path: output PNG.
        points_m: (N, 3) voxel centres, world frame (z up).
        scores: (N,) per-voxel scores aligned with points_m.
        voxel_size_m: voxel edge, the grid cell size.
        clusters: matches to outline, best first.
        title: the figure title.
        score_name: colour bar label.
        min_score: cells below it stay grey; None colours every cell.
        size_px: (width, height) of the image.

    Returns:
        The path written.

    Raises:
        InputError: mismatched shapes or a non-positive voxel size.
        BackendUnavailableError: matplotlib is not installed.
    """
    points_m, scores = np.asarray(points_m), np.asarray(scores).reshape(-1)
    if points_m.ndim != 2 or points_m.shape[1] != 3 or scores.shape[0] != points_m.shape[0]:
        raise InputError(
            f"points_m must be (N, 3) with N scores, got {points_m.shape} and {scores.shape}"
        )
    if not voxel_size_m > 0:
        raise InputError(f"voxel_size_m must be positive, got {voxel_size_m!r}")
    figure = _new_figure(size_px)
    axes = figure.add_subplot()
    _draw_map(figure, axes, points_m, scores, voxel_size_m, score_name, min_score)
    _draw_clusters(axes, clusters)
    axes.set(title=title, xlabel="x (m)", ylabel="y (m)")
    axes.set_aspect("equal")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    with atomic_write(path) as file:
        file.write(buffer.getvalue())
    return Path(path)


def _new_figure(size_px: tuple[int, int]) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise BackendUnavailableError(
            "the top-down image needs matplotlib, which is not installed: `pip install matplotlib`"
        ) from err
    # A bare Figure with its own Agg canvas: no pyplot, so no global figure list and no GUI.
    figure = Figure(figsize=(size_px[0] / _DPI, size_px[1] / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw_map(
    figure: Any,
    axes: Any,
    points_m: np.ndarray,
    scores: np.ndarray,
    voxel_size_m: float,
    score_name: str,
    min_score: float | None,
) -> None:
    if points_m.shape[0] == 0:
        axes.text(0.5, 0.5, "empty map", ha="center", va="center", transform=axes.transAxes)
        return
    best, occupied, extent = _column_max(points_m, scores, voxel_size_m)
    grey = np.zeros((*occupied.shape, 4))
    grey[occupied] = _MAP_GREY
    common = {"origin": "lower", "extent": extent, "interpolation": "nearest"}
    axes.imshow(grey, **common)
    shown = np.ma.masked_invalid(best)
    if min_score is not None:
        shown = np.ma.masked_less(shown, min_score)
    finite = best[np.isfinite(best)]
    low = min_score if min_score is not None else (float(finite.min()) if finite.size else 0.0)
    high = float(finite.max()) if finite.size else low + 1.0
    image = axes.imshow(shown, cmap="viridis", vmin=low, vmax=max(high, low + 1e-6), **common)
    figure.colorbar(image, ax=axes, label=score_name, shrink=0.8)


def _draw_clusters(axes: Any, clusters: Sequence[VoxelCluster]) -> None:
    from matplotlib.patches import Rectangle

    for rank, cluster in enumerate(clusters, start=1):
        x0, y0 = float(cluster.box_min_m[0]), float(cluster.box_min_m[1])
        width, height = (float(v) for v in cluster.box_size_m[:2])
        axes.add_patch(Rectangle((x0, y0), width, height, fill=False, edgecolor="red", lw=1.5))
        axes.annotate(
            str(rank),
            (x0, y0 + height),
            xytext=(2, 2),
            textcoords="offset points",
            color="red",
            fontweight="bold",
        )
