"""rclpy-like message classes for the fake ROS of `ros_fakes`, built from rosbags definitions.

Each class subclasses the rosbags dataclass of its type (same fields, `__msgtype__`), but
behaves like a message class of rclpy (checked against rosidl_generator_py's generated code):

- the constructor takes any subset of fields as keywords and defaults the rest (rclpy defaults:
  `array.array` for numeric sequences, numpy arrays for fixed numeric arrays, lists otherwise);
  an unknown keyword or attribute is refused, as rclpy's `__slots__` refuse it;
- every assignment is checked like rclpy does under `__debug__`: exact Python types for scalars
  (`float` for float fields, `int` for integers, `bool`, `str`, one-byte `bytes` for `byte`) with
  their ranges, instances of the field's class for nested messages, and for numeric arrays:
  fixed size `numpy.ndarray` of the exact dtype or a sequence of exact Python values; unbounded
  `array.array` of the right type code or a sequence (a numpy array is refused there);
- values are stored as rclpy stores them (sequence -> `array.array`, fixed array -> numpy).

Service request and response parts are classes of the same kind (`FakeService.Request`).
"""

from __future__ import annotations

import array
import functools
from collections import UserList, UserString
from collections.abc import Sequence, Set
from pathlib import Path
from typing import Any

import numpy as np

from dve_perception.messages.message_types import rosbags_message_types

__all__ = ["INTERFACES_DIR", "FakeMessages", "FakeService", "fake_messages"]

INTERFACES_DIR = Path(__file__).parents[2] / "dve_perception_interfaces"
# rosbags.interfaces.Nodetype values.
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4
#: rclpy's array.array type codes of numeric sequence elements.
_TYPECODES = {
    "int8": "b",
    "uint8": "B",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
_INT_RANGES = {
    name: ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if name[0] == "i" else (0, 2**bits - 1))
    for name, bits in [(f"{s}int{b}", b) for s in ("", "u") for b in (8, 16, 32, 64)]
}
_FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}
#: Defaults declared in .msg files that rosbags' definitions do not carry.
_DECLARED_DEFAULTS = {"geometry_msgs/msg/Quaternion": {"w": 1.0}}
#: Services the adapters use outside our interfaces package: name -> (request, response) text.
_EXTRA_SERVICES = {"std_srvs/srv/Trigger": ("", "bool success\nstring message\n")}


class FakeService:
    """A service type: `Request` and `Response` classes, as rclpy's generated `srv` classes."""

    _TYPE_SUPPORT = object()  # rclpy's check_is_valid_srv_type looks for this

    def __init__(self, name: str, request: type, response: type) -> None:
        self.name, self.Request, self.Response = name, request, response

    def __repr__(self) -> str:
        return f"FakeService({self.name})"


