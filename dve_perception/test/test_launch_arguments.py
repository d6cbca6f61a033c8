"""robot.launch.py's arguments map onto declared node parameters (checked without ROS)."""

from __future__ import annotations

import ast
from pathlib import Path

from dve_perception.settings.node_config import MappingNodeConfig, PerceptionNodeConfig
from dve_perception.settings.parameters import parameter_specs

LAUNCH = Path(__file__).parents[1] / "launch" / "robot.launch.py"


def _value(node: ast.expr):
    """A literal, a tuple of them, or None for a computed value (e.g. a share-folder path)."""
    if isinstance(node, ast.Tuple):
        return tuple(_value(element) for element in node.elts)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _literal(name: str):
    tree = ast.parse(LAUNCH.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return _value(node.value)
    raise AssertionError(f"{LAUNCH.name} has no module-level {name}")


def _parameters() -> dict[str, object]:
    specs = parameter_specs(PerceptionNodeConfig) + parameter_specs(MappingNodeConfig)
    return {spec.name: spec for spec in specs}


def test_every_overridden_parameter_is_declared_by_a_node_and_is_a_string():
    parameters = _parameters()
    for name in _literal("OVERRIDES"):
        assert name in parameters, f"launch argument {name} overrides an undeclared parameter"
        # Launch arguments are strings; only string parameters can take them unconverted.
        assert parameters[name].type == "string", name


def test_every_override_is_a_launch_argument_with_an_empty_default():
    arguments = {name: default for name, default, _ in _literal("ARGUMENTS")}
    for name in _literal("OVERRIDES"):
        # Empty means "leave the parameters file's value", so a default here would hide it.
        assert arguments.get(name) == "", name


def test_launch_arguments_are_documented_and_unique():
    arguments = _literal("ARGUMENTS")
    names = [name for name, _, _ in arguments]
    assert len(names) == len(set(names))
    assert all(description.strip() for _, _, description in arguments)
