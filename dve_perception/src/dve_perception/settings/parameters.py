"""Node settings declared once as frozen dataclasses, seen as flat ROS-style parameters.

A config dataclass gives every field a default and `metadata={"description": ...}` (optionally
`"choices": (...)`), and checks itself in `__post_init__`. This module turns such a class into
`ParameterSpec`s (nested configs become dotted names such as `map.voxel_size_m`), builds the class
back from dotted values, and writes/reads the ROS 2 parameters YAML (`/**: ros__parameters:`).
The ROS adapter (`ros/params.py`), the CLI and the tests all go through these functions, so a
value is validated the same way wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import textwrap
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dve_perception.errors import ConfigError
from dve_perception.settings.params_yaml import (
    flatten_parameters,
    read_yaml_file,
    ros_parameter_sections,
    select_node_parameters,
    yaml_key,
    yaml_scalar,
)

__all__ = [
    "PARAMETER_TYPES",
    "ParameterSpec",
    "config_from_parameters",
    "load_parameters_yaml",
    "parameter_specs",
    "render_parameters_yaml",
    "validate_config_fields",
]

T = TypeVar("T")
Scalar = bool | int | float | str

#: ROS 2 parameter type names of the scalar types a config field may have.
PARAMETER_TYPES = ("bool", "int", "double", "string")
_KIND_OF_TYPE = {bool: "bool", int: "int", float: "double", str: "string"}
_LINE_WIDTH = 100


@dataclass(frozen=True)
class ParameterSpec:
    """One scalar config field as a ROS parameter.

    Attributes:
        name: dotted name (`map.voxel_size_m` for a field of a nested config).
        default: the field's default (a float for "double", even where written as an int).
        type: one of `PARAMETER_TYPES`.
        description: the field's documentation (`ros2 param describe` shows it).
        choices: the allowed values, or None when any value of the type may be valid.
    """

    name: str
    default: Scalar
    type: str
    description: str
    choices: tuple[Scalar, ...] | None = None


@dataclass(frozen=True)
class _FieldInfo:
    """A field of a config class: a scalar parameter (`spec`) or a nested config (`nested`)."""

    name: str
    description: str
    spec: ParameterSpec | None
    nested: type | None


def parameter_specs(config_cls: type, prefix: str = "") -> list[ParameterSpec]:
    """List the parameters of a config dataclass, nested configs flattened to dotted names.

    Args:
        config_cls: a dataclass whose fields all have defaults and descriptions.
        prefix: prepended to every name (the walker passes `"map."` for a nested config).

    Returns:
        One spec per scalar field, in field order.

    Raises:
        TypeError: `config_cls` is not a dataclass, or a field has no default, no description,
            a type other than bool/int/float/str/dataclass, or a default outside its choices.
            These are programming errors in the config class, not bad user input.
    """
    specs: list[ParameterSpec] = []
    for info in _field_infos(config_cls):
        if info.nested is not None:
            specs.extend(parameter_specs(info.nested, f"{prefix}{info.name}."))
        else:
            specs.append(dataclasses.replace(info.spec, name=prefix + info.name))
    return specs


def config_from_parameters(config_cls: type[T], values: Mapping[str, object]) -> T:
    """Build a (nested) config dataclass from dotted parameter values.

    Args:
        config_cls: the config dataclass.
        values: dotted name -> value; missing names keep their defaults. An int is accepted for
            a double (YAML `5` for `5.0`); every other type mismatch is an error.

    Returns:
        The validated config.

    Raises:
        ConfigError: an unknown name, a value of the wrong type or outside its choices, or the
            config's own validation failed (the message names the dotted parameter).
    """
    specs = {spec.name: spec for spec in parameter_specs(config_cls)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        hints = {n: difflib.get_close_matches(n, specs, n=1) for n in unknown}
        said = ", ".join(
            f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items()
        )
        raise ConfigError(
            f"unknown parameter(s) for {config_cls.__name__}: {said}; "
            f"expected names among: {', '.join(specs)}"
        )
    merged = {name: spec.default for name, spec in specs.items()}
    for name, value in values.items():
        merged[name] = _checked_value(specs[name], value, f"parameter {name!r}")
    return _build(config_cls, merged, "")


def validate_config_fields(config: object) -> None:
    """Check a config instance's field types and choices against its declaration.

    Call it first in a config's `__post_init__`, so a config built directly in Python gets the
    same type and choice checks as one built from parameters.

    Args:
        config: a config dataclass instance.

    Raises:
        ConfigError: a field has the wrong type or a value outside its choices.
    """
    for info in _field_infos(type(config)):
        value = getattr(config, info.name)
        if info.nested is not None:
            if not isinstance(value, info.nested):
                raise ConfigError(
                    f"{info.name} must be a {info.nested.__name__}, got {value!r} "
                    f"({type(value).__name__})"
                )
        else:
            _checked_value(info.spec, value, info.name)


def render_parameters_yaml(
    config_classes: Sequence[type], node: str = "/**", header: str = ""
) -> str:
    """Write the ROS 2 parameters file of one or more configs, every value documented.

    Args:
        config_classes: config dataclasses whose parameters the file holds; a name declared by
            several classes (e.g. `models_dir`) is written once.
        node: the node key (`/**` applies to every node that declares the names).
        header: text written first as `#` comment lines ("" for none).

    Returns:
        The YAML text: `<node>: ros__parameters:` with nested mappings for dotted names, each
        parameter preceded by its description (and choices) as comments.

    Raises:
        TypeError: two classes declare the same name with a different type, default or choices,
            or a name is a parameter in one class and a nested config in another.
    """
    merged: dict[str, ParameterSpec] = {}
    groups: dict[str, str] = {}
    for config_cls in config_classes:
        for spec in parameter_specs(config_cls):
            earlier = merged.setdefault(spec.name, spec)
            if (earlier.type, earlier.default, earlier.choices) != (
                spec.type,
                spec.default,
                spec.choices,
            ) or type(earlier.default) is not type(spec.default):
                raise TypeError(
                    f"parameter {spec.name!r} is declared twice differently: {earlier} and {spec}"
                )
        for group, description in _group_descriptions(config_cls, "").items():
            groups.setdefault(group, description)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{yaml_key(node)}:", "  ros__parameters:"]
    lines += _render_tree(_tree(merged.values()), groups, "", 4)
    return "\n".join(lines) + "\n"


def load_parameters_yaml(
    path: str | Path,
    config_cls: type[T],
    node_names: Sequence[str] = ("/**",),
    *,
    ignore_unknown: bool = True,
) -> T:
    """Read a config from a ROS 2 parameters file, validated as the nodes validate it.

    Args:
        path: the YAML file (`<node>: ros__parameters: {...}`; namespaces may be nested keys).
        config_cls: the config dataclass to build.
        node_names: node keys to look for, in order; the first one present is used. A name with
            a leading "/" must equal the key (`/**`, `/dve_perception/dve_perception`); a bare
            name (`dve_perception`) also matches a key ending in `/dve_perception`.
        ignore_unknown: skip names that `config_cls` does not declare, since one file serves
            several nodes. This also skips misspelt names, which then keep their defaults; pass
            False to reject every name the class does not know.

    Returns:
        The validated config; names absent from the file keep their defaults.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML (the message gives
            the line), has no `ros__parameters` section for `node_names`, or a value is invalid.
    """
    path = Path(path)
    data = read_yaml_file(path)
    sections = ros_parameter_sections(data, path)
    if not sections:
        raise ConfigError(
            f"{path}: no ros__parameters section; expected a ROS 2 parameters file such as "
            "'/**:\\n  ros__parameters:\\n    name: value'"
        )
    flat = flatten_parameters(select_node_parameters(sections, node_names, path))
    if ignore_unknown:
        known = {spec.name for spec in parameter_specs(config_cls)}
        flat = {name: value for name, value in flat.items() if name in known}
    try:
        return config_from_parameters(config_cls, flat)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


@functools.cache
def _field_infos(config_cls: type) -> tuple[_FieldInfo, ...]:
    """Describe each field of a config class once (cached: `__post_init__` uses it)."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"expected a config dataclass, got {config_cls!r}")
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):
        hints = {}  # unresolvable annotations: fall back to the defaults' types
    infos = []
    for fld in dataclasses.fields(config_cls):
        where = f"{config_cls.__name__}.{fld.name}"
        description = fld.metadata.get("description")
        if not isinstance(description, str) or not description.strip():
            raise TypeError(f"{where} has no metadata={{'description': ...}}")
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            raise TypeError(f"{where} has no default; every config field needs one")
        hint = hints.get(fld.name, type(default))
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            infos.append(_FieldInfo(fld.name, description, None, hint))
            continue
        spec = _scalar_spec(where, fld, hint, default, description)
        infos.append(_FieldInfo(fld.name, description, spec, None))
    return tuple(infos)


