"""Text-level helpers for ROS 2 parameters files: YAML scalars out, node sections in.

Kept apart from `parameters` (which knows the config dataclasses) so that module stays about
configs; nothing here knows a config class. PyYAML is imported only when a file is read.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from dve_perception.errors import BackendUnavailableError, ConfigError

__all__ = [
    "flatten_parameters",
    "read_yaml_file",
    "ros_parameter_sections",
    "select_node_parameters",
    "yaml_key",
    "yaml_scalar",
]


def yaml_key(node: str) -> str:
    """Write a mapping key (a node name such as `/**`), quoted unless plainly safe.

    Args:
        node: the key.

    Returns:
        The key as YAML text.
    """
    # A plain scalar may not start with an indicator such as "*" or "&"; quote anything unusual.
    return node if re.fullmatch(r"/[\w/*]*|\w[\w/*]*", node) else json.dumps(node)


def yaml_scalar(value: bool | int | float | str) -> str:
    """Write a parameter value so that PyYAML and ROS's parser both read back the same type.

    Args:
        value: the value.

    Returns:
        The YAML text: `true`/`false`, an int, a float that always has a "." (so `5.0` stays a
        double), or a double-quoted string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 (PyYAML) reads "1e-05" as a string: it needs a "." in the mantissa.
        mantissa, _, exponent = text.partition("e")
        if exponent and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
        return text
    # Always quote strings: "", "true", "~" or "5" would otherwise be read as another type.
    return json.dumps(value, ensure_ascii=False)


def read_yaml_file(path: Path) -> object:
    """Parse a YAML file safely, reading `1e-3` as a float like ROS does.

    Args:
        path: the file.

    Returns:
        The parsed document (None for an empty file).

    Raises:
        ConfigError: the file is missing or unreadable, or not valid YAML (with line, column).
        BackendUnavailableError: PyYAML is not installed.
    """
    try:
        import yaml
    except ImportError as err:
        raise BackendUnavailableError(
            "reading a parameters file needs PyYAML: pip install 'pyyaml>=5.4'"
        ) from err
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"parameters file {path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read parameters file {path}: {err}") from err
    try:
        # A SafeLoader subclass: builds plain data only, never arbitrary objects.
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from err


@functools.cache
def _yaml_loader() -> type:
    """A SafeLoader that also reads `1e-3` as a float, as ROS's YAML 1.2 parser does."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    pattern = r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+"
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(f"^(?:{pattern})$"), list("-+0123456789.")
    )
    return Loader


def ros_parameter_sections(data: object, path: Path) -> dict[str, dict]:
    """Find the `ros__parameters` mappings of a parsed parameters file.

    Args:
        data: the parsed file.
        path: the file, for messages.

    Returns:
        Node key -> its parameters, in file order. Keys are normalised to `/ns/node` (nested
        namespace keys joined, duplicate slashes dropped); `/**` stays `/**`.

    Raises:
        ConfigError: a `ros__parameters` value is not a mapping.
    """
    sections: dict[str, dict] = {}

    def walk(item: object, keys: list[str]) -> None:
        if not isinstance(item, dict):
            return
        for key, value in item.items():
            if key == "ros__parameters":
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"{path}: ros__parameters of {'/'.join(keys)!r} must be a mapping of "
                        f"names to values, got {value!r}"
                    )
                sections["/" + "/".join(p for k in keys for p in str(k).split("/") if p)] = value
            else:
                walk(value, [*keys, str(key)])

    walk(data, [])
    return sections


def select_node_parameters(
    sections: dict[str, dict], node_names: Sequence[str], path: Path
) -> dict:
    """Pick the parameters of the first of `node_names` that the file has.

    Args:
        sections: from `ros_parameter_sections`.
        node_names: keys to try in order. A name containing "/" must equal a key (after
            normalising slashes); a bare name also matches a key ending in `/<name>`.
        path: the file, for messages.

    Returns:
        That node's (nested) parameters.

    Raises:
        ConfigError: none of `node_names` is in the file (the message lists the keys it has).
    """
    for name in node_names:
        wanted = "/" + "/".join(p for p in name.split("/") if p)
        for key, params in sections.items():
            bare_match = "/" not in name and key.endswith("/" + name)
            if key == wanted or bare_match:
                return params
    raise ConfigError(
        f"{path}: no ros__parameters for node {list(node_names)}; the file has {list(sections)}"
    )


def flatten_parameters(params: Mapping[object, object], prefix: str = "") -> dict[str, object]:
    """Turn nested mappings into dotted names, as ROS does: {"map": {"a": 1}} -> {"map.a": 1}.

    Args:
        params: a node's parameters.
        prefix: prepended to every name.

    Returns:
        Dotted name -> value.
    """
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, name + "."))
        else:
            flat[name] = value
    return flat
