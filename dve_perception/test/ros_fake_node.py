"""A fake rclpy `Node` (Humble constructor and methods) and the entities it creates.

Checked against rclpy's `node.py`: keyword-only arguments where rclpy has them, static
parameter typing (the default's type; an override of another type is refused), QoS profiles or
depths, message and service types with type support, valid topic and service names. Used by
`ros_fakes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ros_fake_rclpy import (
    NOT_SET,
    CallbackGroup,
    Clock,
    InvalidHandle,
    InvalidParameterTypeException,
    InvalidTopicNameException,
    Logger,
    NotInitializedException,
    Parameter,
    ParameterAlreadyDeclaredException,
    ParameterNotDeclaredException,
    QoSProfile,
    parameter_type,
)

# --- rclpy.node entities --------------------------------------------------------------------


@dataclass(eq=False)
class Publisher:
    node: Node
    msg_type: type
    topic: str
    qos_profile: QoSProfile
    messages: list = field(default_factory=list)

    def publish(self, msg: Any) -> None:
        if self.node._fake_destroyed:
            raise InvalidHandle(f"publisher on {self.topic!r}: its node was destroyed")
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"Expected {self.msg_type.__name__}, got {type(msg).__name__}")
        self.messages.append(msg)


@dataclass(eq=False)
class Subscription:
    msg_type: type
    topic: str
    callback: Any
    qos_profile: QoSProfile
    callback_group: CallbackGroup | None


@dataclass(eq=False)
class Service:
    srv_type: Any
    name: str
    callback: Any
    callback_group: CallbackGroup | None


@dataclass(eq=False)
class Timer:
    period_s: float
    callback: Any
    callback_group: CallbackGroup | None


# "~", or relative, absolute or private names of [A-Za-z0-9_] tokens not starting with a digit.
_NAME = re.compile(r"~|(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidTopicNameException(f"invalid {what} name {name!r}")


def _check_qos(qos_profile: Any) -> None:
    if isinstance(qos_profile, int):
        if qos_profile < 0:
            raise ValueError("history depth must be greater than or equal to zero")
    elif not isinstance(qos_profile, QoSProfile):
        raise TypeError(f"Expected QoSProfile or int, but received {type(qos_profile)!r}")


def _check_group(group: Any) -> None:
    if group is not None and not isinstance(group, CallbackGroup):
        raise TypeError(f"callback_group must be a CallbackGroup, got {type(group)!r}")


def _check_type_support(cls: Any) -> None:
    if getattr(cls, "_TYPE_SUPPORT", None) is None:
        raise AttributeError(f"{cls!r} is not a ROS message or service type")


class Node:
    """rclpy.node.Node with the Humble constructor; overrides from `fake_parameter_overrides`."""

    _ros: ClassVar[Any]
    #: Parameter overrides every node of the fake graph sees (set by tests).
    fake_parameter_overrides: ClassVar[dict[str, Any]]

    def __init__(
        self,
        node_name: str,
        *,
        context: Any = None,
        cli_args: list[str] | None = None,
        namespace: str | None = None,
        use_global_arguments: bool = True,
        enable_rosout: bool = True,
        start_parameter_services: bool = True,
        parameter_overrides: list[Parameter] | None = None,
        allow_undeclared_parameters: bool = False,
        automatically_declare_parameters_from_overrides: bool = False,
    ) -> None:
        if not self._ros.ok():
            raise NotInitializedException("cannot create node")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node_name):
            raise InvalidTopicNameException(f"invalid node name {node_name!r}")
        self._fake_name, self._fake_namespace = node_name, namespace or "/"
        self._fake_overrides = dict(self.fake_parameter_overrides)
        self._fake_overrides.update({p.name: p.value for p in parameter_overrides or []})
        self._fake_allow_undeclared = allow_undeclared_parameters
        self._fake_parameters: dict[str, Parameter] = {}
        self._fake_descriptors: dict[str, Any] = {}
        self._fake_publishers: list[Publisher] = []
        self._fake_subscriptions: list[Subscription] = []
        self._fake_services: list[Service] = []
        self._fake_timers: list[Timer] = []
        self._fake_destroyed = False
        self._fake_logger, self._fake_clock = Logger(node_name), Clock()
        self._ros.nodes.append(self)
        self.declare_parameter("use_sim_time", False)  # rclpy's TimeSource declares it

    def get_name(self) -> str:
        return self._fake_name

    def get_namespace(self) -> str:
        return self._fake_namespace

    def get_logger(self) -> Logger:
        return self._fake_logger

    def get_clock(self) -> Clock:
        return self._fake_clock

    def declare_parameter(
        self, name: str, value: Any = None, descriptor: Any = None, ignore_override: bool = False
    ) -> Parameter:
        descriptor_cls = self._ros.msgs.cls("rcl_interfaces/msg/ParameterDescriptor")
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter name must be a non-empty str, got {name!r}")
        dynamic = value is None and descriptor is None  # the deprecated name-only form
        descriptor = descriptor_cls(dynamic_typing=dynamic) if descriptor is None else descriptor
        if not isinstance(descriptor, descriptor_cls):
            raise TypeError(f"descriptor of {name!r} is not a ParameterDescriptor")
        if name in self._fake_parameters:
            raise ParameterAlreadyDeclaredException([name])
        if not descriptor.dynamic_typing:
            # rclpy ignores the descriptor's type and infers it from the default value.
            descriptor.type = parameter_type(value)
            if descriptor.type == NOT_SET:
                raise ValueError("Cannot declare a statically typed parameter with default None")
        if not ignore_override and name in self._fake_overrides:
            value = self._fake_overrides[name]
        parameter = Parameter(name, value)
        if not descriptor.dynamic_typing and parameter.type_ not in (NOT_SET, descriptor.type):
            raise InvalidParameterTypeException(
                f"{name}: value {value!r} has type {parameter.type_}, expected {descriptor.type}"
            )
        descriptor.name = name
        self._fake_parameters[name], self._fake_descriptors[name] = parameter, descriptor
        return parameter

    def has_parameter(self, name: str) -> bool:
        return name in self._fake_parameters

    def get_parameter(self, name: str) -> Parameter:
        if name in self._fake_parameters:
            return self._fake_parameters[name]
        if self._fake_allow_undeclared:
            return Parameter(name)
        raise ParameterNotDeclaredException(name)

    def describe_parameter(self, name: str) -> Any:
        if name not in self._fake_descriptors:
            raise ParameterNotDeclaredException(name)
        return self._fake_descriptors[name]

    def create_publisher(
        self,
        msg_type: type,
        topic: str,
        qos_profile: QoSProfile | int,
        *,
        callback_group: CallbackGroup | None = None,
        event_callbacks: Any = None,
        qos_overriding_options: Any = None,
        publisher_class: Any = None,
    ) -> Publisher:
        self._fake_check_alive()
        _check_qos(qos_profile)
        _check_group(callback_group)
        _check_type_support(msg_type)
        _check_name(topic, "topic")
        publisher = Publisher(self, msg_type, topic, qos_profile)
        self._fake_publishers.append(publisher)
        return publisher

    def create_subscription(
        self,
        msg_type: type,
        topic: str,
        callback: Any,
        qos_profile: QoSProfile | int,
        *,
        callback_group: CallbackGroup | None = None,
        event_callbacks: Any = None,
        qos_overriding_options: Any = None,
        raw: bool = False,
    ) -> Subscription:
        self._fake_check_alive()
        _check_qos(qos_profile)
        _check_group(callback_group)
        _check_type_support(msg_type)
        _check_name(topic, "topic")
        if not callable(callback):
            raise TypeError(f"subscription callback for {topic!r} is not callable")
        sub = Subscription(msg_type, topic, callback, qos_profile, callback_group)
        self._fake_subscriptions.append(sub)
        return sub

    def create_service(
        self,
        srv_type: Any,
        srv_name: str,
        callback: Any,
        *,
        qos_profile: QoSProfile | None = None,
        callback_group: CallbackGroup | None = None,
    ) -> Service:
        self._fake_check_alive()
        _check_type_support(srv_type)
        _check_group(callback_group)
        _check_name(srv_name, "service")
        if not (hasattr(srv_type, "Request") and hasattr(srv_type, "Response")):
            raise AttributeError(f"{srv_type!r} is a message type, not a service type")
        if qos_profile is not None and not isinstance(qos_profile, QoSProfile):
            raise TypeError("qos_profile of a service must be a QoSProfile")
        service = Service(srv_type, srv_name, callback, callback_group)
        self._fake_services.append(service)
        return service

    def create_timer(
        self,
        timer_period_sec: float,
        callback: Any,
        callback_group: CallbackGroup | None = None,
        clock: Clock | None = None,
    ) -> Timer:
        self._fake_check_alive()
        _check_group(callback_group)
        if float(timer_period_sec) < 0 or not callable(callback):
            raise ValueError(f"timer needs a period >= 0 and a callable, got {timer_period_sec}")
        timer = Timer(float(timer_period_sec), callback, callback_group)
        self._fake_timers.append(timer)
        return timer

    def destroy_node(self) -> None:
        self._fake_destroyed = True

    def _fake_check_alive(self) -> None:
        if self._fake_destroyed:
            raise InvalidHandle(f"node {self._fake_name} was destroyed")


# --- rclpy.executors ---------------------------------------------------------------------------


class MultiThreadedExecutor:
    _ros: ClassVar[Any]

    def __init__(self, num_threads: int | None = None, *, context: Any = None) -> None:
        self.nodes: list[Node] = []
        self._ros.executors.append(self)

    def add_node(self, node: Node) -> bool:
        if not isinstance(node, Node):
            raise TypeError(f"add_node takes a Node, got {type(node)!r}")
        self.nodes.append(node)
        return True

    def spin(self) -> None:
        self._ros.on_spin(self)

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        return True