def _scalar_spec(
    where: str, fld: dataclasses.Field, hint: object, default: object, description: str
) -> ParameterSpec:
    kind = _KIND_OF_TYPE.get(hint)  # exact lookup, so bool is never taken for int
    if kind is None:
        raise TypeError(
            f"{where}: unsupported type {hint!r}; use bool, int, float, str or a config"
        )
    spec = ParameterSpec(fld.name, default, kind, description)
    try:
        default = _checked_value(spec, default, where)
        choices = fld.metadata.get("choices")
        if choices is not None:
            choices = tuple(_checked_value(spec, choice, where) for choice in choices)
            if not choices or default not in choices:
                raise ConfigError(f"default {default!r} is not one of the choices {choices}")
    except ConfigError as err:
        raise TypeError(f"{where}: {err}") from err
    return dataclasses.replace(spec, default=default, choices=choices)


def _checked_value(spec: ParameterSpec, value: object, label: str) -> Scalar:
    """Return `value` as the spec's type (int -> float for a double) or raise ConfigError."""
    if spec.type == "double" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = {"bool": bool, "int": int, "double": float, "string": str}[spec.type]
    # bool is a subclass of int, so `True` for an int parameter needs its own check.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{label} must be {'an' if spec.type == 'int' else 'a'} {spec.type}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{label} must be one of {list(spec.choices)}, got {value!r}")
    return value


