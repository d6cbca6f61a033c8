"""Where a map service may read and write: paths are confined to one directory.

A save or load request comes from anyone on the ROS graph. Letting it name any path would let
a typo (or a careless script) overwrite a file elsewhere on the robot, so every request is
resolved inside the configured map directory, symlinks and `..` included, and refused otherwise.
"""

from __future__ import annotations

from pathlib import Path

from dve_perception.errors import InputError

__all__ = ["resolve_map_path"]

_MAX_PATH_CHARS = 4096


def resolve_map_path(map_directory: str | Path, requested: str, default_name: str) -> Path:
    """Resolve a requested map file name inside `map_directory`.

    Args:
        map_directory: the only directory maps may be read from and written to (`~` allowed).
        requested: the request's path: "" for `default_name`, a name relative to the
            directory, or an absolute path that lies inside it.
        default_name: the file used for an empty request.

    Returns:
        The absolute path (symlinks resolved); it may not exist yet.

    Raises:
        InputError: a path outside the directory (after resolving `..` and symlinks), a path
            naming the directory itself, or an unusable string.
    """
    if not isinstance(requested, str) or "\x00" in requested or len(requested) > _MAX_PATH_CHARS:
        raise InputError(f"map path must be a plain string of at most {_MAX_PATH_CHARS} chars")
    directory = Path(map_directory).expanduser().resolve()
    name = requested.strip() or default_name
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = directory / candidate
    resolved = candidate.resolve()
    if resolved == directory or not resolved.is_relative_to(directory):
        raise InputError(
            f"map path {requested!r} resolves to {resolved}, outside the map directory "
            f"{directory}; give a file name inside it (the map_directory parameter sets it)"
        )
    return resolved
