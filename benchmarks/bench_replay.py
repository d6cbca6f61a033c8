#!/usr/bin/env python3
"""CPU benchmark of offline replay: where a frame's time goes, as ratios to the network forward.

Renders a synthetic room recording at 480x640 (the size of common RGB-D cameras), writes it as
an MCAP rosbag2 (rgb8 + 16UC1 + CameraInfo + /tf chain) and as a recording folder (PNG), and
times per frame, medians over the frames:

- opening each source (pass 1 of the bag: stamps, TF, camera_info) per frame of the recording;
- reading one posed frame (decode + pairing + TF lookup) from the bag and from the folder;
- the perception pipeline (preprocess + reduced-res network with generated weights + L2
  normalisation + resampling to the output size): the baseline;
- fusing the 768x120x160 embedding into the map;
- the whole `run_replay` per frame (with previews and the final save), end to end.

The network dominates on a CPU; the question this answers is whether reading bags, TF and the
map add noticeably to it. Absolute times depend on the machine and its load (printed); compare
the ratios, measured in the same run.

    .venv/bin/python benchmarks/bench_replay.py [--frames N]

Default: 12 frames, ~1 min on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _mapping_scene import machine_line, print_table

from dve_perception.mapping import EmbeddingMap
from dve_perception.model.generated_weights import build_generated
from dve_perception.perception.pipeline import PerceptionPipeline
from dve_perception.replay.replay_loop import ReplayOptions, run_replay
from dve_perception.simulation import (
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render_frames,
)
from dve_perception.sources import open_source, write_bag, write_folder_recording
from dve_perception.sources.frame_source import SkippedFrame

H, W = 480, 640


def _read_ms(path: Path, count: int) -> tuple[float, float]:
    """(open, read) ms per frame: pass 1 of the source, then iterating over its frames."""
    t = time.perf_counter()
    source = open_source(path)
    opened = time.perf_counter()
    frames = list(source)
    done = time.perf_counter()
    if len(frames) != count or any(isinstance(f, SkippedFrame) for f in frames):
        raise RuntimeError(f"{path}: expected {count} posed frames")
    return (opened - t) * 1e3 / count, (done - opened) * 1e3 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()
    print(machine_line())

    scene = make_room_scene(seed=0)
    K = pinhole_intrinsics(W, H)
    frames = render_frames(scene, K, orbit_trajectory(scene, args.frames, seed=0), H, W)
    n = len(frames)
    pipeline = PerceptionPipeline(_torch_backend())
    with tempfile.TemporaryDirectory() as tmp:
        bag = write_bag(Path(tmp) / "bag", frames, storage="mcap", tf_layout="chain")
        folder = write_folder_recording(Path(tmp) / "folder", frames)
        _read_ms(bag, n)  # warm-up: first imports of rosbags and pytransform3d
        open_bag, read_bag = _read_ms(bag, n)
        open_folder, read_folder = _read_ms(folder, n)

        embed_ms, fuse_ms = [], []
        emap = EmbeddingMap(0.05)
        pipeline.embed(frames[0])  # warm-up
        for frame in frames:
            t = time.perf_counter()
            out = pipeline.embed(frame)
            embed_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            emap.integrate(out.embedding, out.depth_m, out.K, frame.T_world_cam)
            fuse_ms.append((time.perf_counter() - t) * 1e3)
        forward = statistics.median(embed_ms)

        options = ReplayOptions(progress=False)
        t = time.perf_counter()
        summary = run_replay(open_source(bag), pipeline, Path(tmp), options=options).summary
        replay_ms = (time.perf_counter() - t) * 1e3 / n
        timings = summary["timings"]
        # What replay adds around the network and the fusion, from the same run's own timings.
        overhead_ms = replay_ms - timings["embed_ms_per_frame"] - timings["integrate_ms_per_frame"]

    rows = [
        ("open bag (pass 1), per frame", open_bag),
        ("open folder, per frame", open_folder),
        ("read a posed frame from the bag", read_bag),
        ("read a posed frame from the folder", read_folder),
        ("perception pipeline (baseline)", forward),
        ("fuse 768x120x160 into the map", statistics.median(fuse_ms)),
        ("run_replay on the bag, per frame", replay_ms),
        ("  of which outside network and fusion", overhead_ms),
    ]
    print_table(
        f"Replay, {n} frames of {H}x{W}, reduced-res network with generated weights",
        "stage|ms per frame|x pipeline",
        [(name, f"{ms:.1f}", f"{ms / forward:.3f}") for name, ms in rows],
        notes=[
            "run_replay includes opening the bag, previews (every 10th frame), the final map "
            "save and the PCA-coloured PLY; its network time varies with load between the two "
            "measurements, so compare its overhead row, taken from the same run.",
            f"end to end: {1e3 / replay_ms:.2f} frames/s",
        ],
    )


def _torch_backend():
    from dve_perception.perception.backends import make_backend

    return make_backend("torch", model=build_generated("reducedres"))


if __name__ == "__main__":
    main()
