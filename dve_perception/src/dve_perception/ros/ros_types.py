"""The rclpy message classes the core's builders take, gathered in one `types` namespace.

The builders in `dve_perception.messages.outputs` construct messages through `types.<Name>(...)`
and fill byte buffers through `types.uint8_array`; tests pass the same namespace built from
`rosbags` classes (`dve_perception.messages.message_types.rosbags_message_types`).
"""

from __future__ import annotations

import array
from types import SimpleNamespace

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from dve_perception_interfaces.msg import EmbeddingFrame, QueryMatch

__all__ = ["MSG"]


def _uint8_array(buffer: bytes | memoryview) -> array.array:
    # rclpy accepts array('B') for uint8[] without checking element by element (bytes and
    # lists are checked per value under __debug__: seconds for a 29 MB embedding frame), and
    # frombytes copies in one memcpy where array('B', memoryview) would go byte by byte.
    values = array.array("B")
    values.frombytes(buffer)
    return values


def _float64_sequence(values: object) -> array.array:
    return array.array("d", [float(v) for v in values])  # type: ignore[union-attr]


#: Message classes by name, plus the two buffer converters rclpy needs.
MSG = SimpleNamespace(
    CameraInfo=CameraInfo,
    ColorRGBA=ColorRGBA,
    Duration=Duration,
    EmbeddingFrame=EmbeddingFrame,
    Header=Header,
    Image=Image,
    Marker=Marker,
    MarkerArray=MarkerArray,
    Point=Point,
    PointCloud2=PointCloud2,
    PointField=PointField,
    Pose=Pose,
    QueryMatch=QueryMatch,
    Quaternion=Quaternion,
    RegionOfInterest=RegionOfInterest,
    Time=Time,
    Vector3=Vector3,
    uint8_array=_uint8_array,
    float64_sequence=_float64_sequence,
)
