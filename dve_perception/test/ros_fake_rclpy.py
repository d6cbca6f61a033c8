"""Fakes of rclpy's exceptions, parameters, logger, time, QoS and callback groups.

Signatures and checks follow rclpy's Humble sources (`parameter.py`, `impl/rcutils_logger.py`,
`time.py`, `duration.py`, `qos.py`, `executors.py`); where those raise, these raise too. Used by
`ros_fakes`.
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from typing import Any

# --- rclpy.exceptions ------------------------------------------------------------------------


class NotInitializedException(Exception):
    """rclpy.init() was not called."""


class ParameterAlreadyDeclaredException(Exception):
    """A parameter was declared twice."""


class ParameterNotDeclaredException(Exception):
    """A parameter was read without being declared."""


class InvalidParameterTypeException(Exception):
    """A value (e.g. an override) does not have the declared parameter type."""


class InvalidTopicNameException(ValueError):
    """A topic or service name that rcl would refuse."""


class InvalidHandle(Exception):
    """An entity of a destroyed node was used."""


EXCEPTION_EXPORTS = {
    cls.__name__: cls
    for cls in (
        NotInitializedException,
        ParameterAlreadyDeclaredException,
        ParameterNotDeclaredException,
        InvalidParameterTypeException,
        InvalidTopicNameException,
        InvalidHandle,
    )
}

# --- rclpy.parameter ---------------------------------------------------------------------------

#: rcl_interfaces/ParameterType values.
NOT_SET, BOOL, INTEGER, DOUBLE, STRING = 0, 1, 2, 3, 4


def parameter_type(value: Any) -> int:
    """rclpy's `Parameter.Type.from_parameter_value` (scalars and arrays)."""
    if value is None:
        return NOT_SET
    for kind, scalar, array_kind in ((bool, BOOL, 6), (int, INTEGER, 7), (float, DOUBLE, 8)):
        if isinstance(value, kind):
            return scalar
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, kind) for v in value):
            return array_kind
    if isinstance(value, str):
        return STRING
    if isinstance(value, bytes):
        return 5
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return 9
    raise TypeError(f"The given value is not one of the allowed types: {value!r}")


class Parameter:
    """rclpy.parameter.Parameter: name, value and type_."""

    def __init__(self, name: str, value: Any = None) -> None:
        self.name, self.value, self.type_ = name, value, parameter_type(value)


# --- logging -----------------------------------------------------------------------------------

_LOG_OPTIONS = {"throttle_duration_sec", "throttle_time_source_type", "skip_first", "once"}


