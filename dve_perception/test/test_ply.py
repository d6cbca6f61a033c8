"""Binary PLY writing and reading."""

from __future__ import annotations

import numpy as np
import pytest

from dve_perception.errors import InputError
from dve_perception.ply import read_ply, write_ply


def test_points_colours_and_scalars_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(50, 3), dtype=np.uint8)
    score = rng.random(50).astype(np.float32)
    path = write_ply(tmp_path / "cloud.ply", points, colors, {"score": score})
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "element vertex 50" in header and "property uchar red" in header
    data = read_ply(path)
    np.testing.assert_array_equal(np.stack([data["x"], data["y"], data["z"]], 1), points)
    np.testing.assert_array_equal(np.stack([data["red"], data["green"], data["blue"]], 1), colors)
    np.testing.assert_array_equal(data["score"], score)


def test_an_empty_cloud_is_a_valid_file(tmp_path):
    data = read_ply(write_ply(tmp_path / "empty.ply", np.zeros((0, 3))))
    assert data["x"].shape == (0,)


@pytest.mark.parametrize(
    ("points", "colors", "scalars", "match"),
    [
        (np.zeros((4, 2)), None, None, "points must have shape"),
        (np.zeros((4, 3)), np.zeros((4, 3)), None, "colors must be"),
        (np.zeros((4, 3)), None, {"score": np.zeros(3)}, "scalar 'score'"),
        (np.zeros((4, 3)), None, {"bad name": np.zeros(4)}, "scalar 'bad name'"),
    ],
)
def test_bad_clouds_are_rejected_without_writing(tmp_path, points, colors, scalars, match):
    with pytest.raises(InputError, match=match):
        write_ply(tmp_path / "bad.ply", points, colors, scalars)
    assert list(tmp_path.iterdir()) == []
