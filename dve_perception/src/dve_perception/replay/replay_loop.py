"""Offline replay: run perception and mapping over a recording and write what a person inspects.

`run_replay` reads a `FrameSource` (bag or folder), embeds each selected frame with a
`FrameEmbedder` (the network pipeline, or a label oracle in tests), fuses it into an
`EmbeddingMap`, and writes into an output folder:

- `map.dvemap`: the map (docs/map_format.md);
- `map_pca.ply`: voxel centres coloured by the PCA of their embeddings;
- `previews/`: colour, PCA and segmentation images for a sample of frames;
- `summary.json`: frames used and skipped (by reason), timings, map statistics, provenance.

Ctrl-C stops after the current frame: the map so far is saved as usual and the summary says
`"interrupted": true`. A second Ctrl-C aborts without saving (an earlier map file stays intact,
saves are atomic). Frames the pipeline rejects (a `DvePerceptionError`) are skipped and counted,
never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import torch

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import ConfigError, DvePerceptionError
from dve_perception.frames import RGBDFrame
from dve_perception.mapping import EmbeddingMap, MapConfig
from dve_perception.perception.pipeline import FrameEmbedder
from dve_perception.replay.previews import PreviewWriter
from dve_perception.sources.frame_source import FrameSource, SkippedFrame

__all__ = ["ReplayOptions", "ReplayResult", "prepare_output_dir", "run_replay"]

_LOG = logging.getLogger(__name__)
MAP_FILE = "map.dvemap"
PLY_FILE = "map_pca.ply"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay.

    Attributes:
        every: use every N-th usable frame (1 = all).
        max_frames: stop after this many used frames (None = all).
        preview_every: write previews for used frames 0, N, 2N, ...
        max_previews: at most this many previewed frames.
        map_config: the voxel map's settings.
        device: where the map lives.
        progress: show a progress bar on stderr.
    """

    every: int = 1
    max_frames: int | None = None
    preview_every: int = 10
    max_previews: int = 8
    map_config: MapConfig = field(default_factory=MapConfig)
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"every must be a positive integer, got {self.every!r}")
        if self.max_frames is not None and (
            not isinstance(self.max_frames, int) or self.max_frames < 1
        ):
            raise ConfigError(f"max_frames must be a positive integer, got {self.max_frames!r}")


