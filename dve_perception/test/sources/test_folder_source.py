"""Recording folders: written from frames, read back as the same posed frames, and every error."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from dve_perception.errors import InputError
from dve_perception.frames import RGBDFrame
from dve_perception.images import write_png
from dve_perception.sources import FolderSource, SkippedFrame, open_source, write_folder_recording
from dve_perception.sources.trajectory import (
    format_seconds,
    read_tum_trajectory,
    write_tum_trajectory,
)


@pytest.fixture
def recording(tmp_path, room_frames):
    return write_folder_recording(tmp_path / "rec", room_frames)


def _stem(frame):
    return format_seconds(frame.stamp_ns)


def test_a_written_folder_reads_back_as_the_same_frames(recording, room_frames, assert_same_frame):
    items = list(FolderSource(recording))
    assert len(items) == len(room_frames)
    for got, want in zip(items, room_frames, strict=True):
        assert_same_frame(got, want)


def test_the_folder_layout_uses_second_stems_with_nine_decimals(recording, room_frames):
    first = room_frames[0]
    assert (recording / "rgb" / "1700000000.123456789.png").is_file()
    assert sorted(p.name for p in (recording / "depth").iterdir())[0] == "1700000000.123456789.png"
    camera = json.loads((recording / "camera.json").read_text())
    assert camera == {
        "width": 64,
        "height": 48,
        "fx": first.K[0, 0],
        "fy": first.K[1, 1],
        "cx": first.K[0, 2],
        "cy": first.K[1, 2],
        "depth_scale_m": 0.001,
        "frame_id": "camera_color_optical_frame",
    }
    stamps, _ = read_tum_trajectory(recording / "poses.txt")
    assert stamps.tolist() == [f.stamp_ns for f in room_frames]


def test_describe_reports_the_folder_and_its_counts(recording):
    source = FolderSource(recording)
    list(source)
    info = source.describe()
    assert info["kind"] == "folder" and info["path"] == str(recording)
    assert (info["color_images"], info["depth_images"], info["paired"], info["frames"]) == (
        6,
        6,
        6,
        6,
    )
    assert info["skipped"] == {} and info["size"] == [48, 64]


def test_tum_style_stems_with_depth_a_few_milliseconds_off_are_paired(
    tmp_path, room_frames, assert_same_frame
):
    frame = room_frames[0]
    root = tmp_path / "tum"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    write_png(root / "rgb" / "1305031102.175304.png", frame.rgb)
    Image.fromarray(frame.rgb).save(root / "rgb" / "1305031102.275304.jpg", quality=95)
    depth_mm = np.round(frame.depth_m * 5000).astype(np.uint16)  # TUM RGB-D: 5000 units per m
    write_png(root / "depth" / "1305031102.160480.png", depth_mm)
    write_png(root / "depth" / "1305031102.262364.png", depth_mm)
    fx, fy, cx, cy = frame.K[0, 0], frame.K[1, 1], frame.K[0, 2], frame.K[1, 2]
    camera = {"width": 64, "height": 48, "fx": fx, "fy": fy, "cx": cx, "cy": cy}
    (root / "camera.json").write_text(json.dumps({**camera, "depth_scale_m": 0.0002}))
    stamps = np.array([1305031102_100000000, 1305031102_300000000])
    write_tum_trajectory(root / "poses.txt", stamps, np.stack([frame.T_world_cam] * 2))
    items = list(FolderSource(root))
    assert [i.stamp_ns for i in items] == [1305031102_175304000, 1305031102_275304000]
    assert_same_frame(items[0], replace(frame, stamp_ns=items[0].stamp_ns), depth_tol=1.01e-4)
    assert np.abs(items[1].rgb.astype(int) - frame.rgb).mean() < 10  # JPEG is lossy


def test_a_colour_image_without_depth_within_the_slop_is_skipped(recording, room_frames):
    (recording / "depth" / f"{_stem(room_frames[2])}.png").unlink()
    items = list(FolderSource(recording))
    assert items[2] == SkippedFrame(
        room_frames[2].stamp_ns, "no depth within slop", items[2].detail
    )
    assert sum(isinstance(i, RGBDFrame) for i in items) == 5


def test_a_colour_image_outside_the_trajectory_is_skipped_with_no_pose(recording, room_frames):
    stamps, poses = read_tum_trajectory(recording / "poses.txt")
    write_tum_trajectory(recording / "poses.txt", stamps[:-1], poses[:-1])
    items = list(FolderSource(recording))
    assert items[-1].reason == "no pose"
    assert "only known from" in items[-1].detail
    assert all(isinstance(i, RGBDFrame) for i in items[:-1])


def test_an_unreadable_image_is_skipped(recording, room_frames):
    (recording / "rgb" / f"{_stem(room_frames[1])}.png").write_bytes(b"not a png")
    items = list(FolderSource(recording))
    assert items[1].reason == "unreadable image"
    assert "cannot read colour image" in items[1].detail


def test_depth_of_another_size_is_skipped_with_size_mismatch(recording, room_frames):
    write_png(recording / "depth" / f"{_stem(room_frames[3])}.png", np.ones((24, 32), np.uint16))
    items = list(FolderSource(recording))
    assert items[3].reason == "size mismatch"
    assert "depth 24x32" in items[3].detail


def test_the_poses_option_overrides_poses_txt(recording, room_frames, tmp_path):
    moved = tmp_path / "elsewhere.txt"
    shutil.move(recording / "poses.txt", moved)
    with pytest.raises(InputError, match=r"poses.txt .* or pass --poses \(poses=\)"):
        FolderSource(recording)
    items = list(open_source(recording, poses=moved, slop_s=0.001))
    assert len(items) == 6 and all(isinstance(i, RGBDFrame) for i in items)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: shutil.rmtree(r / "rgb"), "rgb does not exist; a recording folder needs rgb/"),
        (lambda r: shutil.rmtree(r / "depth"), "depth does not exist"),
        (lambda r: (r / "camera.json").unlink(), "camera.json does not exist"),
        (lambda r: (r / "camera.json").write_text("{"), "cannot read .*camera.json"),
        (lambda r: (r / "camera.json").write_text("[]"), "must hold a JSON object, got list"),
        (lambda r: _edit_camera(r, fx=None), "camera.json lacks fx"),
        (lambda r: _edit_camera(r, width=0), "width must be a positive integer, got 0"),
        (lambda r: _edit_camera(r, fy="500"), "fy must be a number, got '500'"),
        (lambda r: _edit_camera(r, depth_scale_m=-1), "depth_scale_m must be a positive number"),
        (lambda r: _edit_camera(r, frame_id=""), "frame_id must be a non-empty string"),
        (lambda r: (r / "rgb" / "frame_a.png").write_bytes(b""), "frame_a.png: the file name"),
        (lambda r: [p.unlink() for p in (r / "rgb").iterdir()], "has no colour images"),
        (lambda r: (r / "poses.txt").write_text("1 2 3\n"), "poses.txt:1: expected 8 values"),
    ],
)
def test_a_broken_folder_is_rejected_at_open(recording, damage, message):
    damage(recording)
    with pytest.raises(InputError, match=message):
        FolderSource(recording)


def _edit_camera(root, **changes):
    camera = json.loads((root / "camera.json").read_text())
    for key, value in changes.items():
        if value is None:
            del camera[key]
        else:
            camera[key] = value
    (root / "camera.json").write_text(json.dumps(camera))


def test_a_missing_folder_or_a_bad_slop_is_rejected(tmp_path, recording):
    with pytest.raises(InputError, match="recording folder .*nope does not exist"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(InputError, match="slop_s must be a non-negative number"):
        FolderSource(recording, slop_s=-0.1)


def test_frames_that_do_not_fit_one_folder_are_rejected(tmp_path, room_frames):
    first = room_frames[0]
    with pytest.raises(InputError, match="needs at least one frame"):
        write_folder_recording(tmp_path / "a", [])
    with pytest.raises(InputError, match="frame 1 .* has no T_world_cam"):
        write_folder_recording(tmp_path / "b", [first, replace(room_frames[1], T_world_cam=None)])
    with pytest.raises(InputError, match="frame 1 is .* in 'other'"):
        write_folder_recording(tmp_path / "c", [first, replace(room_frames[1], frame_id="other")])
    other_K = first.K.copy()
    other_K[0, 0] += 1.0
    with pytest.raises(InputError, match="frame 1 has K"):
        write_folder_recording(tmp_path / "d", [first, replace(room_frames[1], K=other_K)])
    with pytest.raises(InputError, match="frame 1 repeats stamp"):
        write_folder_recording(tmp_path / "e", [first, first])
    skewed = first.K.copy()
    skewed[0, 1] = 0.5
    with pytest.raises(InputError, match="cannot store a K with skew"):
        write_folder_recording(tmp_path / "f", [replace(first, K=skewed)])
    with pytest.raises(InputError, match="depth_scale_m must be a positive number"):
        write_folder_recording(tmp_path / "g", [first], depth_scale_m=0)


def test_open_source_rejects_bag_options_for_a_folder_and_unknown_paths(recording, tmp_path):
    with pytest.raises(InputError, match="color_topic do not apply to a folder recording"):
        open_source(recording, color_topic="/camera/color/image_raw")
    with pytest.raises(InputError, match="expected a folder with camera.json.* or a rosbag2"):
        open_source(tmp_path)
    assert isinstance(open_source(recording), FolderSource)
