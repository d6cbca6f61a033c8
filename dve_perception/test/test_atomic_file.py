"""Atomic file replacement."""

from __future__ import annotations

import pytest

from dve_perception.atomic_file import atomic_write


@pytest.mark.parametrize("durable", [True, False])
def test_a_finished_block_replaces_the_file(tmp_path, durable):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_write(path, durable=durable) as file:
        file.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_an_error_in_the_block_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path) as file:
        file.write(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "no" / "f.bin"):
        pass