class Logger:
    """RcutilsLogger: records (severity, message); one severity per call site, like rclpy.

    The filter options (throttle_duration_sec, once, ...) are accepted but not applied: every
    call is recorded, so a test sees how often the adapter itself decided to log.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[tuple[str, str]] = []
        self._severity_by_site: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def _log(self, severity: str, message: Any, kwargs: dict[str, Any]) -> bool:
        kwargs.pop("name", None)
        for key in kwargs:
            if key not in _LOG_OPTIONS:
                raise TypeError(
                    f'parameter "{key}" is not one of the recognized logging options '
                    f'"{sorted(_LOG_OPTIONS)}"'
                )
        if not isinstance(message, str):  # the C extension takes a str
            raise TypeError(f"log message must be a str, got {type(message).__name__}")
        frame = sys._getframe(1)
        while frame.f_code.co_filename == __file__:
            frame = frame.f_back
        # rclpy's CallerId: function, file, line and instruction of the first outside frame;
        # it keeps a context per caller and refuses a different severity from the same site.
        site = (frame.f_code.co_filename, frame.f_code.co_name, frame.f_lineno, frame.f_lasti)
        with self._lock:
            if self._severity_by_site.setdefault(site, severity) != severity:
                raise ValueError("Logger severity cannot be changed between calls.")
            self.records.append((severity, message))
        return True

    def debug(self, message: Any, **kwargs: Any) -> bool:
        return self._log("DEBUG", message, kwargs)

    def info(self, message: Any, **kwargs: Any) -> bool:
        return self._log("INFO", message, kwargs)

    def warning(self, message: Any, **kwargs: Any) -> bool:
        return self._log("WARN", message, kwargs)

    def warn(self, message: Any, **kwargs: Any) -> bool:  # deprecated alias, still in Humble
        return self._log("WARN", message, kwargs)

    def error(self, message: Any, **kwargs: Any) -> bool:
        return self._log("ERROR", message, kwargs)

    def fatal(self, message: Any, **kwargs: Any) -> bool:
        return self._log("FATAL", message, kwargs)


# --- rclpy.signals ---------------------------------------------------------------------------


class SignalHandlerOptions(enum.IntEnum):
    """rclpy.signals.SignalHandlerOptions: which signal handlers rclpy.init installs."""

    NO = 0
    SIGINT = 1
    SIGTERM = 2
    ALL = 3


# --- rclpy.time, rclpy.duration, rclpy.clock ---------------------------------------------------


class ClockType(enum.IntEnum):
    UNINITIALIZED = 0
    ROS_TIME = 1
    SYSTEM_TIME = 2
    STEADY_TIME = 3


def _total_ns(seconds: float, nanoseconds: int) -> int:
    return int(seconds * 1_000_000_000) + int(nanoseconds)


class Duration:
    """rclpy.duration.Duration (keyword-only)."""

    def __init__(self, *, seconds: float = 0, nanoseconds: int = 0) -> None:
        self.nanoseconds = _total_ns(seconds, nanoseconds)
        if not -(2**63) <= self.nanoseconds < 2**63:
            raise OverflowError("Total nanoseconds value is too large to store in C duration.")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Duration):
            raise TypeError(f"Can't compare duration with object of type: {type(other)}")
        return self.nanoseconds == other.nanoseconds


class Time:
    """rclpy.time.Time (keyword-only)."""

    def __init__(
        self,
        *,
        seconds: float = 0,
        nanoseconds: int = 0,
        clock_type: ClockType = ClockType.SYSTEM_TIME,
    ) -> None:
        if not isinstance(clock_type, ClockType):
            raise TypeError("Clock type must be a ClockType enum")
        self.nanoseconds, self.clock_type = _total_ns(seconds, nanoseconds), clock_type
        if self.nanoseconds < 0:
            raise ValueError("Total nanoseconds value is negative")
        if self.nanoseconds >= 2**63:
            raise OverflowError("Total nanoseconds value is too large to store in C time point.")


class Clock:
    def now(self) -> Time:
        return Time(nanoseconds=time.time_ns(), clock_type=ClockType.ROS_TIME)


# --- rclpy.qos, rclpy.callback_groups --------------------------------------------------------


class HistoryPolicy(enum.IntEnum):
    SYSTEM_DEFAULT, KEEP_LAST, KEEP_ALL, UNKNOWN = 0, 1, 2, 3


class ReliabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT, RELIABLE, BEST_EFFORT, UNKNOWN = 0, 1, 2, 3


class DurabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT, TRANSIENT_LOCAL, VOLATILE, UNKNOWN = 0, 1, 2, 3


class InvalidQoSProfileException(Exception):
    """History and depth are inconsistent."""


class QoSProfile:
    """rclpy.qos.QoSProfile(**kwargs): history and/or depth required; policies checked."""

    _FIELDS = (
        "history",
        "depth",
        "reliability",
        "durability",
        "lifespan",
        "deadline",
        "liveliness",
        "liveliness_lease_duration",
        "avoid_ros_namespace_conventions",
    )

    def __init__(self, **kwargs: Any) -> None:
        assert all(key in self._FIELDS for key in kwargs), (
            f"Invalid arguments passed to constructor: {kwargs.keys()!r}"
        )
        if "history" not in kwargs:
            if "depth" not in kwargs:
                raise InvalidQoSProfileException("History and/or depth settings are required.")
            kwargs["history"] = HistoryPolicy.KEEP_LAST
        self.history = _policy(HistoryPolicy, kwargs["history"])
        if self.history == HistoryPolicy.KEEP_LAST and "depth" not in kwargs:
            raise InvalidQoSProfileException("History set to KEEP_LAST without a depth setting.")
        self.depth = kwargs.get("depth", 0)
        assert isinstance(self.depth, int)  # rclpy asserts too (the depth setter)
        self.reliability = _policy(ReliabilityPolicy, kwargs.get("reliability", 1))
        self.durability = _policy(DurabilityPolicy, kwargs.get("durability", 2))
        for key in ("lifespan", "deadline", "liveliness_lease_duration"):
            assert isinstance(kwargs.get(key, Duration()), Duration)


def _policy(enum_cls: type[enum.IntEnum], value: Any) -> enum.IntEnum:
    assert isinstance(value, int), f"{enum_cls.__name__} expected, got {value!r}"
    return enum_cls(value)


QOS_EXPORTS = {
    "QoSProfile": QoSProfile,
    "HistoryPolicy": HistoryPolicy,
    "ReliabilityPolicy": ReliabilityPolicy,
    "DurabilityPolicy": DurabilityPolicy,
    "InvalidQoSProfileException": InvalidQoSProfileException,
    "qos_profile_sensor_data": QoSProfile(history=1, depth=5, reliability=2, durability=2),
    "qos_profile_services_default": QoSProfile(history=1, depth=10, reliability=1, durability=2),
}


class CallbackGroup:
    pass


class MutuallyExclusiveCallbackGroup(CallbackGroup):
    def __init__(self) -> None:
        pass


class ReentrantCallbackGroup(CallbackGroup):
    def __init__(self) -> None:
        pass


# --- rclpy.executors ---------------------------------------------------------------------------


class ExternalShutdownException(Exception):
    """Context has been shutdown."""
