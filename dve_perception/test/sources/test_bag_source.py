"""BagSource: rosbag2 bags (mcap, sqlite3; Humble, Jazzy) back to posed RGB-D frames, and damage."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import sys
from dataclasses import replace

import numpy as np
import pytest

from dve_perception.errors import BackendUnavailableError, InputError
from dve_perception.frames import RGBDFrame
from dve_perception.sources import (
    BagSource,
    SkippedFrame,
    open_source,
    write_bag,
    write_folder_recording,
)
from dve_perception.sources.trajectory import write_tum_trajectory

COLOR = "/camera/color/image_raw"
DEPTH = "/camera/aligned_depth_to_color/image_raw"
INFO = "/camera/color/camera_info"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("distro", ["humble", "jazzy"])
@pytest.mark.parametrize("tf_layout", ["direct", "chain"])
def test_a_written_bag_reads_back_as_the_same_frames(
    tmp_path, room_frames, storage, distro, tf_layout, assert_same_frame
):
    path = write_bag(
        tmp_path / "bag", room_frames, storage=storage, distro=distro, tf_layout=tf_layout
    )
    source = BagSource(path, distro=distro)
    items = list(source)
    assert len(items) == len(room_frames)
    for got, want in zip(items, room_frames, strict=True):
        assert_same_frame(got, want)  # 16UC1 millimetres: within 0.5 mm
    info = source.describe()
    assert info["storage"] == storage and info["world_frame"] == "map"
    assert info["camera_frame"] == "camera_color_optical_frame"
    assert info["truncated"] is False


def test_32fc1_depth_and_bgr8_colour_read_back_exactly(tmp_path, room_frames, assert_same_frame):
    path = write_bag(tmp_path / "bag", room_frames, depth_encoding="32FC1", color_encoding="bgr8")
    for got, want in zip(BagSource(path), room_frames, strict=True):
        assert_same_frame(got, want, depth_tol=0.0)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_single_storage_file_opens_like_its_bag_folder(tmp_path, room_frames, storage):
    path = write_bag(tmp_path / "bag", room_frames[:2], storage=storage)
    (file,) = path.glob("*.mcap" if storage == "mcap" else "*.db3")
    items = list(open_source(file))
    assert [i.stamp_ns for i in items] == [f.stamp_ns for f in room_frames[:2]]
    assert all(isinstance(i, RGBDFrame) for i in items)


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_a_bag_without_embedded_definitions_is_read_with_the_distros_definitions(
    tmp_path, room_frames, distro, assert_same_frame
):
    path = write_bag(tmp_path / "bag", room_frames[:2], storage="sqlite3", distro=distro)
    (file,) = path.glob("*.db3")
    with sqlite3.connect(file) as db:  # like bags recorded by Humble's rosbag2 (no definitions)
        db.execute("DELETE FROM message_definitions")
    for got, want in zip(BagSource(path, distro=distro), room_frames[:2], strict=True):
        assert_same_frame(got, want)


def test_the_folder_and_the_bag_of_the_same_frames_give_the_same_frames(
    tmp_path, room_frames, assert_same_frame
):
    bag = list(open_source(write_bag(tmp_path / "bag", room_frames, tf_layout="chain")))
    folder = list(open_source(write_folder_recording(tmp_path / "folder", room_frames)))
    for from_bag, from_folder in zip(bag, folder, strict=True):
        assert_same_frame(from_bag, from_folder, depth_tol=1e-6)


def test_iterating_twice_gives_the_same_frames(tmp_path, room_frames, assert_same_frame):
    source = BagSource(write_bag(tmp_path / "bag", room_frames[:3]))
    first, second = list(source), list(source)
    for a, b in zip(first, second, strict=True):
        assert_same_frame(a, b, depth_tol=0.0)


def test_describe_names_the_topics_frames_and_message_counts(tmp_path, room_frames):
    source = BagSource(write_bag(tmp_path / "bag", room_frames, tf_layout="chain"))
    info = source.describe()
    assert info["kind"] == "rosbag2" and info["path"] == str(tmp_path / "bag")
    assert info["topics"] == {
        "color": COLOR,
        "depth": DEPTH,
        "camera_info": INFO,
        "tf": ["/tf", "/tf_static"],
    }
    assert info["message_counts"] == {
        "color": 6,
        "depth": 6,
        "camera_info": 6,
        "tf": 6,
        "tf_static": 1,
    }
    assert info["planned_frames"] == 6 and info["error"] is None


def test_frames_after_the_tf_stops_are_skipped_with_no_transform(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    messages = []
    for i, frame in enumerate(room_frames):
        messages += msgs.frame(types, frame, tf=i < 3)
    items = list(BagSource(msgs.write(tmp_path / "bag", messages)))
    assert all(isinstance(i, RGBDFrame) for i in items[:3])
    assert [i.reason for i in items[3:]] == ["no transform"] * 3
    assert "is not extrapolated" in items[3].detail
    assert items[3].stamp_ns == room_frames[3].stamp_ns


def test_invalid_transforms_are_ignored_with_one_warning(tmp_path, room_frames, msgs, caplog):
    types = msgs.typestore().types
    messages = []
    for frame, child in zip(room_frames[:2], ["", "marker"], strict=True):
        messages += msgs.frame(types, frame)
        bad = msgs.tf(types, frame.stamp_ns, [("map", child, np.eye(4))])
        bad.transforms[0].transform.rotation.w = 0.0  # a zero quaternion
        messages.append(("/tf", frame.stamp_ns, bad))
    with caplog.at_level(logging.WARNING):
        items = list(BagSource(msgs.write(tmp_path / "bag", messages)))
    assert all(isinstance(i, RGBDFrame) for i in items)
    warnings = [r.getMessage() for r in caplog.records if "invalid transforms" in r.getMessage()]
    assert warnings == [
        "ignored 2 invalid transforms, e.g. 'map' -> '': a transform needs two "
        "different, non-empty frame ids"
    ]


def test_colour_images_without_a_depth_partner_are_skipped(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    messages = []
    for i, frame in enumerate(room_frames):
        messages += msgs.frame(types, frame, depth=i != 2)
    items = list(BagSource(msgs.write(tmp_path / "bag", messages)))
    assert items[2] == SkippedFrame(
        room_frames[2].stamp_ns, "no depth within slop", items[2].detail
    )
    assert sum(isinstance(i, RGBDFrame) for i in items) == 5


def test_depth_a_few_milliseconds_off_and_recorded_first_is_paired(
    tmp_path, room_frames, msgs, assert_same_frame
):
    types = msgs.typestore().types
    messages = []
    for frame in room_frames[:3]:
        shifted = replace(frame, stamp_ns=frame.stamp_ns - 7_000_000)
        depth = msgs.frame(types, shifted, tf=False, info=False)[-1]
        messages += [depth, *msgs.frame(types, frame, depth=False)]
    items = list(BagSource(msgs.write(tmp_path / "bag", messages), slop_s=0.01))
    for got, want in zip(items, room_frames[:3], strict=True):
        assert_same_frame(got, want)
    strict = list(BagSource(tmp_path / "bag", slop_s=0.005))
    assert [i.reason for i in strict] == ["no depth within slop"] * 3


def test_colour_and_depth_of_different_sizes_are_skipped_with_size_mismatch(
    tmp_path, room_frames, msgs
):
    types = msgs.typestore().types
    messages = msgs.frame(types, room_frames[0])
    small = msgs.image(types, room_frames[1].stamp_ns, "x", np.ones((24, 32), np.uint16), "16UC1")
    messages += msgs.frame(types, room_frames[1], depth=False) + [(DEPTH, 0, small)]
    items = list(BagSource(msgs.write(tmp_path / "bag", messages)))
    assert isinstance(items[0], RGBDFrame)
    assert items[1].reason == "size mismatch" and "depth 24x32" in items[1].detail


def test_a_camera_info_of_another_size_is_a_size_mismatch(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    frame = room_frames[0]
    messages = msgs.frame(types, frame, info=False)
    messages.append((INFO, 0, msgs.info(types, frame.stamp_ns, frame.frame_id, frame.K, 96, 128)))
    (item,) = BagSource(msgs.write(tmp_path / "bag", messages))
    assert item.reason == "size mismatch"
    assert "camera_info is (96, 128)" in item.detail


def test_an_uncalibrated_camera_info_skips_frames_with_no_camera_info(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    frame = room_frames[0]
    messages = msgs.frame(types, frame, info=False)
    messages.append(
        (INFO, 0, msgs.info(types, frame.stamp_ns, frame.frame_id, np.zeros((3, 3)), 48, 64))
    )
    (item,) = BagSource(msgs.write(tmp_path / "bag", messages))
    assert item.reason == "no camera_info"
    assert "all-zero K (uncalibrated camera)" in item.detail


def test_a_corrupt_depth_message_is_skipped_as_unreadable(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    frame = room_frames[0]
    messages = msgs.frame(types, frame, depth=False)
    bad = msgs.image(types, frame.stamp_ns, frame.frame_id, np.ones((48, 64), np.uint16), "16UC1")
    bad.data = bad.data[:-10]  # data shorter than step * height
    (item,) = BagSource(msgs.write(tmp_path / "bag", messages + [(DEPTH, 0, bad)]))
    assert item.reason == "unreadable message" and "needs 6144 bytes" in item.detail


def test_compressed_colour_and_compressed_depth_topics_are_decoded(
    tmp_path, room_frames, msgs, assert_same_frame
):
    types = msgs.typestore().types
    messages = []
    for frame in room_frames[:2]:
        stamp, fid = frame.stamp_ns, frame.frame_id
        mm = np.round(frame.depth_m * 1000).astype(np.uint16)
        messages += msgs.frame(types, frame, depth=False)[:2]  # tf and camera_info
        png = msgs.png_bytes(frame.rgb)
        messages.append(
            (COLOR + "/compressed", stamp, msgs.compressed(types, stamp, fid, "png", png))
        )
        depth = msgs.compressed_depth_bytes(mm)
        messages.append(
            (
                DEPTH + "/compressedDepth",
                stamp,
                msgs.compressed(types, stamp, fid, "16UC1; compressedDepth png", depth),
            )
        )
    source = BagSource(msgs.write(tmp_path / "bag", messages))
    assert source.describe()["topics"]["color"] == COLOR + "/compressed"
    for got, want in zip(source, room_frames[:2], strict=True):
        assert_same_frame(got, want)


def test_detection_prefers_aligned_depth_raw_images_and_the_colour_namespace_camera_info(
    tmp_path, room_frames, msgs
):
    types = msgs.typestore().types
    frame = room_frames[0]
    stamp, fid = frame.stamp_ns, frame.frame_id
    messages = msgs.frame(types, frame)
    mm = np.round(frame.depth_m * 1000).astype(np.uint16)
    ir = np.zeros((48, 64), np.uint8)
    messages += [
        ("/camera/depth/image_rect_raw", stamp, msgs.image(types, stamp, "depth", mm, "16UC1")),
        ("/camera/infra1/image_rect_raw", stamp, msgs.image(types, stamp, "ir", ir, "mono8")),
        ("/camera/depth/camera_info", stamp, msgs.info(types, stamp, "depth", frame.K, 48, 64)),
        (
            COLOR + "/compressed",
            stamp,
            msgs.compressed(types, stamp, fid, "png", msgs.png_bytes(frame.rgb)),
        ),
    ]
    topics = BagSource(msgs.write(tmp_path / "bag", messages)).describe()["topics"]
    assert (topics["color"], topics["depth"], topics["camera_info"]) == (COLOR, DEPTH, INFO)


def test_ambiguous_colour_or_camera_info_topics_ask_for_the_option_to_set(
    tmp_path, room_frames, msgs
):
    types = msgs.typestore().types
    frame = room_frames[0]
    stamp, fid = frame.stamp_ns, frame.frame_id
    messages = msgs.frame(types, frame, color_topic="/left/image_raw", info_topic="/a/camera_info")
    messages += [
        ("/right/image_raw", 0, msgs.image(types, stamp, fid, frame.rgb, "rgb8")),
        ("/b/camera_info", 0, msgs.info(types, stamp, fid, frame.K, 48, 64)),
    ]
    path = msgs.write(tmp_path / "bag", messages)
    message = (
        "several colour topics could be meant: /left/image_raw, /right/image_raw; "
        "choose one with color_topic="
    )
    with pytest.raises(InputError, match=message):
        BagSource(path)
    message = (
        "cannot tell which camera_info belongs to /right/image_raw among /a/camera_info, "
        "/b/camera_info; choose one with camera_info_topic="
    )
    with pytest.raises(InputError, match=message):
        BagSource(path, color_topic="/right/image_raw")
    source = BagSource(path, color_topic="/left/image_raw", camera_info_topic="/a/camera_info")
    assert isinstance(next(iter(source)), RGBDFrame)


def test_an_unsupported_colour_encoding_fails_at_open_naming_it(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    frame = room_frames[0]
    messages = msgs.frame(types, frame, depth=True)
    yuv = msgs.image(types, frame.stamp_ns, frame.frame_id, frame.rgb[..., :2], "yuv422")
    messages = [m for m in messages if m[0] != COLOR] + [(COLOR, 0, yuv)]
    path = msgs.write(tmp_path / "bag", messages)
    with pytest.raises(
        InputError, match=r"no colour image topic .*image_raw \(encoding 'yuv422'\)"
    ):
        BagSource(path)
    with pytest.raises(
        InputError,
        match=r"color_topic='/camera/color/image_raw' has encoding 'yuv422'; expected a colour "
        r"image \(Image in rgb8, bgr8, rgba8, bgra8, mono8, or a jpeg/png CompressedImage\)",
    ):
        BagSource(path, color_topic=COLOR)


def test_named_topics_must_exist_and_have_the_right_type(tmp_path, room_frames):
    path = write_bag(tmp_path / "bag", room_frames[:1])
    listing = r"its topics are: .*/camera/color/camera_info \(sensor_msgs/msg/CameraInfo\)"
    with pytest.raises(InputError, match=f"color_topic='/rgb' is not in the bag; {listing}"):
        BagSource(path, color_topic="/rgb")
    with pytest.raises(InputError, match="depth_topic='/tf' is a tf2_msgs/msg/TFMessage; expected"):
        BagSource(path, depth_topic="/tf")
    with pytest.raises(InputError, match="camera_info_topic='/tf' is a tf2_msgs/msg/TFMessage"):
        BagSource(path, camera_info_topic="/tf")
    with pytest.raises(
        InputError, match="depth_topic='/camera/color/image_raw' has encoding 'rgb8'"
    ):
        BagSource(path, depth_topic=COLOR)


def test_a_bag_without_camera_topics_is_rejected(tmp_path, room_frames, msgs):
    types = msgs.typestore().types
    only_tf = [m for m in msgs.frame(types, room_frames[0]) if m[0] == "/tf"]
    with pytest.raises(
        InputError, match=r"no colour image topic in the bag \(image topics: none\)"
    ):
        BagSource(msgs.write(tmp_path / "a", only_tf))
    no_info = msgs.frame(types, room_frames[0], info=False)
    with pytest.raises(InputError, match="the bag has no sensor_msgs/msg/CameraInfo topic"):
        BagSource(msgs.write(tmp_path / "b", no_info))


def test_a_bag_without_tf_needs_a_tum_trajectory(tmp_path, room_frames, msgs, assert_same_frame):
    types = msgs.typestore().types
    messages = [m for f in room_frames for m in msgs.frame(types, f, tf=False)]
    path = msgs.write(tmp_path / "bag", messages)
    with pytest.raises(
        InputError, match="no /tf or /tf_static; pass a TUM trajectory with --poses"
    ):
        BagSource(path)
    poses = write_tum_trajectory(
        tmp_path / "poses.txt",
        np.array([f.stamp_ns for f in room_frames]),
        np.stack([f.T_world_cam for f in room_frames]),
    )
    source = BagSource(path, poses=poses, world_frame="odom")
    for got, want in zip(source, room_frames, strict=True):
        assert_same_frame(got, want)
    assert source.describe()["world_frame"] == "odom"


def test_a_camera_frame_missing_from_the_tf_tree_fails_at_open(tmp_path, room_frames):
    path = write_bag(tmp_path / "bag", room_frames[:1])
    with pytest.raises(InputError, match="camera frame 'lens' is not in the bag's TF tree"):
        BagSource(path, camera_frame="lens")
    with pytest.raises(InputError, match="world frame 'earth' is not connected"):
        BagSource(path, world_frame="earth")


def test_bad_paths_and_options_are_rejected(tmp_path, room_frames):
    with pytest.raises(InputError, match="does not exist or is not a rosbag2 folder"):
        BagSource(tmp_path / "missing.mcap")
    with pytest.raises(InputError, match="is a folder without metadata.yaml"):
        BagSource(tmp_path)
    path = write_bag(tmp_path / "bag", room_frames[:1])
    with pytest.raises(InputError, match="distro must be one of"):
        BagSource(path, distro="noetic")
    with pytest.raises(InputError, match="slop_s must be a non-negative number"):
        BagSource(path, slop_s=float("nan"))
    with pytest.raises(InputError, match="option.* distro do not apply to a folder"):
        open_source(write_folder_recording(tmp_path / "f", room_frames[:1]), distro="jazzy")


def test_without_rosbags_opening_a_bag_says_how_to_install_it(tmp_path, room_frames, monkeypatch):
    path = write_bag(tmp_path / "bag", room_frames[:1])
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)
    with pytest.raises(BackendUnavailableError, match="pip install rosbags"):
        BagSource(path)


def _damaged_copies(tmp_path, room_frames, storage):
    path = write_bag(tmp_path / "bag", room_frames, storage=storage)
    (file,) = path.glob("*.mcap" if storage == "mcap" else "*.db3")
    data = file.read_bytes()
    for fraction in (0.6, 0.9, 0.97):
        copy = shutil.copytree(path, tmp_path / f"cut{fraction}")
        (copy / file.name).write_bytes(data[: int(len(data) * fraction)])
        yield copy
    for fraction in (0.3, 0.5, 0.7):
        copy = shutil.copytree(path, tmp_path / f"zeroed{fraction}")
        start = int(len(data) * fraction)
        damaged = data[:start] + bytes(4096) + data[start + 4096 :]
        (copy / file.name).write_bytes(damaged)
        yield copy


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_cut_or_zeroed_bag_fails_at_open_or_keeps_the_frames_before_the_damage(
    tmp_path, room_frames, storage
):
    for path in _damaged_copies(tmp_path, room_frames, storage):
        try:
            source = BagSource(path)
        except InputError as err:
            assert f"cannot read bag {path}" in str(err) or "topic" in str(err)
            continue
        items = list(source)  # must not raise
        assert all(isinstance(i, (RGBDFrame, SkippedFrame)) for i in items)
        if source.describe()["truncated"]:
            assert source.describe()["error"]


def test_a_bag_cut_to_60_percent_is_an_input_error_with_a_recovery_hint(tmp_path, room_frames):
    path = write_bag(tmp_path / "bag", room_frames)
    (file,) = path.glob("*.mcap")
    file.write_bytes(file.read_bytes()[: int(file.stat().st_size * 0.6)])
    with pytest.raises(InputError, match=r"cannot read bag .*: .*; if the recording was cut short"):
        BagSource(path)


def test_damage_found_while_reading_ends_iteration_with_the_frames_before_it(
    tmp_path, room_frames, monkeypatch, caplog
):
    from rosbags.highlevel import AnyReader

    path = write_bag(tmp_path / "bag", room_frames)
    source = BagSource(path)
    real_messages = AnyReader.messages

    def failing_messages(self, *args, **kwargs):
        for count, message in enumerate(real_messages(self, *args, **kwargs)):
            if count == 7:  # colour and depth of frames 0..2 and colour of frame 3
                raise OSError("disk I/O error")
            yield message

    monkeypatch.setattr(AnyReader, "messages", failing_messages)
    with caplog.at_level(logging.WARNING):
        items = list(source)
    assert all(isinstance(i, RGBDFrame) for i in items[:3])
    assert [i.reason for i in items[3:]] == ["unreadable message"] * 3
    assert items[3].detail == "the bag ended before this image"
    info = source.describe()
    assert info["truncated"] is True and "disk I/O error" in info["error"]
    assert "damaged or truncated" in caplog.text


def test_a_bag_whose_index_lists_more_messages_than_it_yields_is_marked_truncated(
    tmp_path, room_frames, monkeypatch
):
    from rosbags.highlevel import AnyReader

    path = write_bag(tmp_path / "bag", room_frames)
    real_messages = AnyReader.messages

    def dropping_messages(self, *args, **kwargs):
        for connection, stamp, raw in real_messages(self, *args, **kwargs):
            if not (connection.topic == COLOR and stamp == room_frames[4].stamp_ns):
                yield connection, stamp, raw

    monkeypatch.setattr(AnyReader, "messages", dropping_messages)
    source = BagSource(path)
    items = list(source)
    assert len(items) == 5
    assert source.describe()["truncated"] is True
    assert "fewer messages than the index lists" in source.describe()["error"]
