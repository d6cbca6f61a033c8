"""Query reports on the synthetic room: the right object, valid files, safe names, clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dve_perception.cli.query_report import (
    TOPDOWN_SIZE_PX,
    QueryReport,
    query_slug,
    run_query,
    write_topdown_png,
)
from dve_perception.errors import InputError, MapFileError
from dve_perception.mapping import EmbeddingMap
from dve_perception.mapping.query import CANONICAL_NEGATIVES, VoxelCluster
from dve_perception.ply import read_ply
from dve_perception.simulation import (
    make_embeddings,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
)

VOXEL_SIZE_M = 0.05
DIM = 64
H, W = 60, 80
#: The room's faces lie on 5 cm boundaries, i.e. on voxel faces; a generic shift avoids the
#: float32 rounding degeneracy there (as in test_synthetic_room.py).
WORLD_OFFSET_M = np.array([0.0123, 0.0171, 0.0219])


class PrototypeEncoder:
    """Label names -> the scene's prototypes; any other phrase -> a fixed random unit vector."""

    def __init__(self, scene) -> None:
        self.scene = scene

    def encode(self, texts):
        rows = []
        for text in texts:
            if text in self.scene.label_names:
                rows.append(torch.tensor(self.scene.prototypes[self.scene.label_id(text)]))
                continue
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
            rows.append(v / v.norm())
        return torch.stack(rows).float()


@pytest.fixture(scope="module")
def room():
    scene = make_room_scene(seed=0, embedding_dim=DIM)
    K = pinhole_intrinsics(W, H)
    rng = np.random.default_rng(0)
    emap = EmbeddingMap(VOXEL_SIZE_M, embedding_dim=DIM, max_depth_m=10.0)
    for pose in orbit_trajectory(scene, 12, seed=0):
        frame = render(scene, K, pose, H, W)
        T = frame.T_world_cam.copy()
        T[:3, 3] += WORLD_OFFSET_M
        emap.integrate(
            make_embeddings(frame, scene, pixel_noise_std=0.5, rng=rng), frame.depth_m, K, T
        )
    return scene, emap, PrototypeEncoder(scene)


@pytest.fixture(scope="module")
def map_file(room, tmp_path_factory):
    _, emap, _ = room
    return emap.save(tmp_path_factory.mktemp("map") / "room.dvemap")


def _mug_box(scene):
    box = next(b for b in scene.boxes if b.name == "red mug box")
    return box.min_m + WORLD_OFFSET_M, box.max_m + WORLD_OFFSET_M


def test_top_match_is_the_queried_object(room):
    scene, emap, encoder = room
    report = run_query(emap, encoder, "red mug box")
    assert report.score_name == "relevancy" and report.threshold == 0.5
    assert report.negatives == CANONICAL_NEGATIVES
    assert report.num_voxels_scored == len(emap) and report.files == ()
    top = report.matches[0]
    low, high = _mug_box(scene)
    margin = 2 * VOXEL_SIZE_M
    centroid = np.array(top["centroid_m"])
    assert np.all(centroid >= low - margin) and np.all(centroid <= high + margin)
    assert np.all(np.array(top["box_min_m"]) < high) and np.all(np.array(top["box_max_m"]) > low)
    assert top["rank"] == 1 and top["num_voxels"] > 10 and top["score"] > 0.5
    scores = [m["score"] for m in report.matches]
    assert scores == sorted(scores, reverse=True)


def test_user_negatives_are_reported_after_the_canonical_ones(room):
    _, emap, encoder = room
    report = run_query(emap, encoder, "red mug box", negatives=["floor", "object"], top_k=2)
    assert report.negatives == (*CANONICAL_NEGATIVES, "floor")
    assert len(report.matches) <= 2


def test_files_are_written_and_valid(room, map_file, tmp_path):
    _, emap, encoder = room
    out = tmp_path / "out"
    report = run_query(map_file, encoder, "red mug box", out_dir=out)
    names = sorted(p.name for p in report.files)
    assert names == ["red_mug_box.json", "red_mug_box_heat.ply", "red_mug_box_topdown.png"]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind
    with Image.open(out / "red_mug_box_topdown.png") as image:
        assert image.format == "PNG" and image.size == TOPDOWN_SIZE_PX
    ply = read_ply(out / "red_mug_box_heat.ply")
    assert ply["x"].shape[0] == len(emap) and "score" in ply and "red" in ply
    saved = json.loads((out / "red_mug_box.json").read_text(encoding="utf-8"))
    assert saved == report.to_dict()
    assert saved["matches"][0]["rank"] == 1 and saved["score_name"] == "relevancy"


def test_format_text_lists_rank_and_position(room):
    _, emap, encoder = room
    report = run_query(emap, encoder, "red mug box", top_k=1)
    text = report.format_text()
    x, y, z = report.matches[0]["centroid_m"]
    assert "rank" in text and "red mug box" in text
    assert f"{x:.3f}" in text and f"{y:.3f}" in text and f"{z:.3f}" in text
    assert "   1  " in text


