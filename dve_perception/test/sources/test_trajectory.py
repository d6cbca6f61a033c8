"""TUM trajectory files: exact timestamps, round trips, errors, and interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from dve_perception.errors import InputError
from dve_perception.messages.conversions import pose_to_matrix
from dve_perception.sources.trajectory import (
    format_seconds,
    parse_seconds,
    read_tum_trajectory,
    trajectory_tree,
    write_tum_trajectory,
)


def test_decimal_timestamps_parse_exactly_to_nanoseconds():
    assert parse_seconds("1305031102.175304") == 1_305_031_102_175_304_000
    assert parse_seconds("12.5") == 12_500_000_000
    assert parse_seconds("1e-9") == 1
    assert parse_seconds("0.0000000015") == 2  # beyond nanoseconds: rounded half to even
    assert format_seconds(12_500_000_000) == "12.500000000"
    assert format_seconds(-1) == "-0.000000001"
    with pytest.raises(InputError, match="'nan' is not a time in seconds"):
        parse_seconds("nan")
    with pytest.raises(InputError, match="'12s' is not a time in seconds"):
        parse_seconds("12s")


def test_a_written_trajectory_reads_back_with_exact_stamps_and_poses(tmp_path, rng):
    stamps = np.array([1_700_000_000_123_456_789, 1_700_000_000_223_456_789, 5], dtype=np.int64)
    poses = np.stack([pose_to_matrix(rng.normal(size=3), rng.normal(size=4)) for _ in stamps])
    path = write_tum_trajectory(tmp_path / "poses.txt", stamps, poses)
    read_stamps, read_poses = read_tum_trajectory(path)
    order = np.argsort(stamps)
    np.testing.assert_array_equal(read_stamps, stamps[order])
    np.testing.assert_allclose(read_poses, poses[order], atol=1e-12)
    assert "1700000000.123456789 " in path.read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_comments_and_blank_lines_are_skipped_and_unsorted_lines_are_sorted(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(
        "# timestamp tx ty tz qx qy qz qw\n\n"
        "2.0 1 0 0 0 0 0 1\n"
        "   \n"
        "1.0 0 0 0 0 0 0 2\n"  # a non-unit quaternion is normalised
    )
    stamps, poses = read_tum_trajectory(path)
    np.testing.assert_array_equal(stamps, [1_000_000_000, 2_000_000_000])
    np.testing.assert_allclose(poses[0], np.eye(4))
    assert poses[1][0, 3] == 1.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1.0 0 0 0 0 0 1", "t.txt:3: expected 8 values"),
        ("1.0 0 0 zero 0 0 0 1", "t.txt:3: could not convert string to float: 'zero'"),
        ("one 0 0 0 0 0 0 1", "t.txt:3: 'one' is not a time in seconds"),
        ("1.0 0 0 0 0 0 0 0", "t.txt:3: .*zero-norm rotation quaternion"),
        ("1.0 0 0 nan 0 0 0 1", "t.txt:3: transform has NaN or inf"),
        ("0.5 0 0 0 0 0 0 1", r"t.txt:3: timestamp 0.5 repeats line 2"),
    ],
)
def test_a_bad_line_is_reported_with_its_number(tmp_path, line, message):
    path = tmp_path / "t.txt"
    path.write_text(f"# header\n0.50 0 0 0 0 0 0 1\n{line}\n")
    with pytest.raises(InputError, match=message):
        read_tum_trajectory(path)


def test_a_missing_or_empty_trajectory_is_rejected(tmp_path):
    with pytest.raises(InputError, match="cannot read trajectory .*missing.txt"):
        read_tum_trajectory(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="has no poses; expected lines 'timestamp tx ty tz"):
        read_tum_trajectory(tmp_path / "empty.txt")


def test_writing_mismatched_or_non_rigid_poses_is_rejected(tmp_path):
    with pytest.raises(InputError, match=r"need \(N,\) stamps and \(N, 4, 4\) poses"):
        write_tum_trajectory(tmp_path / "t.txt", np.array([1, 2]), np.eye(4)[None])
    with pytest.raises(InputError, match="not a rigid transform"):
        write_tum_trajectory(tmp_path / "t.txt", np.array([1]), np.diag([1, 1, 3.0, 1])[None])


def test_trajectory_poses_are_interpolated_by_the_transform_tree():
    poses = np.stack(
        [pose_to_matrix((0, 0, 0), (0, 0, 0, 1)), pose_to_matrix((2, 0, 0), (0, 0, 0, 1))]
    )
    tree = trajectory_tree(np.array([10, 20]), poses, "world", "cam")
    np.testing.assert_allclose(tree.lookup("world", "cam", 15)[:3, 3], (1, 0, 0))
    assert not tree.can_transform("world", "cam", 21)
