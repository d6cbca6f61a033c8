"""Declare ROS parameters from the core's config dataclasses and read them back.

`parameters.parameter_specs` walks a dataclass (nested ones become dotted names such as
`map.voxel_size_m`); here each spec becomes a declared parameter with its description, choices
and a read-only flag, so `ros2 param describe` shows the same documentation as the code, and the
values come back through `parameters.config_from_parameters`, which validates them exactly as
the CLI and the tests do.
"""

from __future__ import annotations

from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node

from dve_perception.errors import ConfigError
from dve_perception.settings.parameters import (
    ParameterSpec,
    config_from_parameters,
    parameter_specs,
)

__all__ = ["declare_config"]

T = TypeVar("T")

_TYPES = {
    "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER,
    "double": ParameterType.PARAMETER_DOUBLE,
    "string": ParameterType.PARAMETER_STRING,
}


def _descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    constraints = f"one of: {', '.join(map(repr, spec.choices))}" if spec.choices else ""
    return ParameterDescriptor(
        name=spec.name,
        type=_TYPES[spec.type],
        description=spec.description,
        additional_constraints=constraints,
        # Settings are read once at start-up; changing them live would need rebuilding the
        # pipeline or the map, so say so instead of silently ignoring a `ros2 param set`.
        read_only=True,
    )


def declare_config(node: Node, config_cls: type[T], declared: set[str] | None = None) -> T:
    """Declare every field of `config_cls` as a parameter of `node` and build the config.

    Args:
        node: the node.
        config_cls: a config dataclass (e.g. `PerceptionNodeConfig`).
        declared: names already declared by another config of the same node (a combined node
            shares e.g. `models_dir`); they are read, not declared again. Updated in place.

    Returns:
        The validated config.

    Raises:
        ConfigError: a value is out of range or of the wrong type.
    """
    declared = set() if declared is None else declared
    values: dict[str, Any] = {}
    for spec in parameter_specs(config_cls):
        if spec.name not in declared:
            try:
                node.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except InvalidParameterTypeException as err:
                # e.g. `voxel_size_m: 1` in a parameters file: rclpy refuses an integer for a
                # double parameter. Say which parameter and how to write it, in one line.
                raise ConfigError(
                    f"parameter {spec.name} must be a {spec.type} ({spec.description}); the "
                    f"value given has another type ({err}); write e.g. {spec.default!r}"
                ) from err
            declared.add(spec.name)
        values[spec.name] = node.get_parameter(spec.name).value
    return config_from_parameters(config_cls, values)