def test_to_dict_rounds_floats():
    report = QueryReport(
        text="mug",
        negatives=("object",),
        score_name="relevancy",
        threshold=0.5,
        matches=(
            {
                "rank": 1,
                "centroid_m": [0.123456789, 1.0, 2.0],
                "box_min_m": [0.0, 0.0, 0.0],
                "box_max_m": [1.0, 1.0, 1.0],
                "box_size_m": [1.0, 1.0, 1.0],
                "score": 0.612345678,
                "mean_score": 0.55,
                "num_voxels": 7,
            },
        ),
        num_voxels_scored=100,
    )
    match = report.to_dict()["matches"][0]
    assert match["centroid_m"][0] == 0.123 and match["score"] == 0.6123
    json.dumps(report.to_dict())


def test_empty_result_says_nothing_passed_the_threshold(room, tmp_path):
    _, emap, encoder = room
    report = run_query(emap, encoder, "a unicorn", threshold=0.99, out_dir=tmp_path)
    assert report.matches == ()
    assert "no match above the threshold 0.99" in report.format_text()
    assert json.loads((tmp_path / "a_unicorn.json").read_text())["matches"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red mug", "a_red_mug"),
        ("  A Red   MUG!! ", "a_red_mug"),
        ("../../etc/passwd", "etc_passwd"),
        ("café au lait", "cafe_au_lait"),
    ],
)
def test_slug_is_lowercase_and_safe(text, expected):
    assert query_slug(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "../..", "杯子", "🙂", "x" * 500, ".hidden"])
def test_slug_edge_cases_are_never_empty_or_unsafe(text):
    slug = query_slug(text)
    assert slug and len(slug) <= 60
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in slug)
    assert not slug.startswith((".", "_"))


def test_distinct_non_latin_or_long_queries_get_distinct_slugs():
    assert query_slug("杯子") != query_slug("桌子")
    assert query_slug("x" * 100 + "a") != query_slug("x" * 100 + "b")


def test_missing_map_file_raises_map_file_error(room, tmp_path):
    _, _, encoder = room
    with pytest.raises(MapFileError):
        run_query(tmp_path / "nope.dvemap", encoder, "red mug box")


def test_corrupt_map_file_raises_map_file_error(room, map_file, tmp_path):
    _, _, encoder = room
    corrupt = tmp_path / "corrupt.dvemap"
    corrupt.write_bytes(map_file.read_bytes()[: map_file.stat().st_size // 2])
    with pytest.raises(MapFileError):
        run_query(corrupt, encoder, "red mug box", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    garbage = tmp_path / "garbage.dvemap"
    garbage.write_bytes(b"not a map at all")
    with pytest.raises(MapFileError):
        run_query(garbage, encoder, "red mug box")


def test_blank_query_is_an_input_error(room):
    _, emap, encoder = room
    with pytest.raises(InputError):
        run_query(emap, encoder, "  ")


def test_topdown_png_for_a_million_voxels_is_fast(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.uniform([-10, -10, 0], [10, 10, 3], (1_000_000, 3)).astype(np.float32)
    scores = rng.uniform(0, 1, 1_000_000).astype(np.float32)
    cluster = VoxelCluster(
        centroid_m=np.array([1.0, 1.0, 1.0]),
        box_min_m=np.array([0.5, 0.5, 0.0]),
        box_max_m=np.array([1.5, 1.5, 2.0]),
        score=0.9,
        mean_score=0.8,
        voxel_count=10,
        voxel_ids=np.arange(10),
    )
    start = time.perf_counter()
    path = write_topdown_png(
        tmp_path / "big.png", points, scores, 0.05, [cluster], "big", min_score=0.5
    )
    assert time.perf_counter() - start < 20.0
    with Image.open(path) as image:
        assert image.size == TOPDOWN_SIZE_PX


def test_topdown_png_of_an_empty_map(tmp_path):
    path = write_topdown_png(tmp_path / "e.png", np.zeros((0, 3)), np.zeros(0), 0.05, [], "empty")
    with Image.open(path) as image:
        assert image.size == TOPDOWN_SIZE_PX


def test_topdown_png_rejects_mismatched_scores(tmp_path):
    with pytest.raises(InputError, match="N scores"):
        write_topdown_png(tmp_path / "x.png", np.zeros((3, 3)), np.zeros(2), 0.05, [], "x")
    assert not (tmp_path / "x.png").exists()


def test_topdown_png_does_not_touch_pyplot_state(tmp_path):
    # In a fresh interpreter: other tests in this session may have imported pyplot themselves.
    script = (
        "import sys, numpy as np\n"
        "from dve_perception.cli.query_report import write_topdown_png\n"
        f"path = {str(tmp_path / 'p.png')!r}\n"
        "write_topdown_png(path, np.zeros((1, 3)), np.ones(1), 0.05, [], 't')\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
