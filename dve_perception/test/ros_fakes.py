"""A strict fake of the ROS 2 (Humble) Python APIs that `dve_perception.ros` imports.

`install_fake_ros(monkeypatch)` puts stand-in modules into `sys.modules` for rclpy, message_filters,
tf2_ros, diagnostic_updater and the message packages, so the adapters run here. The fakes take
the real signatures (checked against rclpy, ros2/message_filters, tf2_ros_py and
ros/diagnostics sources) and raise where the real API would: unknown keyword arguments,
positional use of keyword-only ones, a parameter declared twice or of the wrong type, a message
of another type than the publisher's, a logger call site that changes severity. The classes
live in `ros_fake_rclpy` (exceptions, parameters, logger, time, QoS), `ros_fake_node` (Node,
executor), `ros_fake_tools` (message_filters, tf2_ros, diagnostic_updater) and
`ros_fake_messages` (message classes, checked as rclpy checks field values).

The returned `FakeRos` plays the rest of the graph: it delivers messages to subscriptions,
calls services, sends transforms to TF listeners and runs diagnostics.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import ros_fake_node as node_fake
import ros_fake_rclpy as rclpy_fake
import ros_fake_tools as tools_fake
from ros_fake_messages import fake_messages

__all__ = ["FakeRos", "install_fake_ros"]


class FakeRos:
    """The fake ROS graph of one test: rclpy's global state, the nodes, the helpers."""

    def __init__(self) -> None:
        self.msgs = fake_messages()
        self.initialized = False
        self.nodes: list[node_fake.Node] = []
        self.updaters: list[tools_fake.Updater] = []
        self.executors: list[node_fake.MultiThreadedExecutor] = []
        self.buffers: list[tools_fake.Buffer] = []
        #: Parameter overrides every node sees (a parameters file's `/**` section); the same
        #: dict is the class attribute `Node.fake_parameter_overrides`.
        self.overrides: dict[str, Any] = {}
        #: Called by `MultiThreadedExecutor.spin` (default: return, as after a shutdown).
        self.on_spin = lambda executor: None
        self.Node = type(
            "Node",
            (node_fake.Node,),
            {"_ros": self, "fake_parameter_overrides": self.overrides, "__module__": "rclpy.node"},
        )
        self.Updater = type("Updater", (tools_fake.Updater,), {"_ros": self})
        self.MultiThreadedExecutor = type(
            "MultiThreadedExecutor", (node_fake.MultiThreadedExecutor,), {"_ros": self}
        )
        self.Buffer = type("Buffer", (tools_fake.Buffer,), {"_ros": self})

    # rclpy's module-level functions (keyword-only arguments as in Humble).
    def init(self, *, args=None, context=None, domain_id=None, signal_handler_options=None):
        if self.initialized:
            raise RuntimeError("Context.init() must only be called once")
        self.initialized = True

    def ok(self, *, context=None) -> bool:
        return self.initialized

    def shutdown(self, *, context=None, uninstall_handlers=None) -> None:
        if not self.initialized:
            raise RuntimeError("Context must be initialized before it can be shutdown")
        self.initialized = False

    def try_shutdown(self, *, context=None) -> None:
        self.initialized = False

    def create_node(self, node_name: str, **kwargs: Any) -> node_fake.Node:
        return self.Node(node_name, **kwargs)

    # Helpers for tests: the rest of the ROS graph.
    def node(self, name: str) -> node_fake.Node:
        """The last node created with `name`."""
        found = [n for n in self.nodes if n.get_name() == name]
        assert found, f"no node named {name!r} among {[n.get_name() for n in self.nodes]}"
        return found[-1]

    def published(self, node: node_fake.Node, topic: str) -> list:
        """Every message `node` published on `topic`."""
        return [m for p in node._fake_publishers if p.topic == topic for m in p.messages]

    def publisher(self, node: node_fake.Node, topic: str) -> node_fake.Publisher:
        found = [p for p in node._fake_publishers if p.topic == topic]
        assert len(found) == 1, f"{len(found)} publishers on {topic!r}"
        return found[0]

    def topics(self, node: node_fake.Node) -> set[str]:
        """The topics `node` publishes on."""
        return {p.topic for p in node._fake_publishers}

    def subscriptions(self, node: node_fake.Node, topic: str) -> list[node_fake.Subscription]:
        """`node`'s subscriptions on `topic` (msg_type, callback, qos_profile, ...)."""
        return [s for s in node._fake_subscriptions if s.topic == topic]

    def timers(self, node: node_fake.Node) -> list[node_fake.Timer]:
        """`node`'s timers (period_s, callback), in creation order."""
        return list(node._fake_timers)

    def deliver(self, node: node_fake.Node, topic: str, msg: Any) -> int:
        """Hand `msg` to `node`'s subscriptions on `topic` (as the executor would)."""
        subs = [s for s in node._fake_subscriptions if s.topic == topic]
        assert subs, f"{node.get_name()} has no subscription on {topic!r}"
        for sub in subs:
            if not isinstance(msg, sub.msg_type):
                raise TypeError(f"{topic} carries {sub.msg_type.__name__}, got {type(msg)}")
            sub.callback(msg)
        return len(subs)

    def call_service(self, node: node_fake.Node, name: str, **fields: Any) -> Any:
        """Call `node`'s service `name` with a request of `fields`; return the response."""
        found = [s for s in node._fake_services if s.name == name]
        assert len(found) == 1, f"{len(found)} services named {name!r} on {node.get_name()}"
        service = found[0]
        response = service.callback(service.srv_type.Request(**fields), service.srv_type.Response())
        if not isinstance(response, service.srv_type.Response):
            raise TypeError(f"{name} returned {type(response)}, not a {service.srv_type.name}")
        return response

    def send_static_transform(
        self, parent: str, child: str, translation_m=(0.0, 0.0, 0.0), quaternion_xyzw=(0, 0, 0, 1)
    ) -> None:
        """Publish parent <- child on /tf_static to every node's TF listener."""
        cls = self.msgs.cls
        vector = cls("geometry_msgs/msg/Vector3")(
            **dict(zip("xyz", map(float, translation_m), strict=True))
        )
        rotation = cls("geometry_msgs/msg/Quaternion")(
            **dict(zip("xyzw", map(float, quaternion_xyzw), strict=True))
        )
        stamped = cls("geometry_msgs/msg/TransformStamped")(
            header=cls("std_msgs/msg/Header")(frame_id=parent),
            child_frame_id=child,
            transform=cls("geometry_msgs/msg/Transform")(translation=vector, rotation=rotation),
        )
        message = cls("tf2_msgs/msg/TFMessage")(transforms=[stamped])
        for node in self.nodes:
            if any(s.topic == "/tf_static" for s in node._fake_subscriptions):
                self.deliver(node, "/tf_static", message)

    def diagnostics(self, node: node_fake.Node) -> dict[str, Any]:
        """Run `node`'s diagnostic updater once; return its statuses by task name."""
        updaters = [u for u in self.updaters if u.node is node]
        assert len(updaters) == 1, f"{node.get_name()} has {len(updaters)} diagnostic updaters"
        updaters[0].update()
        array_msg = self.published(node, "/diagnostics")[-1]
        prefix = f"{node.get_name()}: "
        return {s.name.removeprefix(prefix): s for s in array_msg.status}

    def parameters(self, node: node_fake.Node) -> dict[str, Any]:
        """The values of every parameter `node` declared, by name."""
        return {name: p.value for name, p in node._fake_parameters.items()}

    def logs(self, node: node_fake.Node, severity: str | None = None) -> list[str]:
        """Messages `node`'s logger received (at `severity`, e.g. "WARN")."""
        return [m for s, m in node.get_logger().records if severity in (None, s)]

    def close(self) -> None:
        """Shut rclpy down, so the adapters' worker threads leave their loops."""
        self.try_shutdown()


