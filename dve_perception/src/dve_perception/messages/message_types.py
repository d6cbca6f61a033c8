"""The message classes the builders of `messages.outputs` take, and a rosbags-backed set for tests.

The builders never import ROS: they take a `types` object whose attributes build messages
(`types.Image(height=..., ...)`) plus two functions for the array fields whose accepted value
differs between message implementations:

- rclpy: constructors accept any subset of fields as keywords (the rest get defaults); a
  `uint8[]` field is fast only as `array.array('B')` (bytes and lists are checked element by
  element under `__debug__`: seconds for a 29 MB embedding) and a `float64[]` field takes
  `array.array('d')` or a list. Scalar fields reject numpy scalars.
- rosbags: classes are dataclasses that require every field, and the CDR serializer wants numpy
  arrays of the exact dtype for numeric arrays and sequences.

`rosbags_message_types` builds such an object from a rosbags typestore, with factories that fill
missing fields with defaults the way rclpy does, so the same builders run (and serialize) in
tests on machines without ROS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from dve_perception.errors import BackendUnavailableError, ConfigError

__all__ = [
    "MESSAGE_TYPE_NAMES",
    "MessageFactory",
    "MessageTypes",
    "message_field_names",
    "rosbags_message_types",
]

#: The attribute names of a `MessageTypes` object and the full ROS type each one builds.
MESSAGE_TYPE_NAMES: dict[str, str] = {
    "Header": "std_msgs/msg/Header",
    "ColorRGBA": "std_msgs/msg/ColorRGBA",
    "Time": "builtin_interfaces/msg/Time",
    "Duration": "builtin_interfaces/msg/Duration",
    "Image": "sensor_msgs/msg/Image",
    "CameraInfo": "sensor_msgs/msg/CameraInfo",
    "RegionOfInterest": "sensor_msgs/msg/RegionOfInterest",
    "PointCloud2": "sensor_msgs/msg/PointCloud2",
    "PointField": "sensor_msgs/msg/PointField",
    "Point": "geometry_msgs/msg/Point",
    "Vector3": "geometry_msgs/msg/Vector3",
    "Quaternion": "geometry_msgs/msg/Quaternion",
    "Pose": "geometry_msgs/msg/Pose",
    "Marker": "visualization_msgs/msg/Marker",
    "MarkerArray": "visualization_msgs/msg/MarkerArray",
}
_INTERFACES_PACKAGE = "dve_perception_interfaces"
_DISTROS = ("humble", "jazzy")
#: Field defaults that the .msg files declare and rosbags' field definitions do not carry
#: (geometry_msgs/Quaternion says `float64 w 1`: rclpy builds the identity rotation).
_DECLARED_DEFAULTS: dict[str, dict[str, Any]] = {"geometry_msgs/msg/Quaternion": {"w": 1.0}}
#: rosbags' numpy dtypes for ROS base types (as its deserializer returns them).
_SPECIAL_DTYPES = {"bool": np.bool_, "char": np.uint8, "byte": np.byte}
# rosbags.interfaces.Nodetype values (kept here so that rosbags is imported lazily).
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4


class MessageFactory(Protocol):
    """Builds one message type from keyword fields (missing fields get their defaults)."""

    def __call__(self, **fields: Any) -> Any:
        """Return a new message."""
        ...


class MessageTypes(Protocol):
    """What the builders of `messages.outputs` take as `types`.

    Each message attribute is a class or factory called with keyword fields, as rclpy message
    classes are (the ROS adapters pass those). Constants (`PointField.FLOAT32`, `Marker.CUBE`)
    are not required: the builders use the values fixed by the message definitions.

    `uint8_array(buffer)` turns a bytes-like object into a `uint8[]` field value (rclpy:
    `a = array.array('B'); a.frombytes(buffer)`, a memcpy; `array.array('B', buffer)` would
    iterate over a memoryview byte by byte). `float64_sequence(values)` turns numbers into a
    `float64[]` field value (rclpy: `array.array('d', values)`).
    """

    Header: MessageFactory
    ColorRGBA: MessageFactory
    Time: MessageFactory
    Duration: MessageFactory
    Image: MessageFactory
    CameraInfo: MessageFactory
    RegionOfInterest: MessageFactory
    PointCloud2: MessageFactory
    PointField: MessageFactory
    Point: MessageFactory
    Vector3: MessageFactory
    Quaternion: MessageFactory
    Pose: MessageFactory
    Marker: MessageFactory
    MarkerArray: MessageFactory
    EmbeddingFrame: MessageFactory
    QueryMatch: MessageFactory
    uint8_array: Callable[[Any], Any]
    float64_sequence: Callable[[Any], Any]


class _RosbagsFactory:
    """Build a rosbags message from a subset of its fields, defaulting the others."""

    def __init__(self, typestore: Any, type_name: str) -> None:
        self.typestore = typestore
        self.type_name = type_name
        self.message_class = typestore.types[type_name]

    def __call__(self, **fields: Any) -> Any:
        known = [name for name, _ in self.typestore.fielddefs[self.type_name][1]]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"{self.type_name} has no field(s) {unknown}; its fields are {known}")
        values = {name: fields[name] for name in known if name in fields}
        for name, desc in self.typestore.fielddefs[self.type_name][1]:
            if name not in values:
                declared = _DECLARED_DEFAULTS.get(self.type_name, {})
                values[name] = declared.get(name, _default_value(self.typestore, desc))
        return self.message_class(**values)

    def __getattr__(self, name: str) -> Any:
        # Constants (Marker.CUBE, PointField.FLOAT32) live on the message class, as in rclpy.
        return getattr(self.message_class, name)


def rosbags_message_types(
    distro: str = "humble", interfaces_dir: Path | None = None
) -> SimpleNamespace:
    """Build a `MessageTypes` object from a rosbags typestore (tests and ROS-free tools).

    Args:
        distro: "humble" or "jazzy" (the typestore's message definitions).
        interfaces_dir: the `dve_perception_interfaces` package folder; when given, its
            msg/*.msg types are registered (attributes `EmbeddingFrame`, `QueryMatch`), and the
            request and response parts of each srv/*.srv as the messages
            "dve_perception_interfaces/msg/<Service>Request" and "<Service>Response"
            (attributes `QueryTextResponse`, ...), so service fields can be built and serialized.

    Returns:
        A namespace with a factory per message name (`MESSAGE_TYPE_NAMES` plus the registered
        ones), `uint8_array` (a numpy uint8 copy of the buffer), `float64_sequence` (a float64
        numpy array) and `typestore` (for `serialize_cdr` / `deserialize_cdr`).

    Raises:
        ConfigError: an unknown distro, or an interfaces folder without msg/ files.
        BackendUnavailableError: rosbags is not installed.
    """
    typestore = _typestore(distro)
    names = dict(MESSAGE_TYPE_NAMES)
    if interfaces_dir is not None:
        names.update(_register_interfaces(typestore, Path(interfaces_dir)))
    namespace = SimpleNamespace(
        **{attr: _RosbagsFactory(typestore, full) for attr, full in names.items()}
    )
    # A copy: rclpy copies into an array.array too, so a message never aliases caller memory.
    namespace.uint8_array = lambda buffer: np.frombuffer(buffer, dtype=np.uint8).copy()
    namespace.float64_sequence = lambda values: np.asarray(values, dtype=np.float64).reshape(-1)
    namespace.typestore = typestore
    return namespace


def message_field_names(cls_or_msg: Any) -> list[str]:
    """Return the field names of a message class, message or `rosbags_message_types` factory.

    Args:
        cls_or_msg: an rclpy message class or instance (`get_fields_and_field_types`), a
            rosbags dataclass or instance, or a factory of `rosbags_message_types`.

    Returns:
        The field names in definition order.

    Raises:
        ConfigError: the object is none of these.
    """
    target = getattr(cls_or_msg, "message_class", cls_or_msg)
    if hasattr(target, "get_fields_and_field_types"):
        return list(target.get_fields_and_field_types())
    if dataclasses.is_dataclass(target):
        # rosbags keeps the type name in a `__msgtype__` dataclass field: not a message field.
        return [f.name for f in dataclasses.fields(target) if f.name != "__msgtype__"]
    raise ConfigError(
        f"cannot list the fields of {type(cls_or_msg).__name__}: expected an rclpy or rosbags "
        "message class or instance"
    )


def _typestore(distro: str) -> Any:
    if distro not in _DISTROS:
        raise ConfigError(f"unknown ROS distro {distro!r}; expected one of {list(_DISTROS)}")
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError as err:
        raise BackendUnavailableError(
            "rosbags is needed for ROS message types without ROS; install it with "
            "`pip install rosbags`"
        ) from err
    store = Stores.ROS2_HUMBLE if distro == "humble" else Stores.ROS2_JAZZY
    return get_typestore(store)


def _register_interfaces(typestore: Any, interfaces_dir: Path) -> dict[str, str]:
    """Register the package's msg files and srv parts; return attribute -> full type name."""
    from rosbags.typesys import get_types_from_msg

    msg_files = sorted((interfaces_dir / "msg").glob("*.msg"))
    if not msg_files:
        raise ConfigError(
            f"no msg/*.msg files in {interfaces_dir}; expected the dve_perception_interfaces "
            "package folder"
        )
    definitions: dict[str, str] = {}
    for path in msg_files:
        definitions[path.stem] = path.read_text(encoding="utf-8")
    for path in sorted((interfaces_dir / "srv").glob("*.srv")):
        request, response = _split_service(path)
        definitions[f"{path.stem}Request"] = request
        definitions[f"{path.stem}Response"] = response
    names = {attr: f"{_INTERFACES_PACKAGE}/msg/{attr}" for attr in definitions}
    types: dict[str, Any] = {}
    for attr, text in definitions.items():
        types.update(get_types_from_msg(text, names[attr]))
    typestore.register(types)
    return names


def _split_service(path: Path) -> tuple[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    separators = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(separators) != 1:
        raise ConfigError(
            f"{path} has {len(separators)} '---' separator lines; a service has exactly one"
        )
    cut = separators[0]
    return "\n".join(lines[:cut]) + "\n", "\n".join(lines[cut + 1 :]) + "\n"


def _default_value(typestore: Any, desc: tuple) -> Any:
    """The default of one field description of `typestore.fielddefs` (rclpy's defaults)."""
    kind, detail = desc
    if kind == _BASE:
        return _base_default(detail[0])
    if kind == _NAME:
        return _RosbagsFactory(typestore, detail)()
    element, length = detail
    element_kind, element_detail = element
    if kind == _ARRAY:
        if element_kind == _BASE and element_detail[0] != "string":
            return np.zeros(length, dtype=_base_dtype(element_detail[0]))
        return [_default_value(typestore, element) for _ in range(length)]
    if kind == _SEQUENCE:
        if element_kind == _BASE and element_detail[0] != "string":
            return np.zeros(0, dtype=_base_dtype(element_detail[0]))
        return []
    raise ConfigError(f"unsupported rosbags field description {desc!r}")


def _base_default(type_name: str) -> Any:
    if type_name == "string":
        return ""
    if type_name == "bool":
        return False
    if type_name.startswith("float"):
        return 0.0
    return 0


def _base_dtype(type_name: str) -> Any:
    dtype = _SPECIAL_DTYPES.get(type_name, getattr(np, type_name, None))
    if dtype is None:
        raise ConfigError(f"no numpy dtype for the ROS base type {type_name!r}")
    return dtype
