"""Fakes of message_filters, tf2_ros and diagnostic_updater on top of the fake rclpy.

Following ros2/message_filters `__init__.py`, tf2_ros_py `buffer.py` and
`transform_listener.py`, and ros/diagnostics `_diagnostic_updater.py` and
`_diagnostic_status_wrapper.py` (ros2-humble). Used by `ros_fakes`.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, ClassVar

from ros_fake_node import Node
from ros_fake_rclpy import (
    DurabilityPolicy,
    Duration,
    QoSProfile,
    ReentrantCallbackGroup,
    Time,
)

# --- message_filters (the Python implementation, abridged) ----------------------------------


class SimpleFilter:
    def __init__(self) -> None:
        self.callbacks: dict[int, tuple] = {}

    def registerCallback(self, cb: Any, *args: Any) -> int:  # noqa: N802
        conn = len(self.callbacks)
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802
        for cb, args in self.callbacks.values():
            cb(*(msg + args))


class FilterSubscriber(SimpleFilter):
    """message_filters.Subscriber: `(node, msg_type, topic, **create_subscription kwargs)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.node, self.topic = args[0], args[2]
        kwargs.setdefault("qos_profile", 10)
        self.sub = self.node.create_subscription(*args[1:], self.callback, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)


class ApproximateTimeSynchronizer(SimpleFilter):
    """Emit one message per input whose stamps lie within `slop` seconds of each other."""

    def __init__(self, fs: list, queue_size: int, slop: float, allow_headerless: bool = False):
        super().__init__()
        self.queue_size, self.slop_ns = queue_size, Duration(seconds=slop).nanoseconds
        self.lock = threading.Lock()
        self.queues: list[dict[int, Any]] = [{} for _ in fs]
        self.input_connections = [
            f.registerCallback(self.add, q, i)
            for i, (f, q) in enumerate(zip(fs, self.queues, strict=True))
        ]

    def add(self, msg: Any, my_queue: dict, my_queue_index: int | None = None) -> None:
        stamp = msg.header.stamp
        stamp_ns = Time(seconds=stamp.sec, nanoseconds=stamp.nanosec).nanoseconds
        with self.lock:
            my_queue[stamp_ns] = msg
            while len(my_queue) > self.queue_size:
                del my_queue[min(my_queue)]
            near = [
                [s for s in q if abs(s - stamp_ns) <= self.slop_ns]
                if q is not my_queue
                else [stamp_ns]
                for q in self.queues
            ]
            for stamps in itertools.product(*near):
                if max(stamps) - min(stamps) < self.slop_ns:
                    msgs = [q.pop(s) for q, s in zip(self.queues, stamps, strict=True)]
                    self.signalMessage(*msgs)
                    return


# --- tf2_ros -------------------------------------------------------------------------------------


class TransformException(Exception):
    """Base of the tf2 lookup errors."""


class LookupException(TransformException):
    """A frame is unknown."""


_ZERO = Duration()


class Buffer:
    """tf2_ros.buffer.Buffer: transforms set by a listener, looked up by (target, source)."""

    _ros: ClassVar[Any]
    _stamped: ClassVar[type]

    def __init__(self, cache_time: Duration | None = None, node: Node | None = None) -> None:
        self._transforms: dict[tuple[str, str], Any] = {}
        #: (target, source, time ns, timeout ns) of every lookup, for tests.
        self.lookups: list[tuple[str, str, int, int]] = []
        self._ros.buffers.append(self)

    def set_transform(self, transform: Any, authority: str) -> None:
        if not isinstance(transform, self._stamped):
            raise TypeError("set_transform takes a geometry_msgs/TransformStamped")
        self._transforms[(transform.header.frame_id, transform.child_frame_id)] = transform

    set_transform_static = set_transform

    def lookup_transform(
        self,
        target_frame: str,
        source_frame: str,
        time: Time,
        timeout: Duration = _ZERO,  # rclpy: Duration()
    ) -> Any:
        if not isinstance(time, Time) or not isinstance(timeout, Duration):
            raise TypeError("lookup_transform takes an rclpy Time and an rclpy Duration timeout")
        self.lookups.append((target_frame, source_frame, time.nanoseconds, timeout.nanoseconds))
        try:
            return self._transforms[(target_frame, source_frame)]
        except KeyError:
            raise LookupException(
                f'"{source_frame}" passed to lookupTransform argument source_frame does not exist.'
            ) from None


class TransformListener:
    """tf2_ros TransformListener: subscribes `node` to /tf and /tf_static for `buffer`."""

    _tf_message: ClassVar[type]

    def __init__(
        self,
        buffer: Buffer,
        node: Node,
        *,
        spin_thread: bool = False,
        qos: QoSProfile | int | None = None,
        static_qos: QoSProfile | int | None = None,
    ) -> None:
        if not isinstance(buffer, Buffer) or not isinstance(node, Node):
            raise TypeError("TransformListener(buffer, node) takes a Buffer and a Node")
        self.buffer, group = buffer, ReentrantCallbackGroup()
        static = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(
            self._tf_message, "/tf", self._on_tf, qos or QoSProfile(depth=100), callback_group=group
        )
        node.create_subscription(
            self._tf_message, "/tf_static", self._on_tf, static_qos or static, callback_group=group
        )

    def _on_tf(self, data: Any) -> None:
        for transform in data.transforms:
            self.buffer.set_transform(transform, "default_authority")


# --- diagnostic_updater --------------------------------------------------------------------------


class DiagnosticStatusWrapperMixin:
    """summary/add of diagnostic_updater.DiagnosticStatusWrapper (mixed into DiagnosticStatus)."""

    _key_value: ClassVar[type]

    def summary(self, *args: Any) -> None:
        if len(args) == 1:
            self.level, self.message = args[0].level, args[0].message
        elif len(args) == 2:
            self.level, self.message = args[0], str(args[1])

    def add(self, key: Any, val: Any) -> None:
        key_value = self._key_value()
        key_value.key, key_value.value = key, val  # rclpy checks both are str
        self.values.append(key_value)


class Updater:
    """diagnostic_updater.Updater(node, period=1.0): declares its period, runs named tasks."""

    _ros: ClassVar[Any]
    _wrapper: ClassVar[type]
    _array: ClassVar[type]
    _status: ClassVar[type]

    def __init__(self, node: Node, period: float = 1.0) -> None:
        self.node, self.tasks, self.hwid = node, [], ""
        self.lock = threading.Lock()
        self.publisher = node.create_publisher(self._array, "/diagnostics", 1)
        self.period = node.declare_parameter("diagnostic_updater.period", period).value
        self.timer = node.create_timer(self.period, self.update)
        self._ros.updaters.append(self)

    def add(self, *args: Any) -> None:
        if len(args) == 1:
            name, fn = args[0].getName(), args[0].run
        elif len(args) == 2:
            name, fn = args
        else:
            raise TypeError(f"add(task) or add(name, fn), got {len(args)} arguments")
        with self.lock:
            self.tasks.append((name, fn))
        stat = self._wrapper(name=name)
        stat.summary(self._status.OK, "Node starting up")
        self.publish([stat])

    def setHardwareID(self, hwid: str) -> None:  # noqa: N802
        self.hwid = hwid

    def update(self) -> None:
        statuses = []
        with self.lock:
            for name, fn in self.tasks:
                status = self._wrapper(level=self._status.ERROR, name=name, hardware_id=self.hwid)
                status.message = "No message was set"
                status = fn(status)
                if not isinstance(status, self._status):
                    raise TypeError(f"diagnostic task {name!r} returned {type(status)!r}")
                statuses.append(status)
        self.publish(statuses)

    force_update = update

    def publish(self, statuses: list) -> None:
        header = self._array().header
        prefixed = []
        for stat in statuses:
            plain = self._status(
                level=stat.level,
                name=f"{self.node.get_name()}: {stat.name}",
                message=stat.message,
                hardware_id=stat.hardware_id,
                values=stat.values,
            )
            prefixed.append(plain)
        self.publisher.publish(self._array(header=header, status=prefixed))