def install_fake_ros(monkeypatch: pytest.MonkeyPatch) -> FakeRos:
    """Install the fake ROS modules and forget previously imported adapter modules.

    `dve_perception.ros.*` must be imported after this call (they bind to the fakes); all
    changes to `sys.modules` and to the `dve_perception.ros` package are undone by
    `monkeypatch` at the end of the test.

    Returns:
        The fake graph (`FakeRos`).
    """
    ros = FakeRos()
    for name, module in _modules(ros).items():
        monkeypatch.setitem(sys.modules, name, module)
    import dve_perception.ros as package

    for name in [n for n in sys.modules if n.startswith("dve_perception.ros.")]:
        monkeypatch.delitem(sys.modules, name)
    for path in Path(package.__file__).parent.glob("*.py"):
        if path.stem != "__init__":
            # Re-imported submodules become package attributes: remove them afterwards.
            monkeypatch.setattr(package, path.stem, None, raising=False)
    return ros


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so `import pkg.sub` finds sub in sys.modules
    module.__dict__.update(attributes)
    return module


def _message_module(ros: FakeRos, package: str) -> types.ModuleType:
    module = _module(f"{package}.msg")

    def __getattr__(name: str) -> type:  # noqa: N807
        try:
            return ros.msgs.cls(f"{package}/msg/{name}")
        except KeyError:
            raise AttributeError(f"module '{package}.msg' has no attribute '{name}'") from None

    module.__getattr__ = __getattr__
    return module


