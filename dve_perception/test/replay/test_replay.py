"""Replay end to end on synthetic recordings, with the label oracle standing in for the network."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from dve_perception.errors import ConfigError
from dve_perception.frames import RGBDFrame
from dve_perception.mapping import EmbeddingMap, MapConfig, query_text
from dve_perception.replay.replay_loop import ReplayOptions, prepare_output_dir, run_replay
from dve_perception.simulation import (
    LabelColorEmbedder,
    LabelTextEncoder,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
    render_frames,
)
from dve_perception.sources.frame_source import SkippedFrame

H, W = 96, 128
VOXEL_M = 0.05
# The room's faces lie on 5 cm boundaries; shifting the world keeps them inside voxels, so "within
# one voxel" is not decided by float rounding on a boundary.
WORLD_OFFSET_M = np.array([0.0123, 0.0171, 0.0219])


class ListSource:
    """A FrameSource over a list, optionally sending SIGINT to this process at one index."""

    def __init__(self, items, interrupt_at: int | None = None) -> None:
        self.items = items
        self.interrupt_at = interrupt_at

    def __iter__(self):
        for i, item in enumerate(self.items):
            if i == self.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
            yield item

    def describe(self):
        return {"kind": "list", "items": len(self.items)}


def _shifted(frame: RGBDFrame) -> RGBDFrame:
    T = frame.T_world_cam.copy()
    T[:3, 3] += WORLD_OFFSET_M
    return replace(frame, T_world_cam=T)


@pytest.fixture(scope="module")
def room():
    scene = make_room_scene(seed=0)
    K = pinhole_intrinsics(W, H)
    poses = orbit_trajectory(scene, 12, seed=1)
    frames = [_shifted(f) for f in render_frames(scene, K, poses, H, W)]
    truth = set()
    for pose in poses:
        view = render(scene, K, pose, H, W)
        points = view.points_world[view.hit_mask] + WORLD_OFFSET_M
        truth |= set(map(tuple, np.floor(points / VOXEL_M).astype(np.int64)))
    return scene, frames, truth


def _options(**kw) -> ReplayOptions:
    config = MapConfig(voxel_size_m=VOXEL_M)
    return ReplayOptions(map_config=config, progress=False, **kw)


def test_replayed_voxels_lie_on_the_scene_surfaces_within_one_voxel(room, tmp_path):
    scene, frames, truth = room
    result = run_replay(ListSource(frames), LabelColorEmbedder(scene), tmp_path, options=_options())
    voxels = np.floor(result.map.points() / VOXEL_M).astype(np.int64)
    near = [
        any(
            (v[0] + dx, v[1] + dy, v[2] + dz) in truth
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for dz in (-1, 0, 1)
        )
        for v in voxels
    ]
    assert len(voxels) > 500
    assert np.mean(near) == 1.0
    assert result.summary["frames"]["used"] == len(frames)


def test_a_mis_scaled_intrinsics_would_be_caught_by_the_surface_check(room, tmp_path):
    # The same check on frames whose K is 10 % off must fail, or the test above proves nothing.
    scene, frames, truth = room
    bad = [replace(f, K=f.K * np.array([[1.1], [1.1], [1.0]])) for f in frames]
    result = run_replay(ListSource(bad), LabelColorEmbedder(scene), tmp_path, options=_options())
    voxels = np.floor(result.map.points() / VOXEL_M).astype(np.int64)
    near = [
        any(
            (v[0] + dx, v[1] + dy, v[2] + dz) in truth
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for dz in (-1, 0, 1)
        )
        for v in voxels
    ]
    assert np.mean(near) < 0.95


def test_query_on_the_saved_map_finds_the_labelled_box(room, tmp_path):
    scene, frames, _ = room
    run_replay(ListSource(frames), LabelColorEmbedder(scene), tmp_path, options=_options())
    emap = EmbeddingMap.load(tmp_path / "map.dvemap")
    result = query_text(emap, LabelTextEncoder(scene), "cabinet", top_k=1)
    box = next(b for b in scene.boxes if b.name == "cabinet")
    centroid = result.clusters[0].centroid_m - WORLD_OFFSET_M
    assert np.all(centroid > box.min_m - VOXEL_M) and np.all(centroid < box.max_m + VOXEL_M)


def test_skips_are_counted_by_reason_and_every_selects_frames(room, tmp_path):
    scene, frames, _ = room
    items = [
        SkippedFrame(1, "no transform", "x"),
        *frames[:6],
        SkippedFrame(2, "no depth within slop"),
        SkippedFrame(3, "no depth within slop"),
        replace(frames[6], T_world_cam=None),
    ]
    result = run_replay(
        ListSource(items), LabelColorEmbedder(scene), tmp_path, options=_options(every=2)
    )
    counts = result.summary["frames"]
    assert counts["colour_images"] == 10
    assert counts["used"] == 3  # usable frames 0, 2, 4 of the six posed ones
    assert counts["not_selected"] == 3
    assert counts["skipped"] == {"no depth within slop": 2, "no transform": 2}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["frames"] == counts


def test_frames_the_pipeline_rejects_are_skipped_not_fatal(room, tmp_path):
    scene, frames, _ = room
    embedder = LabelColorEmbedder(scene)

    class Failing:
        def embed(self, frame):
            if frame.stamp_ns == frames[1].stamp_ns:
                from dve_perception.errors import InputError

                raise InputError("bad frame")
            return embedder.embed(frame)

    result = run_replay(ListSource(frames[:3]), Failing(), tmp_path, options=_options())
    assert result.summary["frames"]["used"] == 2
    assert result.summary["frames"]["skipped"] == {"rejected (InputError)": 1}


def test_ctrl_c_stops_between_frames_and_saves_a_consistent_map(room, tmp_path):
    scene, frames, _ = room
    source = ListSource(frames, interrupt_at=4)
    result = run_replay(source, LabelColorEmbedder(scene), tmp_path, options=_options())
    assert result.interrupted
    assert result.summary["frames"]["used"] == 4
    loaded = EmbeddingMap.load(tmp_path / "map.dvemap")
    assert len(loaded) == len(result.map) > 0
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_max_frames_and_outputs(room, tmp_path):
    scene, frames, _ = room
    result = run_replay(
        ListSource(frames),
        LabelColorEmbedder(scene),
        tmp_path,
        options=_options(max_frames=5, preview_every=2, max_previews=2),
        prototypes=LabelTextEncoder(scene).encode(scene.label_names),
    )
    assert result.summary["frames"]["used"] == 5
    names = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert names == [
        f"frame_{i:06d}_{kind}.png" for i in (0, 2) for kind in ("pca", "rgb", "segmentation")
    ]
    assert (tmp_path / "map_pca.ply").stat().st_size > 0


def test_an_existing_output_folder_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        prepare_output_dir(tmp_path / "out")
    assert prepare_output_dir(tmp_path / "out", overwrite=True) == tmp_path / "out"
    assert (tmp_path / "out" / "keep.txt").exists()
    assert prepare_output_dir(tmp_path / "new").is_dir()


def test_options_are_validated():
    with pytest.raises(ConfigError, match="every must be a positive integer"):
        ReplayOptions(every=0)
    with pytest.raises(ConfigError, match="max_frames"):
        ReplayOptions(max_frames=0)