@dataclass
class ReplayResult:
    """What a replay did; `summary` is what `summary.json` holds."""

    output_dir: Path
    map: EmbeddingMap
    summary: dict
    files: list[Path]

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C ended the replay early."""
        return bool(self.summary["interrupted"])


def prepare_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Create the output folder; refuse an existing non-empty one unless `overwrite`.

    With `overwrite`, only the files a replay writes are replaced; anything else stays.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output folder {out} already exists and is not empty; choose another --out or "
            "pass --overwrite to replace its replay files"
        )
    if overwrite:
        shutil.rmtree(out / "previews", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_replay(
    source: FrameSource,
    embedder: FrameEmbedder,
    out_dir: Path,
    *,
    options: ReplayOptions | None = None,
    prototypes: torch.Tensor | None = None,
    provenance: dict | None = None,
) -> ReplayResult:
    """Replay a recording into a map and write the outputs (see the module docstring).

    Args:
        source: the frames (already opened: opening errors are the caller's to report).
        embedder: turns an RGBDFrame into an EmbeddingFrame.
        out_dir: an existing folder (see `prepare_output_dir`).
        options: replay settings.
        prototypes: (K, D) class prototypes for segmentation previews, or None.
        provenance: extra entries for the summary (weights used, whether results are
            meaningful, ...).

    Returns:
        The map and the summary.
    """
    options = options or ReplayOptions()
    emap = EmbeddingMap(config=options.map_config, device=options.device)
    previews = PreviewWriter(
        out_dir / "previews",
        every=options.preview_every,
        limit=options.max_previews,
        prototypes=prototypes,
    )
    counts: Counter[str] = Counter()
    timings = {"embed_s": 0.0, "integrate_s": 0.0}
    started = time.perf_counter()
    stop = _StopRequest()
    with stop.installed():
        for item in _progress(source, options.progress):
            if stop.requested:
                break
            counts["colour images"] += 1
            if isinstance(item, SkippedFrame):
                counts[f"skipped: {item.reason}"] += 1
                _LOG.debug(
                    "skipped frame at %d ns: %s (%s)", item.stamp_ns, item.reason, item.detail
                )
            elif (counts["usable"] % options.every) != 0:
                counts["usable"] += 1
                counts["not selected (--every)"] += 1
            else:
                counts["usable"] += 1
                _process(item, embedder, emap, previews, counts, timings)
            if counts["used"] == options.max_frames:
                break
    elapsed = time.perf_counter() - started
    files = _write_outputs(out_dir, emap)
    summary = _summary(source, counts, timings, elapsed, emap, stop.requested, provenance)
    summary["files"] = [str(p) for p in [*files, *previews.written]]
    with atomic_write(out_dir / SUMMARY_FILE) as f:
        f.write((json.dumps(summary, indent=2) + "\n").encode())
    return ReplayResult(out_dir, emap, summary, [*files, out_dir / SUMMARY_FILE, *previews.written])


def _process(
    frame: RGBDFrame,
    embedder: FrameEmbedder,
    emap: EmbeddingMap,
    previews: PreviewWriter,
    counts: Counter[str],
    timings: dict[str, float],
) -> None:
    """Embed and fuse one frame; a rejected frame is counted, not fatal."""
    if frame.T_world_cam is None:
        counts["skipped: no transform"] += 1
        return
    try:
        t = time.perf_counter()
        embedded = embedder.embed(frame)
        timings["embed_s"] += time.perf_counter() - t
        t = time.perf_counter()
        # The pipeline's embeddings are unit vectors: the map skips normalising them.
        emap.integrate(
            embedded.embedding, embedded.depth_m, embedded.K, frame.T_world_cam, assume_unit=True
        )
        timings["integrate_s"] += time.perf_counter() - t
    except DvePerceptionError as err:
        counts[f"skipped: rejected ({type(err).__name__})"] += 1
        _LOG.warning("frame at %d ns rejected: %s", frame.stamp_ns, err)
        return
    previews.maybe_write(counts["used"], frame, embedded)
    counts["used"] += 1


def _write_outputs(out_dir: Path, emap: EmbeddingMap) -> list[Path]:
    files = [emap.save(out_dir / MAP_FILE)]
    if len(emap):
        files.append(emap.save_ply(out_dir / PLY_FILE, mode="pca"))
    else:
        _LOG.warning("the map is empty: no frame was used, so no PLY was written")
    return files


def _summary(
    source: FrameSource,
    counts: Counter[str],
    timings: dict[str, float],
    elapsed: float,
    emap: EmbeddingMap,
    interrupted: bool,
    provenance: dict | None,
) -> dict:
    used = counts["used"]
    skipped = {k.removeprefix("skipped: "): v for k, v in counts.items() if k.startswith("skipped")}
    return {
        **(provenance or {}),
        "source": source.describe(),
        "interrupted": interrupted,
        "frames": {
            "colour_images": counts["colour images"],
            "used": used,
            "not_selected": counts["not selected (--every)"],
            "skipped": dict(sorted(skipped.items())),
        },
        "timings": {
            "total_s": round(elapsed, 3),
            "frames_per_s": round(used / elapsed, 3) if elapsed > 0 else None,
            "embed_ms_per_frame": round(1e3 * timings["embed_s"] / used, 2) if used else None,
            "integrate_ms_per_frame": (
                round(1e3 * timings["integrate_s"] / used, 2) if used else None
            ),
        },
        "map": emap.stats(),
    }


def _progress(source: FrameSource, enabled: bool) -> Iterator:
    if not enabled:
        return iter(source)
    from tqdm import tqdm

    # tqdm takes the total from len(source) where the source knows it (bags and folders do).
    return iter(tqdm(source, unit="frame", desc="replay", dynamic_ncols=True))


class _StopRequest:
    """Turn the first Ctrl-C into a request to stop between frames.

    Interrupting inside `integrate` could leave the voxel arrays half-updated; stopping between
    frames keeps the map consistent, so it can be saved. A second Ctrl-C raises as usual.
    """

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _LOG.warning(
            "Ctrl-C: stopping after this frame and saving the map so far "
            "(press Ctrl-C again to abort without saving)"
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT inside the `with` block (main thread only; elsewhere do nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
