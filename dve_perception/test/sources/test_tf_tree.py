"""TransformTree: tf2 lookups over static and time-stamped edges, without ROS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dve_perception.errors import InputError, TransformUnavailableError
from dve_perception.messages.conversions import matrix_to_quaternion, pose_to_matrix
from dve_perception.sources.tf_tree import TransformTree

T0 = 1_700_000_000_000_000_000  # an epoch stamp: float seconds since 1970 would lose ns here
S = 1_000_000_000


def _rot_z(angle, t=(0.0, 0.0, 0.0)):
    return pose_to_matrix(t, (0, 0, math.sin(angle / 2), math.cos(angle / 2)))


def _random_pose(rng):
    return pose_to_matrix(rng.normal(size=3), rng.normal(size=4))


@pytest.fixture
def robot(rng):
    """map -> odom (static) -> base_link (dynamic, 3 samples) -> camera_link -> optical (static)."""
    tree = TransformTree()
    statics = {
        ("map", "odom"): _random_pose(rng),
        ("base_link", "camera_link"): _random_pose(rng),
        ("camera_link", "optical"): pose_to_matrix((0, 0, 0), (-0.5, 0.5, -0.5, 0.5)),
    }
    for (parent, child), T in statics.items():
        tree.add_static(parent, child, T)
    stamps = np.array([T0, T0 + S, T0 + 2 * S])
    odom_base = np.stack([_random_pose(rng) for _ in stamps])
    tree.add_samples("odom", "base_link", stamps, odom_base)
    return tree, statics, stamps, odom_base


def test_a_lookup_through_static_and_dynamic_edges_equals_the_composed_transforms(robot):
    tree, statics, stamps, odom_base = robot
    for stamp, T_odom_base in zip(stamps, odom_base, strict=True):
        truth = (
            statics[("map", "odom")]
            @ T_odom_base
            @ statics[("base_link", "camera_link")]
            @ statics[("camera_link", "optical")]
        )
        np.testing.assert_allclose(tree.lookup("map", "optical", stamp), truth, atol=1e-12)
        np.testing.assert_allclose(
            tree.lookup("optical", "map", stamp), np.linalg.inv(truth), atol=1e-12
        )


def test_lookups_between_branches_go_through_their_common_ancestor(robot):
    tree, statics, stamps, odom_base = robot
    tree.add_static("base_link", "lidar", _rot_z(0.3, (0.5, 0, 0)))
    T = tree.lookup("lidar", "optical", stamps[1])
    truth = (
        np.linalg.inv(_rot_z(0.3, (0.5, 0, 0)))
        @ statics[("base_link", "camera_link")]
        @ statics[("camera_link", "optical")]
    )
    np.testing.assert_allclose(T, truth, atol=1e-12)


def test_a_midpoint_lookup_interpolates_translation_halfway_and_rotation_by_slerp():
    tree = TransformTree()
    start, end = _rot_z(0.0, (0.0, 0.0, 0.0)), _rot_z(1.0, (0.0, 0.0, 2.0))  # a screw along z
    tree.add_samples("world", "cam", np.array([T0, T0 + S]), np.stack([start, end]))
    mid = tree.lookup("world", "cam", T0 + S // 2)
    np.testing.assert_allclose(mid, _rot_z(0.5, (0.0, 0.0, 1.0)), atol=1e-12)
    pure = TransformTree()
    a, b = pose_to_matrix((1, 2, 3), (0, 0, 0, 1)), pose_to_matrix((3, -2, 4), (0, 0, 0, 1))
    pure.add_samples("world", "cam", np.array([T0, T0 + 4 * S]), np.stack([a, b]))
    np.testing.assert_allclose(pure.lookup("world", "cam", T0 + S)[:3, 3], (1.5, 1.0, 3.25))


def test_interpolation_differs_from_tf2_slerp_and_lerp_by_well_under_a_millimetre():
    # 5 cm and 3 degrees between samples (a 30 Hz stream): ScLERP's screw vs tf2's straight line.
    theta, d = math.radians(3.0), 0.05
    start, end = _rot_z(0.0), _rot_z(theta, (d, 0.0, 0.0))
    tree = TransformTree()
    tree.add_samples("world", "cam", np.array([T0, T0 + S]), np.stack([start, end]))
    mid = tree.lookup("world", "cam", T0 + S // 2)
    gap = np.linalg.norm(mid[:3, 3] - (d / 2, 0.0, 0.0))  # tf2: the straight-line midpoint
    assert gap < 0.5e-3
    assert gap == pytest.approx(d * theta / 8, rel=0.01)
    q = matrix_to_quaternion(mid)
    assert 2 * math.atan2(q[2], q[3]) == pytest.approx(theta / 2, abs=1e-12)


def test_sample_stamps_are_exact_at_epoch_scale_even_one_nanosecond_apart():
    tree = TransformTree()
    poses = np.stack([_rot_z(0.0, (0, 0, 0)), _rot_z(0.0, (1, 0, 0))])
    tree.add_samples("world", "cam", np.array([T0 + 7, T0 + 8]), poses)
    np.testing.assert_array_equal(tree.lookup("world", "cam", T0 + 7), poses[0])
    np.testing.assert_allclose(tree.lookup("world", "cam", T0 + 8), poses[1], atol=1e-15)


def test_quaternion_sign_flips_between_samples_do_not_turn_the_long_way():
    tree = TransformTree()
    a, b = _rot_z(math.radians(170)), _rot_z(math.radians(-170))  # 20 degrees apart
    tree.add_samples("world", "cam", np.array([T0, T0 + S]), np.stack([a, b]))
    np.testing.assert_allclose(tree.lookup("world", "cam", T0 + S // 2), _rot_z(math.pi), atol=1e-9)


def test_a_stamp_outside_a_dynamic_edge_is_not_extrapolated(robot):
    tree, _, stamps, _ = robot
    message = (
        r"map <- optical at 1699999999\.999999999 s: the transform odom -> base_link is only "
        r"known from 1700000000\.000000000 s to 1700000002\.000000000 s \(3 samples\)"
    )
    with pytest.raises(TransformUnavailableError, match=message):
        tree.lookup("map", "optical", stamps[0] - 1)
    with pytest.raises(TransformUnavailableError, match="is not extrapolated"):
        tree.lookup("map", "optical", stamps[-1] + 1)
    assert tree.can_transform("map", "optical", stamps[-1])
    assert not tree.can_transform("map", "optical", stamps[-1] + 1)


def test_static_edges_hold_at_any_time(robot):
    tree, statics, _, _ = robot
    for stamp in (0, T0 * 2):
        np.testing.assert_allclose(
            tree.lookup("camera_link", "optical", stamp), statics[("camera_link", "optical")]
        )
    np.testing.assert_array_equal(tree.lookup("odom", "odom", 0), np.eye(4))


def test_unknown_and_unconnected_frames_are_reported_with_the_known_frames(robot):
    tree, _, stamps, _ = robot
    with pytest.raises(TransformUnavailableError, match=r"unknown frame 'gps'.*base_link"):
        tree.lookup("map", "gps", stamps[0])
    tree.add_static("other_map", "marker", np.eye(4))
    message = r"not connected: 'marker' is in the tree rooted at 'other_map', 'optical' .* 'map'"
    with pytest.raises(TransformUnavailableError, match=message):
        tree.lookup("marker", "optical", stamps[0])
    assert not tree.can_transform("marker", "optical", stamps[0])
    with pytest.raises(LookupError):  # callers may catch the standard base class
        tree.root_of("gps")


def test_frames_and_roots_describe_the_forest(robot):
    tree, _, _, _ = robot
    assert tree.frames == ["base_link", "camera_link", "map", "odom", "optical"]
    assert tree.root_of("optical") == "map" and tree.root_of("map") == "map"
    assert tree.time_range("odom", "base_link") == (T0, T0 + 2 * S)
    assert tree.time_range("map", "odom") is None
    with pytest.raises(TransformUnavailableError, match="no transform map -> optical"):
        tree.time_range("map", "optical")


def test_samples_accumulate_over_calls_in_any_order_and_a_repeated_stamp_keeps_the_last():
    tree = TransformTree()
    poses = [_rot_z(0.0, (float(i), 0, 0)) for i in range(4)]
    tree.add_samples("world", "cam", np.array([T0 + 3 * S, T0 + S]), np.stack([poses[3], poses[1]]))
    tree.add_samples("world", "cam", np.array([T0, T0 + 2 * S]), np.stack([poses[0], poses[2]]))
    tree.add_samples("world", "cam", np.array([T0 + S]), np.stack([_rot_z(0.0, (9.0, 0, 0))]))
    assert tree.lookup("world", "cam", T0 + S)[0, 3] == pytest.approx(9.0)
    assert tree.lookup("world", "cam", T0 + 2 * S + S // 2)[0, 3] == pytest.approx(2.5)
    assert tree.time_range("world", "cam") == (T0, T0 + 3 * S)


def test_a_frame_with_two_parents_or_a_cycle_is_rejected():
    tree = TransformTree()
    tree.add_static("map", "odom", np.eye(4))
    with pytest.raises(InputError, match="frame 'odom' has two parents, 'map' and 'world'"):
        tree.add_static("world", "odom", np.eye(4))
    tree.add_static("odom", "base", np.eye(4))
    with pytest.raises(InputError, match="would close a cycle"):
        tree.add_static("base", "map", np.eye(4))
    with pytest.raises(InputError, match="to itself"):
        tree.add_static("map", "map", np.eye(4))


def test_an_edge_cannot_be_both_static_and_dynamic():
    tree = TransformTree()
    tree.add_static("map", "odom", np.eye(4))
    with pytest.raises(InputError, match=r"already static \(/tf_static\)"):
        tree.add_samples("map", "odom", np.array([T0]), np.eye(4)[None])
    tree.add_samples("odom", "base", np.array([T0]), np.eye(4)[None])
    with pytest.raises(InputError, match=r"already dynamic \(/tf\)"):
        tree.add_static("odom", "base", np.eye(4))


def test_bad_samples_are_rejected_with_what_was_received():
    tree = TransformTree()
    with pytest.raises(InputError, match="1-D integer array of nanoseconds, got float64"):
        tree.add_samples("a", "b", np.array([1.5]), np.eye(4)[None])
    with pytest.raises(InputError, match=r"must be \(2, 4, 4\) for 2 stamps, got \(1, 4, 4\)"):
        tree.add_samples("a", "b", np.array([1, 2]), np.eye(4)[None])
    with pytest.raises(InputError, match="not a rigid transform"):
        tree.add_static("a", "b", np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="non-empty strings"):
        tree.add_static("", "b", np.eye(4))
