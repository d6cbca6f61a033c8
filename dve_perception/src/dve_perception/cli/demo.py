"""`dve-perception demo`: the whole offline pipeline on the bundled frame, with nothing to download.

Steps: turn the bundled Kinect v2 frame into a short recording by moving a virtual camera around
its point cloud (`replay.demo_recording`), write it as a real rosbag2 (MCAP) file, replay it
through the network into a voxel map (`replay.replay_loop`), and answer a few text queries on the
map (`cli.query_report`).
Outputs go to one folder:

- `recording/`: the rosbag2 (also playable with `ros2 bag play`);
- `replay/`: map.dvemap, map_pca.ply, previews/, summary.json;
- `queries/`: per query a heat PLY, a top-down PNG and a JSON report;
- `demo_summary.json`: what ran, from which weights, and the best match of every query.

Without the published files in `models/` it runs on generated weights and a random text tower
and says, loudly and in the summary, that the answers carry no meaning.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dve_perception.atomic_file import atomic_write
from dve_perception.cli.query_report import QueryReport, run_query
from dve_perception.cli.sample import bundled_sample
from dve_perception.images import read_depth, read_rgb
from dve_perception.installed.models_folder import resolve_text_encoder
from dve_perception.mapping import MapConfig
from dve_perception.perception.pipeline_setup import NetworkChoice, build_pipeline
from dve_perception.replay.demo_recording import make_demo_frames, sample_intrinsics
from dve_perception.replay.replay_loop import (
    ReplayOptions,
    ReplayResult,
    prepare_output_dir,
    run_replay,
)
from dve_perception.sources import open_source, write_bag
from dve_perception.text.vocabulary import read_vocabulary

__all__ = ["DEFAULT_QUERIES", "DemoResult", "run_demo"]

_LOG = logging.getLogger(__name__)
#: Things in the bundled living-room frame.
DEFAULT_QUERIES = ("a sofa", "a picture on the wall", "a table", "the floor")


@dataclass
class DemoResult:
    """What the demo wrote."""

    output_dir: Path
    replay: ReplayResult
    queries: list[QueryReport]
    meaningful: bool
    summary: dict


def run_demo(
    out_dir: str | Path,
    *,
    choice: NetworkChoice | None = None,
    text_model: Path | None = None,
    queries: Sequence[str] = DEFAULT_QUERIES,
    num_frames: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Build the recording, replay it and answer `queries` (see the module docstring).

    Args:
        out_dir: output folder; an existing non-empty one needs `overwrite`.
        choice: network, weights and backend; None uses the defaults (installed or generated).
        text_model: CLIP folder; None looks in the models folder (random tower if missing).
        queries: phrases to look for in the map.
        num_frames: frames of the virtual recording.
        overwrite: replace the outputs of an earlier demo in `out_dir`.
        progress: show a progress bar during the replay.
    """
    choice = choice or NetworkChoice()
    out = prepare_output_dir(out_dir, overwrite=overwrite)
    recording = out / "recording"
    shutil.rmtree(recording, ignore_errors=True)  # rosbag2 writers refuse existing folders
    rgb_path, depth_path = bundled_sample()
    rgb, depth_mm = read_rgb(rgb_path), read_depth(depth_path)
    K = sample_intrinsics(rgb.shape[1], rgb.shape[0])
    frames = make_demo_frames(rgb, depth_mm, K, num_frames=num_frames)
    write_bag(recording, frames, storage="mcap")
    _LOG.info("wrote a %d-frame recording of the bundled frame to %s", len(frames), recording)

    pipeline, provenance = build_pipeline(choice)
    encoder, text_source, text_real = resolve_text_encoder(text_model, choice.models_dir)
    provenance.update(text_model=text_source, meaningful_text=text_real)
    names = read_vocabulary(None)
    replay = run_replay(
        open_source(recording),
        pipeline,
        prepare_output_dir(out / "replay", overwrite=True),
        options=ReplayOptions(
            map_config=MapConfig(voxel_size_m=0.05, embedding_dim=pipeline.embedding_dim),
            progress=progress,
        ),
        prototypes=encoder.encode(names),
        provenance={**provenance, "vocabulary": names},
    )
    reports = [run_query(replay.map, encoder, text, out_dir=out / "queries") for text in queries]
    meaningful = bool(provenance.get("meaningful_weights")) and text_real
    summary = _summary(replay, reports, provenance, meaningful)
    with atomic_write(out / "demo_summary.json") as f:
        f.write((json.dumps(summary, indent=2) + "\n").encode())
    return DemoResult(out, replay, reports, meaningful, summary)


def _summary(
    replay: ReplayResult, reports: list[QueryReport], provenance: dict, meaningful: bool
) -> dict:
    return {
        "meaningful": meaningful,
        "note": None
        if meaningful
        else (
            "GENERATED weights and/or a RANDOM text tower: the map and the query answers carry "
            "no meaning; install the published files (dve-perception weights) and run again"
        ),
        **provenance,
        "frames_used": replay.summary["frames"]["used"],
        "map": replay.summary["map"],
        "queries": {r.text: (r.matches[0] if r.matches else None) for r in reports},
    }
