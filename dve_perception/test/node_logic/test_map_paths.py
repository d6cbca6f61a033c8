"""Map files requested over ROS stay inside the configured directory."""

from __future__ import annotations

import pytest

from dve_perception.errors import InputError
from dve_perception.node_logic import resolve_map_path


def test_a_relative_name_resolves_inside_the_directory(tmp_path):
    assert resolve_map_path(tmp_path, "office/a.dvemap", "map.dvemap") == (
        tmp_path.resolve() / "office" / "a.dvemap"
    )


def test_an_empty_request_uses_the_default_name(tmp_path):
    assert resolve_map_path(tmp_path, "  ", "map.dvemap") == tmp_path.resolve() / "map.dvemap"


def test_an_absolute_path_inside_the_directory_is_accepted(tmp_path):
    inside = tmp_path / "b.dvemap"
    assert resolve_map_path(tmp_path, str(inside), "map.dvemap") == inside.resolve()


@pytest.mark.parametrize("requested", ["../escape.dvemap", "/etc/passwd", "a/../../x.dvemap", "."])
def test_paths_outside_the_directory_are_refused(tmp_path, requested):
    root = tmp_path / "maps"
    root.mkdir()
    with pytest.raises(InputError, match="outside the map directory"):
        resolve_map_path(root, requested, "map.dvemap")


def test_a_symlink_leading_out_of_the_directory_is_refused(tmp_path):
    root, outside = tmp_path / "maps", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InputError, match="outside the map directory"):
        resolve_map_path(root, "link/map.dvemap", "map.dvemap")


def test_a_nul_character_is_refused(tmp_path):
    with pytest.raises(InputError, match="plain string"):
        resolve_map_path(tmp_path, "a\x00b", "map.dvemap")