class FakeMessages:
    """Message classes by full ROS name, created on first use from one rosbags typestore."""

    def __init__(self, distro: str = "humble") -> None:
        from rosbags.typesys import get_types_from_msg

        self.types = rosbags_message_types(distro, interfaces_dir=INTERFACES_DIR)
        self.typestore = self.types.typestore
        extra: dict = {}
        for srv, parts in _EXTRA_SERVICES.items():
            package, _, name = srv.split("/")
            for suffix, text in zip(("Request", "Response"), parts, strict=True):
                extra.update(get_types_from_msg(text, f"{package}/msg/{name}{suffix}"))
        self.typestore.register(extra)
        self._classes: dict[str, type] = {}

    def cls(self, full_name: str) -> type:
        """The class of `full_name` ("sensor_msgs/msg/Image"); KeyError if unknown."""
        if full_name not in self._classes:
            if full_name not in self.typestore.fielddefs:
                raise KeyError(f"no message type {full_name!r} in the fake typestore")
            self._classes[full_name] = self._make_class(full_name)
        return self._classes[full_name]

    def service(self, full_name: str) -> FakeService:
        """The service type of "pkg/srv/Name" (its parts registered as pkg/msg/NameRequest)."""
        package, _, name = full_name.split("/")
        request = self.cls(f"{package}/msg/{name}Request")
        response = self.cls(f"{package}/msg/{name}Response")
        return FakeService(full_name, request, response)

    def _make_class(self, full_name: str) -> type:
        base = self.typestore.types[full_name]
        constants, fields = self.typestore.fielddefs[full_name]
        registry = self
        descs = dict(fields)

        def __init__(self, **kwargs: Any) -> None:  # noqa: N807
            unknown = sorted(set(kwargs) - set(descs))
            if unknown:  # rclpy: assert all('_' + key in self.__slots__ ...)
                raise AssertionError(
                    f"Invalid arguments passed to constructor: {unknown} ({full_name})"
                )
            declared = _DECLARED_DEFAULTS.get(full_name, {})
            # Not the rosbags __init__: it would also set `__msgtype__` and the constants on the
            # instance, which rclpy keeps on the class only.
            for name, desc in fields:
                if name in kwargs:
                    setattr(self, name, kwargs[name])
                else:
                    setattr(self, name, declared.get(name, registry.default(desc)))

        def __setattr__(self, key: str, value: Any) -> None:  # noqa: N807
            if key not in descs:
                raise AttributeError(f"'{full_name}' object has no attribute '{key}'")
            object.__setattr__(self, key, registry.convert(full_name, key, descs[key], value))

        def get_fields_and_field_types(cls) -> dict[str, str]:
            return {name: registry.type_text(desc) for name, desc in fields}

        namespace: dict[str, Any] = {
            "__init__": __init__,
            "__setattr__": __setattr__,
            "__module__": full_name.rsplit("/", 1)[0].replace("/", "."),
            "__qualname__": full_name.rsplit("/", 1)[1],
            "get_fields_and_field_types": classmethod(get_fields_and_field_types),
            "_TYPE_SUPPORT": object(),  # rclpy's check_is_valid_msg_type looks for this
        }
        for name, type_name, value in constants:
            # rclpy exposes byte constants as bytes (DiagnosticStatus.OK == b'\x00').
            namespace[name] = bytes([value]) if type_name == "byte" else value
        return type(full_name.rsplit("/", 1)[1], (base,), namespace)

    def default(self, desc: tuple) -> Any:
        """rclpy's default value of a field description."""
        kind, detail = desc
        if kind == _BASE:
            return _scalar_default(detail[0])
        if kind == _NAME:
            return self.cls(detail)()
        (element_kind, element), length = detail
        if element_kind == _BASE and element[0] in _TYPECODES:
            if kind == _ARRAY:
                return np.zeros(length, dtype=element[0])
            return array.array(_TYPECODES[element[0]])
        if kind == _ARRAY:
            return [self.default((element_kind, element)) for _ in range(length)]
        return []

    def type_text(self, desc: tuple) -> str:
        """A readable type name of a field (for `get_fields_and_field_types`)."""
        kind, detail = desc
        if kind == _BASE:
            return detail[0]
        if kind == _NAME:
            return detail
        (element_kind, element), length = detail
        inner = self.type_text((element_kind, element))
        return f"{inner}[{length}]" if kind == _ARRAY else f"sequence<{inner}>"

    def convert(self, msg_type: str, field: str, desc: tuple, value: Any) -> Any:
        """Check `value` for a field as rclpy does and return what rclpy would store."""
        where = f"{msg_type}.{field}"
        kind, detail = desc
        if kind == _BASE:
            _check_scalar(where, detail[0], value)
            return value
        if kind == _NAME:
            _require(isinstance(value, self.cls(detail)), where, f"an instance of {detail}")
            return value
        (element_kind, element), length = detail
        if element_kind == _NAME:
            element_cls = self.cls(element)
            _require(
                _is_sequence(value) and all(isinstance(v, element_cls) for v in value),
                where,
                f"a sequence of {element} instances",
            )
            _check_length(where, kind, length, len(value))
            return value
        type_name = element[0]
        if type_name not in _TYPECODES:  # bool, byte, char, string: a checked sequence
            _require(_is_sequence(value), where, f"a sequence of {type_name}")
            for item in value:
                _check_scalar(where, type_name, item)
            _check_length(where, kind, length, len(value))
            return value
        if kind == _ARRAY:
            if isinstance(value, np.ndarray):
                _require(
                    value.dtype == np.dtype(type_name) and value.size == length,
                    where,
                    f"a numpy.ndarray of dtype {type_name} and size {length}",
                )
                return value
            _check_numeric_sequence(where, type_name, value)
            _check_length(where, kind, length, len(value))
            return np.array(value, dtype=type_name)
        if isinstance(value, array.array):
            _require(
                value.typecode == _TYPECODES[type_name],
                where,
                f"an array.array of type code {_TYPECODES[type_name]!r}",
            )
            _check_length(where, kind, length, len(value))
            return value
        _check_numeric_sequence(where, type_name, value)
        _check_length(where, kind, length, len(value))
        return array.array(_TYPECODES[type_name], value)


@functools.cache
def fake_messages(distro: str = "humble") -> FakeMessages:
    """The shared `FakeMessages` (classes stay identical across tests)."""
    return FakeMessages(distro)


def _scalar_default(type_name: str) -> Any:
    if type_name == "string":
        return ""
    if type_name == "bool":
        return False
    if type_name == "byte":
        return b"\x00"
    if type_name == "char":
        return "\x00"
    if type_name.startswith("float"):
        return 0.0
    return 0


def _require(ok: bool, where: str, expected: str) -> None:
    if not ok:
        raise AssertionError(f"The '{where}' field must be {expected}")


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (Sequence, Set, UserList)) and not isinstance(value, (str, UserString))


def _check_scalar(where: str, type_name: str, value: Any) -> None:
    if type_name == "bool":
        _require(isinstance(value, bool), where, "of type 'bool'")
    elif type_name == "string":
        _require(isinstance(value, str), where, "of type 'str'")
    elif type_name == "byte":
        _require(isinstance(value, bytes) and len(value) == 1, where, "of type 'bytes', length 1")
    elif type_name == "char":
        _require(isinstance(value, str) and len(value) == 1, where, "a str of length 1")
    elif type_name in _FLOAT_MAX:
        limit = _FLOAT_MAX[type_name]
        _require(isinstance(value, float), where, "of type 'float'")
        _require(not (value < -limit or value > limit), where, f"a {type_name} in range")
    else:
        low, high = _INT_RANGES[type_name]
        _require(isinstance(value, int), where, "of type 'int'")
        _require(low <= value <= high, where, f"an integer in [{low}, {high}]")


def _check_numeric_sequence(where: str, type_name: str, value: Any) -> None:
    # rclpy's check: a Sequence/Set/UserList (so not a numpy array) of exact Python values.
    _require(_is_sequence(value), where, f"a sequence of {type_name} (not a numpy array)")
    for item in value:
        _check_scalar(where, type_name, item)


def _check_length(where: str, kind: int, length: int, actual: int) -> None:
    if kind == _ARRAY:
        _require(actual == length, where, f"of length {length}")
    elif length:
        _require(actual <= length, where, f"of length <= {length}")
