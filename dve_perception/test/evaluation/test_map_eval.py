"""3D map evaluation: voxel ground truth, per-class voxel IoU of queries, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dve_perception.cli.main import main
from dve_perception.errors import InputError
from dve_perception.evaluation.map_eval import (
    VoxelLabels,
    evaluate_map,
    voxel_labels_from_frames,
    voxel_labels_from_rendered,
)
from dve_perception.images import write_png
from dve_perception.mapping import EmbeddingMap, MapConfig
from dve_perception.mapping.voxel_hash import pack_voxel_keys
from dve_perception.replay.replay_loop import ReplayOptions, run_replay
from dve_perception.simulation import (
    LabelColorEmbedder,
    LabelTextEncoder,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
    render_frames,
    voxel_label_majority,
)
from dve_perception.sources.folder import FolderSource, write_folder_recording
from dve_perception.sources.trajectory import format_seconds

H, W = 96, 128
VOXEL_M = 0.05
# The room's faces lie on 5 cm boundaries; a generic shift keeps them inside voxels, so which
# voxel a surface falls in is not decided by float rounding.
OFFSET_M = np.array([0.0123, 0.0171, 0.0219])
BOXES = ("table", "cabinet", "stool", "storage crate", "trash bin", "red mug box")
#: The label oracle gives every pixel its label's exact prototype, so a voxel can only be wrong
#: where it straddles two surfaces (box edge on the floor); with 5 cm voxels and boxes of
#: 20-120 cm that is a few per cent of a box's voxels (the measured minimum is 0.96).
MIN_IOU = 0.9


def _shift_pose(T: np.ndarray) -> np.ndarray:
    T = T.copy()
    T[:3, 3] += OFFSET_M
    return T


@pytest.fixture(scope="module")
def room():
    scene = make_room_scene(seed=0)
    K = pinhole_intrinsics(W, H)
    poses = orbit_trajectory(scene, 12, seed=1)
    frames = [
        replace(f, T_world_cam=_shift_pose(f.T_world_cam))
        for f in render_frames(scene, K, poses, H, W)
    ]
    rendered = []
    for pose in poses:
        view = render(scene, K, pose, H, W)
        shifted = view.points_world + OFFSET_M.astype(np.float32)
        rendered.append(replace(view, points_world=shifted, T_world_cam=_shift_pose(pose)))
    emap = EmbeddingMap(VOXEL_M, max_depth_m=10.0)  # the whole room
    embedder = LabelColorEmbedder(scene)
    for frame in frames:
        e = embedder.embed(frame)
        emap.integrate(e.embedding, e.depth_m, e.K, frame.T_world_cam)
    truth = voxel_labels_from_rendered(rendered, VOXEL_M, scene.label_names)
    return scene, frames, rendered, emap, truth


def test_boxes_are_found_with_high_voxel_iou_in_both_variants(room):
    scene, _, _, emap, truth = room
    result = evaluate_map(emap, LabelTextEncoder(scene), scene.label_names, truth)
    assert result.score_name == "relevancy" and np.allclose(result.thresholds, 0.5)
    for name in BOXES:
        k = scene.label_names.index(name)
        assert result.threshold_iou[k] >= MIN_IOU, (name, result.threshold_iou[k])
        assert result.argmax_iou[k] >= MIN_IOU, (name, result.argmax_iou[k])
    assert result.argmax_miou >= MIN_IOU and result.threshold_miou >= MIN_IOU
    assert result.scored_voxels + result.map_voxels_without_gt == len(emap)
    assert result.scored_voxels > 0.8 * len(emap)


def test_swapped_class_names_give_low_iou_for_the_swapped_classes(room):
    scene, _, _, emap, truth = room
    names = list(scene.label_names)
    a, b = names.index("table"), names.index("cabinet")
    names[a], names[b] = names[b], names[a]
    result = evaluate_map(emap, LabelTextEncoder(scene), names, truth)
    assert result.threshold_iou[a] < 0.1 and result.threshold_iou[b] < 0.1
    assert result.argmax_iou[a] < 0.1 and result.argmax_iou[b] < 0.1
    assert result.threshold_iou[names.index("stool")] >= MIN_IOU


def test_counting_unmapped_ground_truth_as_misses_lowers_iou_by_the_unmapped_voxels(room):
    scene, _, _, emap, truth = room
    encoder = LabelTextEncoder(scene)
    ignore = evaluate_map(emap, encoder, scene.label_names, truth)
    miss = evaluate_map(emap, encoder, scene.label_names, truth, unmapped="miss")
    # The full-resolution ground truth has voxels the 1/4-resolution embeddings never reached.
    assert miss.gt_unmapped.sum() > 0
    k = scene.label_names.index("cabinet")
    inter = ignore.threshold_iou[k] * _union(ignore, k)
    assert math.isclose(miss.threshold_iou[k], inter / (_union(ignore, k) + miss.gt_unmapped[k]))


def test_ground_truth_at_the_embedding_size_holds_only_voxels_the_map_could_see(room):
    scene, frames, rendered, emap, full = room
    labels = [view.labels + 1 for view in rendered]
    size = (H // 4, W // 4)  # LabelColorEmbedder's output, like the reduced-res network
    truth = voxel_labels_from_frames(
        zip(frames, labels, strict=True), VOXEL_M, max_depth_m=10.0, size=size
    )
    encoder = LabelTextEncoder(scene)
    result = evaluate_map(emap, encoder, scene.label_names, truth, unmapped="miss")
    assert result.gt_unmapped.sum() == 0 and 0 < len(truth) < len(full)
    for name in BOXES:
        assert result.threshold_iou[scene.label_names.index(name)] >= MIN_IOU, name
    with pytest.raises(InputError, match="size must be two positive integers"):
        voxel_labels_from_frames(zip(frames, labels, strict=True), VOXEL_M, size=(0, 32))


def _union(result, k: int) -> float:
    # |P| + |G| - |P & G| over scored voxels, from the counts the result reports.
    gt_scored = result.gt_voxels[k] - result.gt_unmapped[k]
    iou = result.threshold_iou[k]
    return (result.predicted_voxels[k] + gt_scored) / (1 + iou)


def test_back_projected_labels_agree_with_the_exact_hit_point_majority(room):
    scene, _, rendered, _, truth = room
    voxels, labels = voxel_label_majority(rendered, VOXEL_M)
    projected = voxel_labels_from_frames([(r, r.labels + 1) for r in rendered], VOXEL_M)
    exact = dict(zip(map(tuple, voxels.tolist()), (labels + 1).tolist(), strict=True))
    mine = dict(zip(map(tuple, projected.voxels.tolist()), projected.labels.tolist(), strict=True))
    # Float32 back-projection may put a point within ~1e-6 m of a voxel face next door: allow
    # 0.1 % of the voxels to differ (with the shifted world none do).
    assert len(exact.keys() ^ mine.keys()) <= 0.001 * len(exact)
    same = [exact[v] == mine[v] for v in exact.keys() & mine.keys()]
    assert np.mean(same) >= 0.999
    assert len(truth) == len(exact)


class _Frame:
    def __init__(self, depth_m, K, T_world_cam):
        self.depth_m, self.K, self.T_world_cam = depth_m, K, T_world_cam


def _row_frame() -> _Frame:
    # Three pixels at 1 m: x = (u - 1) / 100 + 0.5 -> 0.49, 0.50, 0.51, y = 0.5, z = 1: all in
    # voxel (0, 0, 1) of 1 m voxels.
    K = np.array([[100.0, 0, 1.0], [0, 100.0, 0.0], [0, 0, 1]])
    T = np.eye(4)
    T[:2, 3] = 0.5
    return _Frame(np.ones((1, 3), np.float32), K, T)


def test_majority_vote_ignores_void_and_breaks_ties_towards_the_smaller_id():
    frame = _row_frame()
    key = int(pack_voxel_keys(torch.tensor([[0, 0, 1]]))[0])
    two_wins = voxel_labels_from_frames([(frame, np.array([[2, 2, 1]]))], 1.0)
    assert two_wins.keys.tolist() == [key] and two_wins.labels.tolist() == [2]
    tie = voxel_labels_from_frames([(frame, np.array([[0, 3, 1]]))], 1.0)
    assert tie.labels.tolist() == [1]
    across_frames = voxel_labels_from_frames(
        [(frame, np.array([[3, 0, 0]])), (frame, np.array([[3, 1, 0]]))], 1.0
    )
    assert across_frames.labels.tolist() == [3]
    assert len(voxel_labels_from_frames([(frame, np.zeros((1, 3), int))], 1.0)) == 0
    far = voxel_labels_from_frames([(frame, np.array([[2, 2, 1]]))], 1.0, max_depth_m=0.5)
    assert len(far) == 0


def _tiny_map() -> EmbeddingMap:
    emap = EmbeddingMap(config=MapConfig(voxel_size_m=0.1, embedding_dim=3))
    voxels = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]])
    features = torch.tensor(
        [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 0, 1]], dtype=torch.float16
    )
    emap.storage.load_state(
        voxels, features, torch.ones(5), torch.zeros(5, dtype=torch.int64), None
    )
    return emap


class _AxisEncoder:
    def encode(self, texts):
        table = {"a": [1.0, 0, 0], "b": [0, 1.0, 0]}
        return torch.tensor([table[t] for t in texts])


def _tiny_truth() -> VoxelLabels:
    # v0: a, v1: b, v2: b, v3: a, (9, 0, 0): a but not in the map; v4 has no ground truth.
    voxels = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [9, 0, 0]])
    keys = pack_voxel_keys(voxels).numpy()
    return VoxelLabels(0.1, keys, np.array([1, 2, 2, 1, 1]))


def test_a_hand_made_map_gives_the_hand_computed_ious():
    result = evaluate_map(
        _tiny_map(), _AxisEncoder(), ["a", "b"], _tiny_truth(), negatives=(), threshold=0.5
    )
    # Cosines: a -> (1, 1, 0, 0.8, 0), b -> (0, 0, 1, 0.6, 0); threshold 0.5 on scored v0..v3:
    # P_a = {v0, v1, v3}, G_a = {v0, v3}: 2 / 3. P_b = {v2, v3}, G_b = {v1, v2}: 1 / 3.
    assert result.score_name == "cosine"
    np.testing.assert_allclose(result.threshold_iou, [2 / 3, 1 / 3])
    # Argmax: v0 -> a (a), v1 -> a (b), v2 -> b (b), v3 -> a (a): rows truth, columns argmax.
    assert result.confusion.counts.tolist() == [[2, 0], [1, 1]]
    np.testing.assert_allclose(result.argmax_iou, [2 / 3, 1 / 2])
    assert math.isclose(result.argmax_miou, (2 / 3 + 1 / 2) / 2)
    assert (result.map_voxels, result.scored_voxels, result.map_voxels_without_gt) == (5, 4, 1)
    assert result.gt_unmapped.tolist() == [1, 0] and result.gt_voxels.tolist() == [3, 2]
    missed = evaluate_map(
        _tiny_map(),
        _AxisEncoder(),
        ["a", "b"],
        _tiny_truth(),
        negatives=(),
        threshold=0.5,
        unmapped="miss",
    )
    np.testing.assert_allclose(missed.threshold_iou, [2 / 4, 1 / 3])
    np.testing.assert_allclose(missed.argmax_iou, [2 / 4, 1 / 2])
    table = missed.format_table()
    assert "66.7" not in table and "50.0" in table and "counted as misses" in table
    assert json.loads(json.dumps(result.to_dict()))["classes"][1]["threshold_iou"] == round(
        1 / 3, 6
    )


def test_a_class_absent_everywhere_has_nan_iou_and_is_left_out_of_the_mean():
    truth = _tiny_truth()
    emap = _tiny_map()
    result = evaluate_map(emap, _AxisEncoder(), ["a", "b"], truth, negatives=(), threshold=2.0)
    # Nothing passes a threshold of 2; both classes still have ground truth: IoU 0.
    assert result.threshold_iou.tolist() == [0.0, 0.0]
    only_a = VoxelLabels(0.1, truth.keys[:1], np.array([1]))
    result = evaluate_map(emap, _AxisEncoder(), ["a", "b"], only_a, negatives=(), threshold=2.0)
    assert math.isnan(result.threshold_iou[1]) and result.threshold_miou == 0.0


def test_voxel_labels_round_trip_through_npz(tmp_path):
    truth = replace(_tiny_truth(), class_names=("a", "b"))
    loaded = VoxelLabels.load(truth.save(tmp_path / "gt.npz"))
    order = np.argsort(truth.keys)
    assert loaded.keys.tolist() == truth.keys[order].tolist()
    assert loaded.labels.tolist() == truth.labels[order].tolist()
    assert loaded.class_names == ("a", "b") and loaded.voxel_size_m == 0.1


def test_bad_inputs_are_reported():
    emap, truth, enc = _tiny_map(), _tiny_truth(), _AxisEncoder()
    with pytest.raises(InputError, match="0.05 m voxels but the map 0.1 m"):
        evaluate_map(emap, enc, ["a", "b"], replace(truth, voxel_size_m=0.05), negatives=())
    with pytest.raises(InputError, match=r"labels \[2\] are outside 1..1"):
        evaluate_map(emap, enc, ["a"], truth, negatives=())
    with pytest.raises(InputError, match="unique non-blank"):
        evaluate_map(emap, enc, ["a", "a"], truth, negatives=())
    with pytest.raises(InputError, match="unmapped must be one of"):
        evaluate_map(emap, enc, ["a", "b"], truth, negatives=(), unmapped="drop")
    with pytest.raises(InputError, match="not a single string"):
        evaluate_map(emap, enc, ["a", "b"], truth, negatives="object")
    frame = _row_frame()
    with pytest.raises(InputError, match=r"are \(1, 2\) but its depth is \(1, 3\)"):
        voxel_labels_from_frames([(frame, np.ones((1, 2), int))], 1.0)
    with pytest.raises(InputError, match="contain -1"):
        voxel_labels_from_frames([(frame, -np.ones((1, 3), int))], 1.0)
    with pytest.raises(InputError, match="must be integers"):
        voxel_labels_from_frames([(frame, np.ones((1, 3)))], 1.0)
    with pytest.raises(InputError, match="has no T_world_cam"):
        voxel_labels_from_frames(
            [(_Frame(frame.depth_m, frame.K, None), np.ones((1, 3), int))], 1.0
        )
    with pytest.raises(InputError, match="voxel_size_m must be a positive"):
        voxel_labels_from_frames([], 0.0)


def test_bad_voxel_label_files_are_reported(tmp_path):
    with pytest.raises(InputError, match="cannot read voxel labels"):
        VoxelLabels.load(tmp_path / "missing.npz")
    np.savez(
        tmp_path / "bad.npz",
        voxel_size_m=0.1,
        voxels=np.zeros((2, 2)),
        labels=np.ones(2),
        class_names=np.array([]),
    )
    with pytest.raises(InputError, match=r"voxels must be \(M, 3\)"):
        VoxelLabels.load(tmp_path / "bad.npz")


@pytest.fixture
def labelled_recording(room, tmp_path, monkeypatch):
    scene, frames, rendered, _, _ = room
    recording = write_folder_recording(tmp_path / "rec", frames)
    (recording / "semantic").mkdir()
    for frame, view in zip(frames, rendered, strict=True):
        write_png(
            recording / "semantic" / f"{format_seconds(frame.stamp_ns)}.png",
            (view.labels + 1).astype(np.uint8),
        )
    (recording / "classes.txt").write_text("\n".join(scene.label_names) + "\n")
    options = ReplayOptions(map_config=MapConfig(voxel_size_m=VOXEL_M), progress=False)
    run_replay(
        FolderSource(recording), LabelColorEmbedder(scene), tmp_path / "out", options=options
    )
    encoder = LabelTextEncoder(scene)
    monkeypatch.setattr(
        "dve_perception.installed.models_folder.resolve_text_encoder",
        lambda *_: (encoder, "oracle", True),
    )
    return recording, tmp_path / "out" / "map.dvemap"


def test_cli_evaluates_a_replayed_labelled_recording_end_to_end(
    labelled_recording, tmp_path, capsys
):
    recording, map_path = labelled_recording
    npz = tmp_path / "labels.npz"
    args = ["evaluate-map", str(map_path), "--labels", str(recording)]
    assert main([*args, "--json", "--save-labels", str(npz)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold_miou"] >= MIN_IOU and report["argmax_miou"] >= MIN_IOU
    assert [c["class"] for c in report["classes"]] == list(room_names(recording))
    assert main(["evaluate-map", str(map_path), "--labels", str(npz)]) == 0
    assert "mIoU" in capsys.readouterr().out
    full = report["gt_voxels_unmapped"]
    size = ["--label-size", str(H // 4), str(W // 4)]
    assert main([*args, "--json", "--unmapped", "miss", *size]) == 0
    at_embedding_size = json.loads(capsys.readouterr().out)
    assert full > 0 and at_embedding_size["gt_voxels_unmapped"] == 0
    assert main(["evaluate-map", str(map_path), "--labels", str(npz), *size]) == 2
    assert "--label-size applies to a recording folder" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "nowhere")]) == 2
    assert "does not exist; expected a labelled recording" in capsys.readouterr().err
    (recording / "semantic").rename(recording / "labels")
    assert main(args) == 2
    assert "semantic/<t>.png" in capsys.readouterr().err


def room_names(recording) -> list[str]:
    return (recording / "classes.txt").read_text().split("\n")[:-1]
