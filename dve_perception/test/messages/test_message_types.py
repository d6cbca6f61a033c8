"""rosbags-backed message factories: defaults like rclpy, our interfaces registered, CDR-ready."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dve_perception.errors import ConfigError
from dve_perception.messages.message_types import (
    MESSAGE_TYPE_NAMES,
    message_field_names,
    rosbags_message_types,
)

INTERFACES_DIR = Path(__file__).parents[3] / "dve_perception_interfaces"
DISTROS = ["humble", "jazzy"]


@pytest.fixture(scope="module", params=DISTROS)
def types(request):
    return rosbags_message_types(request.param, interfaces_dir=INTERFACES_DIR)


def _cdr_round_trip(types, msg):
    raw = types.typestore.serialize_cdr(msg, msg.__msgtype__)
    return types.typestore.deserialize_cdr(raw, msg.__msgtype__)


def _srv_field_names(path: Path, part: int) -> list[str]:
    """Field names of a .srv part, parsed here with a plain reading of the file."""
    text = path.read_text().split("\n---\n")[part]
    names = []
    for line in text.splitlines():
        code = line.split("#", 1)[0].strip()
        if code:
            names.append(code.split()[1])
    return names


@pytest.mark.parametrize("attr", [*MESSAGE_TYPE_NAMES, "EmbeddingFrame", "QueryMatch"])
def test_every_factory_builds_a_message_that_serializes_with_all_fields_defaulted(types, attr):
    msg = getattr(types, attr)()
    back = _cdr_round_trip(types, msg)
    assert type(back) is type(msg)
    assert message_field_names(back) == message_field_names(msg)


def test_defaults_are_zero_empty_and_nested_like_rclpy(types):
    info = types.CameraInfo()
    assert info.height == 0 and info.distortion_model == ""
    assert info.k.dtype == np.float64 and info.k.shape == (9,) and not info.k.any()
    assert info.d.dtype == np.float64 and info.d.shape == (0,)
    assert info.header.stamp.sec == 0 and info.roi.do_rectify is False
    cloud = types.PointCloud2()
    assert cloud.fields == [] and cloud.data.dtype == np.uint8 and cloud.data.size == 0


def test_quaternion_defaults_to_the_identity_as_its_msg_file_declares(types):
    q = types.Pose().orientation
    assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)


def test_given_fields_are_kept_and_the_others_defaulted(types):
    stamp = types.Time(sec=3, nanosec=7)
    header = types.Header(stamp=stamp)
    assert header.stamp is stamp and header.frame_id == ""


def test_unknown_field_is_refused_with_the_known_fields(types):
    with pytest.raises(ConfigError, match=r"std_msgs/msg/Header has no field\(s\) \['frame'\]"):
        types.Header(frame="map")


def test_constants_are_read_through_the_factory(types):
    assert types.Marker.DELETEALL == 3 and types.PointField.FLOAT32 == 7


def test_query_text_service_parts_are_registered_as_messages(types):
    srv = INTERFACES_DIR / "srv" / "QueryText.srv"
    assert message_field_names(types.QueryTextRequest) == _srv_field_names(srv, 0)
    assert message_field_names(types.QueryTextResponse) == _srv_field_names(srv, 1)
    response = types.QueryTextResponse(success=True, matches=[types.QueryMatch(voxel_count=4)])
    back = _cdr_round_trip(types, response)
    assert back.success is True and back.matches[0].voxel_count == 4


def test_uint8_array_copies_the_buffer(types):
    source = bytearray(b"\x01\x02\x03")
    data = types.uint8_array(memoryview(source))
    source[0] = 9
    assert data.dtype == np.uint8 and data.tolist() == [1, 2, 3]


def test_float64_sequence_is_a_flat_float64_array(types):
    values = types.float64_sequence([1, 2.5])
    assert values.dtype == np.float64 and values.tolist() == [1.0, 2.5]


def test_interfaces_are_absent_without_the_interfaces_dir():
    types = rosbags_message_types("humble")
    assert not hasattr(types, "EmbeddingFrame")
    assert hasattr(types, "Image")


def test_unknown_distro_is_refused():
    with pytest.raises(ConfigError, match=r"unknown ROS distro 'noetic'; expected one of"):
        rosbags_message_types("noetic")


def test_a_folder_without_msg_files_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no msg/\*\.msg files in .*; expected the"):
        rosbags_message_types("humble", interfaces_dir=tmp_path)


def test_a_service_without_separator_is_refused(tmp_path):
    (tmp_path / "msg").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "msg" / "Thing.msg").write_text("int32 value\n")
    (tmp_path / "srv" / "Broken.srv").write_text("int32 a\nint32 b\n")
    with pytest.raises(ConfigError, match=r"Broken.srv has 0 '---' separator lines"):
        rosbags_message_types("humble", interfaces_dir=tmp_path)


def test_field_names_of_rclpy_style_classes_come_from_get_fields_and_field_types():
    class FakeRclpyMessage:
        @classmethod
        def get_fields_and_field_types(cls):
            return {"height": "uint32", "width": "uint32"}

    assert message_field_names(FakeRclpyMessage) == ["height", "width"]
    assert message_field_names(FakeRclpyMessage()) == ["height", "width"]


def test_field_names_of_rosbags_classes_and_instances_skip_the_type_name(types):
    expected = ["stamp", "frame_id"]
    assert message_field_names(types.Header) == expected
    assert message_field_names(types.Header()) == expected
    assert message_field_names(types.Header.message_class) == expected


def test_field_names_of_other_objects_are_refused():
    with pytest.raises(ConfigError, match=r"cannot list the fields of int"):
        message_field_names(3)
