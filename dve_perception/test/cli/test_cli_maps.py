"""`dve-perception replay`, `query`, `demo` and `weights` from the command line.

A tiny DVEFormer with the real 768-d output replaces the real-size model (the CLI's model lookup
is patched) so these tests check the commands' plumbing, files and messages in seconds; the real
model runs in the sample and parity tests.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from dve_perception.cli import main as cli
from dve_perception.mapping import EmbeddingMap
from dve_perception.mapping.map_config import FEATURE_ENCODINGS
from dve_perception.perception import pipeline_setup as perception_setup
from dve_perception.simulation import (
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render_frames,
)
from dve_perception.sources import write_bag, write_folder_recording


@pytest.fixture
def tiny_network(monkeypatch):
    from dve_perception.model import build_dveformer
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer(replace(TINY_TEST_CONFIG, embedding_dim=768, n_upsamplings=0))
    model.load_state_dict(generate_state_dict(model, seed=3))
    calls = []

    def fake_resolve(variant, weights, models_dir, *, trusted=False):
        calls.append((variant, weights, models_dir, trusted))
        return model, None

    monkeypatch.setattr(perception_setup, "resolve_model", fake_resolve)
    return calls


@pytest.fixture(scope="module")
def frames():
    scene = make_room_scene(seed=0)
    K = pinhole_intrinsics(64, 48)
    return render_frames(scene, K, orbit_trajectory(scene, 4, seed=0), 48, 64)


def _warnings(caplog):
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_replay_writes_the_map_and_a_summary_and_says_the_weights_are_generated(
    tmp_path, frames, tiny_network, tiny_text_model, capsys, caplog
):
    bag = write_bag(tmp_path / "bag", frames, storage="mcap")
    out = tmp_path / "out"
    argv = ["replay", str(bag), "--out", str(out), "--every", "2", "--no-progress"]
    code = cli.main([*argv, "--text-model", str(tiny_text_model), "--vocabulary", "wall,floor"])
    assert code == 0
    assert "2 of 4 colour images used" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["used"] == 2 and summary["frames"]["not_selected"] == 2
    assert summary["meaningful_weights"] is False and summary["source"]["kind"] == "rosbag2"
    assert len(EmbeddingMap.load(out / "map.dvemap")) > 0
    assert (out / "previews" / "frame_000000_segmentation.png").is_file()
    assert "carry no meaning" in _warnings(caplog)
    assert tiny_network[0][0] == "reducedres"


def test_replay_refuses_an_existing_output_folder_in_one_line(tmp_path, frames, capsys):
    folder = write_folder_recording(tmp_path / "rec", frames)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep me")
    assert cli.main(["replay", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err and "--overwrite" in err
    assert err.count("\n") == 1
    assert (tmp_path / "out" / "old.txt").read_text() == "keep me"


def test_replay_takes_map_settings_from_the_nodes_parameters_file(
    tmp_path, frames, tiny_network, capsys
):
    folder = write_folder_recording(tmp_path / "rec", frames[:2])
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    backend: torch\n"
        "    map:\n      voxel_size_m: 0.1\n      max_voxels: 50000\n"
    )
    argv = ["replay", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]
    options = ["--params", str(params), "--max-voxels", "60000", "--feature-encoding", "pca_int"]
    code = cli.main([*argv, "--no-segmentation", *options])
    assert code == 0, capsys.readouterr().err
    emap = EmbeddingMap.load(tmp_path / "out" / "map.dvemap")
    assert emap.voxel_size_m == 0.1  # from the file
    assert emap.config.max_voxels == 60000  # the option wins over the file
    # pca_dim is left at 0 by the file, so the encoding picks its 256 B size.
    assert emap.config.feature_encoding == "pca_int" and emap.config.basis_dim == 222


def test_the_replay_encodings_are_the_maps():
    parser = cli.build_parser()
    replay = parser._subparsers._group_actions[0].choices["replay"]
    option = next(a for a in replay._actions if a.dest == "feature_encoding")
    assert tuple(option.choices) == FEATURE_ENCODINGS


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["replay", "{tmp}/missing", "--out", "{tmp}/o"], "is not a recording"),
        (["replay", "{rec}", "--out", "{tmp}/o", "--color-topic", "/x"], "color_topic"),
        (["replay", "{rec}", "--out", "{tmp}/o", "--every", "0"], "every must be a positive"),
        (["replay", "{rec}", "--out", "{tmp}/o", "--voxel-size", "-1"], "voxel_size_m"),
        (["replay", "{rec}", "--out", "{tmp}/o", "--params", "{tmp}/none.yaml"], "none.yaml"),
        (["replay", "{rec}", "--out", "{tmp}/o", "--onnx", "m.onnx"], "--onnx applies to"),
        (
            ["replay", "{rec}", "--out", "{tmp}/o", "--backend", "tensorrt", "--engine", "m.plan"],
            "m.plan does not exist",
        ),
        (["query", "{tmp}/missing.dvemap", "a mug"], "missing.dvemap"),
        (["demo", "--out", "{tmp}/o", "--frames", "0"], "--frames must be at least 1"),
    ],
)
def test_bad_arguments_end_in_one_clear_line(tmp_path, frames, capsys, argv, match):
    rec = tmp_path / "rec"
    if not rec.exists():
        write_folder_recording(rec, frames[:2])
    args = [a.format(tmp=tmp_path, rec=rec) for a in argv]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith(f"dve-perception {argv[0]}: error:")


def test_query_prints_matches_and_writes_the_report_files(tmp_path, tiny_text_model, capsys):
    rng = np.random.default_rng(0)
    emap = EmbeddingMap(0.05)
    embedding = rng.standard_normal((768, 20, 30)).astype(np.float32)
    K = np.array([[30.0, 0, 14.5], [0, 30.0, 9.5], [0, 0, 1]])
    emap.integrate(embedding, np.full((20, 30), 1.5, np.float32), K, np.eye(4))
    emap.save(tmp_path / "map.dvemap")
    argv = ["query", str(tmp_path / "map.dvemap"), "a red mug", "--negatives", "table"]
    code = cli.main([*argv, "--top-k", "2", "--json", "--text-model", str(tiny_text_model)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["text"] == "a red mug" and "table" in report["negatives"]
    assert len(report["matches"]) <= 2
    for name in ("a_red_mug_heat.ply", "a_red_mug_topdown.png", "a_red_mug.json"):
        assert (tmp_path / "queries" / name).is_file()
    assert cli.main([*argv, "--top-k", "0", "--text-model", str(tiny_text_model)]) == 2


@pytest.mark.slow
def test_demo_builds_a_bag_replays_it_and_answers_queries(
    tmp_path, tiny_network, tiny_text_model, capsys, caplog
):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--frames", "2", "--no-progress"]
    assert cli.main([*argv, "--text-model", str(tiny_text_model), "--queries", "a sofa"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 colour images used" in printed and "query 'a sofa'" in printed
    assert (out / "recording" / "metadata.yaml").is_file()
    assert (out / "replay" / "map.dvemap").is_file()
    assert (out / "queries" / "a_sofa_topdown.png").is_file()
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["meaningful"] is False and "no meaning" in summary["note"]
    assert "NO meaning" in _warnings(caplog)
    # A second run needs --overwrite, and then replaces the outputs.
    assert cli.main([*argv, "--text-model", str(tiny_text_model)]) == 2
    assert cli.main([*argv, "--overwrite", "--text-model", str(tiny_text_model)]) == 0


def test_weights_lists_what_is_missing_and_how_to_get_it(tmp_path, capsys):
    assert cli.main(["weights", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dveformer_reducedres_mixed.pth" in out and "missing" in out
    assert "drive.google.com" in out and "clip-vit-large-patch14-336" in out
