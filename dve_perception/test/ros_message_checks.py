"""Checks for messages built with `rosbags_message_types`: rclpy-compatible, CDR round trip.

Imported by the message builder tests (pytest puts this folder on sys.path).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from dve_perception.messages.message_types import rosbags_message_types

INTERFACES_DIR = Path(__file__).parents[2] / "dve_perception_interfaces"
DISTROS = ("humble", "jazzy")


@cache
def message_types(distro: str):
    """The rosbags message types of `distro` with our interfaces registered (built once)."""
    return rosbags_message_types(distro, interfaces_dir=INTERFACES_DIR)


def check_message(types, msg):
    """Fail on values rclpy would reject, serialize with CDR, and compare the decoded copy."""
    check_rclpy_compatible(types.typestore, msg)
    raw = types.typestore.serialize_cdr(msg, msg.__msgtype__)
    back = types.typestore.deserialize_cdr(raw, msg.__msgtype__)
    assert_same_message(types.typestore, msg, back)
    return back


_PY_TYPES = {"bool": bool, "string": str, "float32": float, "float64": float}


def check_rclpy_compatible(typestore, msg, path="msg"):
    for name, (kind, detail) in typestore.fielddefs[msg.__msgtype__][1]:
        value, where = getattr(msg, name), f"{path}.{name}"
        if kind == 1:  # base scalar: rclpy wants exactly bool / int / float / str
            expected = _PY_TYPES.get(detail[0], int)
            assert type(value) is expected, f"{where} is {type(value).__name__}, not {expected}"
        elif kind == 2:
            check_rclpy_compatible(typestore, value, where)
        else:
            (element_kind, element), _ = detail
            if element_kind == 2:
                assert isinstance(value, list), f"{where} must be a list of messages"
                for i, item in enumerate(value):
                    check_rclpy_compatible(typestore, item, f"{where}[{i}]")
            elif element[0] == "string":
                assert all(type(v) is str for v in value), f"{where} must hold str"
            else:
                assert isinstance(value, np.ndarray) and value.ndim == 1, f"{where} not 1-D array"


def assert_same_message(typestore, a, b, path="msg"):
    for name, (kind, detail) in typestore.fielddefs[a.__msgtype__][1]:
        x, y, where = getattr(a, name), getattr(b, name), f"{path}.{name}"
        if kind == 2:
            assert_same_message(typestore, x, y, where)
        elif kind == 1 and detail[0] == "float32":
            assert np.float32(x) == np.float32(y), where
        elif kind == 1:
            assert x == y, where
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=where)
        else:
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                if isinstance(u, str):
                    assert u == v, where
                else:
                    assert_same_message(typestore, u, v, f"{where}[{i}]")