def _build(config_cls: type[T], values: Mapping[str, Scalar], prefix: str) -> T:
    """Construct `config_cls` from a complete dotted mapping, nested configs first."""
    kwargs: dict[str, Any] = {}
    for info in _field_infos(config_cls):
        name = prefix + info.name
        if info.nested is not None:
            kwargs[info.name] = _build(info.nested, values, name + ".")
        else:
            kwargs[info.name] = values[name]
    try:
        return config_cls(**kwargs)
    except ConfigError as err:
        if not prefix:
            raise
        # The class names its own fields; give them the dotted names the user wrote.
        names = "|".join(re.escape(info.name) for info in _field_infos(config_cls))
        message = re.sub(rf"(?<![\w.])({names})(?!\w)", rf"{prefix}\1", str(err))
        raise ConfigError(message) from err


def _group_descriptions(config_cls: type, prefix: str) -> dict[str, str]:
    groups: dict[str, str] = {}
    for info in _field_infos(config_cls):
        if info.nested is not None:
            groups[prefix + info.name] = info.description
            groups.update(_group_descriptions(info.nested, f"{prefix}{info.name}."))
    return groups


def _tree(specs: typing.Iterable[ParameterSpec]) -> dict[str, Any]:
    """Nest dotted names: `map.voxel_size_m` -> {"map": {"voxel_size_m": spec}}."""
    tree: dict[str, Any] = {}
    for spec in specs:
        *groups, leaf = spec.name.split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
            if not isinstance(node, dict):
                raise TypeError(f"{group!r} is both a parameter and a group of parameters")
        if leaf in node:
            raise TypeError(f"{spec.name!r} is both a parameter and a group of parameters")
        node[leaf] = spec
    return tree


def _render_tree(
    tree: dict[str, Any], groups: dict[str, str], prefix: str, indent: int
) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for key, item in tree.items():
        if isinstance(item, dict):
            lines += _comment(groups.get(prefix + key, ""), pad)
            lines.append(f"{pad}{key}:")
            lines += _render_tree(item, groups, f"{prefix}{key}.", indent + 2)
            continue
        lines += _comment(item.description, pad)
        if item.choices is not None:
            lines.append(f"{pad}# choices: {', '.join(map(yaml_scalar, item.choices))}")
        lines.append(f"{pad}{key}: {yaml_scalar(item.default)}")
    return lines


def _comment(text: str, pad: str) -> list[str]:
    width = max(40, _LINE_WIDTH - len(pad) - 2)
    return [f"{pad}# {line}" for line in textwrap.wrap(text, width)]