def _modules(ros: FakeRos) -> dict[str, types.ModuleType]:
    msgs = ros.msgs
    status_cls = msgs.cls("diagnostic_msgs/msg/DiagnosticStatus")
    wrapper = type(
        "DiagnosticStatusWrapper",
        (tools_fake.DiagnosticStatusWrapperMixin, status_cls),
        {"_key_value": msgs.cls("diagnostic_msgs/msg/KeyValue")},
    )
    ros.Updater._wrapper = wrapper
    ros.Updater._array = msgs.cls("diagnostic_msgs/msg/DiagnosticArray")
    ros.Updater._status = status_cls
    tools_fake.TransformListener._tf_message = msgs.cls("tf2_msgs/msg/TFMessage")
    tools_fake.Buffer._stamped = msgs.cls("geometry_msgs/msg/TransformStamped")
    modules = {
        "rclpy": _module(
            "rclpy",
            init=ros.init,
            ok=ros.ok,
            shutdown=ros.shutdown,
            try_shutdown=ros.try_shutdown,
            create_node=ros.create_node,
        ),
        "rclpy.node": _module("rclpy.node", Node=ros.Node),
        "rclpy.qos": _module("rclpy.qos", **rclpy_fake.QOS_EXPORTS),
        "rclpy.callback_groups": _module(
            "rclpy.callback_groups",
            CallbackGroup=rclpy_fake.CallbackGroup,
            MutuallyExclusiveCallbackGroup=rclpy_fake.MutuallyExclusiveCallbackGroup,
            ReentrantCallbackGroup=rclpy_fake.ReentrantCallbackGroup,
        ),
        "rclpy.duration": _module("rclpy.duration", Duration=rclpy_fake.Duration),
        "rclpy.time": _module("rclpy.time", Time=rclpy_fake.Time, ClockType=rclpy_fake.ClockType),
        "rclpy.clock": _module("rclpy.clock", ClockType=rclpy_fake.ClockType),
        "rclpy.signals": _module(
            "rclpy.signals", SignalHandlerOptions=rclpy_fake.SignalHandlerOptions
        ),
        "rclpy.executors": _module(
            "rclpy.executors",
            MultiThreadedExecutor=ros.MultiThreadedExecutor,
            ExternalShutdownException=rclpy_fake.ExternalShutdownException,
        ),
        "rclpy.exceptions": _module("rclpy.exceptions", **rclpy_fake.EXCEPTION_EXPORTS),
        "rcl_interfaces": _module("rcl_interfaces"),
        "rcl_interfaces.msg": _message_module(ros, "rcl_interfaces"),
        "message_filters": _module(
            "message_filters",
            SimpleFilter=tools_fake.SimpleFilter,
            Subscriber=tools_fake.FilterSubscriber,
            ApproximateTimeSynchronizer=tools_fake.ApproximateTimeSynchronizer,
        ),
        "tf2_ros": _module(
            "tf2_ros",
            TransformException=tools_fake.TransformException,
            LookupException=tools_fake.LookupException,
        ),
        "tf2_ros.buffer": _module("tf2_ros.buffer", Buffer=ros.Buffer),
        "tf2_ros.transform_listener": _module(
            "tf2_ros.transform_listener", TransformListener=tools_fake.TransformListener
        ),
        "diagnostic_updater": _module(
            "diagnostic_updater", Updater=ros.Updater, DiagnosticStatusWrapper=wrapper
        ),
        "std_srvs": _module("std_srvs"),
        "std_srvs.srv": _module("std_srvs.srv", Trigger=msgs.service("std_srvs/srv/Trigger")),
        "dve_perception_interfaces.srv": _module(
            "dve_perception_interfaces.srv",
            **{
                name: msgs.service(f"dve_perception_interfaces/srv/{name}")
                for name in ("QueryText", "SaveMap", "LoadMap")
            },
        ),
    }
    for package in (
        "builtin_interfaces",
        "diagnostic_msgs",
        "geometry_msgs",
        "sensor_msgs",
        "std_msgs",
        "visualization_msgs",
        "dve_perception_interfaces",
    ):
        modules.setdefault(package, _module(package))
        modules[f"{package}.msg"] = _message_module(ros, package)
    for name, module in modules.items():  # `import a.b` then `a.b` needs the attribute
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules
