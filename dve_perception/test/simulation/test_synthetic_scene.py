"""The synthetic room: exact rendering, poses, embeddings, feature field and voxel ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from dve_perception.simulation import (
    Box,
    RenderedFrame,
    SmoothFeatureField,
    SyntheticScene,
    look_at,
    make_embeddings,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
    surface_voxels,
    voxel_label_majority,
)

H, W = 60, 80
K = pinhole_intrinsics(W, H)
FLOOR, WALL = 0, 1


def scene_with(*boxes: tuple[str, tuple[float, float, float], tuple[float, float, float]]):
    """A 6 x 5 x 2.5 m room with the given (name, centre, size) boxes, labelled 2, 3, ..."""
    names = ("floor", "wall", *(name for name, _, _ in boxes))
    protos = np.random.default_rng(0).standard_normal((len(names), 16))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    return SyntheticScene(
        boxes=tuple(
            Box(name, label, np.array(c), np.array(s))
            for label, (name, c, s) in enumerate(boxes, start=2)
        ),
        room_size_m=np.array([6.0, 5.0, 2.5]),
        label_names=names,
        prototypes=protos.astype(np.float32),
    )


@pytest.fixture(scope="module")
def room() -> SyntheticScene:
    return make_room_scene(seed=0)


@pytest.fixture(scope="module")
def orbit_frames(room) -> list[RenderedFrame]:
    return [render(room, K, pose, H, W) for pose in orbit_trajectory(room, 24)]


def back_project(frame: RenderedFrame) -> np.ndarray:
    """World points from depth, K and the pose, written independently of the renderer."""
    v, u = np.mgrid[0 : frame.depth_m.shape[0], 0 : frame.depth_m.shape[1]].astype(np.float64)
    fx, fy, cx, cy = frame.K[0, 0], frame.K[1, 1], frame.K[0, 2], frame.K[1, 2]
    z = frame.depth_m.astype(np.float64)
    p_cam = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=-1)
    return p_cam @ frame.T_world_cam[:3, :3].T + frame.T_world_cam[:3, 3]


def straight_down_pose(height_m: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]  # x east, y south, z down
    T[:3, 3] = [0.0, 0.0, height_m]
    return T


# --- scene ---------------------------------------------------------------------------------------


def test_room_scene_has_floor_wall_and_distinct_plausible_boxes_that_do_not_touch(room):
    assert room.label_names[:2] == ("floor", "wall")
    assert room.floor_label == FLOOR and room.wall_label == WALL
    assert room.room_size_m.tolist() == [6.0, 5.0, 2.5]
    assert 5 <= len(room.boxes) <= 6
    assert len({b.label for b in room.boxes}) == len(room.boxes)
    for box in room.boxes:
        assert room.label_names[box.label] == box.name
        assert room.label_id(box.name) == box.label
        assert ((box.size_m >= 0.3) & (box.size_m <= 1.0)).all()
        assert box.min_m[2] == 0.0  # standing on the floor
        assert (np.abs(box.max_m[:2]) < room.room_size_m[:2] / 2 - 0.5).all()
    for i, a in enumerate(room.boxes):
        for b in room.boxes[i + 1 :]:
            gap = np.maximum(a.min_m - b.max_m, b.min_m - a.max_m)[:2].max()
            assert gap > 0.1, (a.name, b.name)
    assert room.surface_label_ids() == (0, 1, *(b.label for b in room.boxes))
    assert room.prototypes.shape == (len(room.label_names), 768)
    assert room.prototypes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(room.prototypes, axis=1), 1.0, atol=1e-6)


def test_room_scene_prototypes_depend_only_on_the_seed():
    a, b, c = make_room_scene(seed=3), make_room_scene(seed=3), make_room_scene(seed=4)
    np.testing.assert_array_equal(a.prototypes, b.prototypes)
    assert not np.allclose(a.prototypes, c.prototypes)
    assert make_room_scene(embedding_dim=32).prototypes.shape == (8, 32)


# --- rendering -----------------------------------------------------------------------------------


def test_render_depth_of_a_fronto_parallel_wall_is_constant():
    scene = scene_with()
    frame = render(scene, K, look_at([1.5, 0.0, 1.25], [3.0, 0.0, 1.25]), H, W)
    assert (frame.labels == WALL).all()
    np.testing.assert_allclose(frame.depth_m, 1.5, atol=1e-6)
    assert (frame.points_world[..., 0] == 3.0).all()  # snapped exactly onto the wall plane
    assert frame.depth_m.dtype == np.float32 and frame.labels.dtype == np.int32
    assert frame.points_world.shape == (H, W, 3) and frame.points_world.dtype == np.float32


def test_render_looking_straight_down_sees_the_floor_plane_at_the_camera_height():
    frame = render(scene_with(), K, straight_down_pose(1.2), H, W)
    assert (frame.labels == FLOOR).all()
    np.testing.assert_allclose(frame.depth_m, 1.2, atol=1e-6)
    assert (frame.points_world[..., 2] == 0.0).all()


def test_render_of_a_tilted_view_puts_floor_hits_on_the_plane_and_farther_up_the_image():
    frame = render(scene_with(), K, look_at([0.0, 0.0, 1.5], [1.0, 0.0, 0.0]), H, W)
    floor = frame.labels == FLOOR
    assert floor[-1].all()  # the bottom row sees the floor
    assert (frame.points_world[floor][:, 2] == 0.0).all()
    column = frame.depth_m[:, W // 2][floor[:, W // 2]]
    assert (np.diff(column) < 0).all()  # depth shrinks towards the bottom of the image


def test_a_box_in_front_of_the_wall_occludes_it():
    scene = scene_with(("crate", (1.5, 0.0, 0.5), (0.4, 0.4, 1.0)))
    frame = render(scene, K, look_at([0.0, 0.0, 0.5], [3.0, 0.0, 0.5]), H, W)
    box = frame.labels == 2
    assert box[H // 2, W // 2] and frame.labels[H // 2, 2] == WALL
    np.testing.assert_allclose(frame.depth_m[box], 1.3, atol=1e-6)  # front face at x = 1.3
    np.testing.assert_allclose(frame.depth_m[frame.labels == WALL], 3.0, atol=1e-6)
    # The face spans y in [-0.2, 0.2] at 1.3 m: about 2 * fx * 0.2 / 1.3 columns.
    assert abs(box[H // 2].sum() - 2 * K[0, 0] * 0.2 / 1.3) <= 1.0


def test_back_projecting_depth_with_K_and_the_pose_reproduces_the_hit_points(room):
    for pose in orbit_trajectory(room, 3, seed=5):
        frame = render(room, K, pose, H, W)
        hit = frame.hit_mask
        assert hit.any()
        np.testing.assert_allclose(back_project(frame)[hit], frame.points_world[hit], atol=1e-4)


def test_pixels_without_a_hit_have_zero_depth_no_label_and_nan_points(room):
    frame = render(room, K, look_at([0.0, 0.0, 2.0], [3.0, 0.0, 3.0]), H, W)  # over the wall
    miss = ~frame.hit_mask
    assert miss[0].all() and frame.hit_mask[-1].all()
    assert (frame.depth_m[miss] == 0.0).all() and (frame.labels[miss] == -1).all()
    assert np.isnan(frame.points_world[miss]).all()
    assert not np.isnan(frame.points_world[~miss]).any()
    assert set(np.unique(frame.labels)) <= {-1, *room.surface_label_ids()}


# --- poses ---------------------------------------------------------------------------------------


def test_pinhole_intrinsics_centre_the_principal_point_and_match_the_field_of_view():
    K_wide = pinhole_intrinsics(640, 480, horizontal_fov_deg=90.0)
    np.testing.assert_allclose(K_wide, [[320.0, 0.0, 319.5], [0.0, 320.0, 239.5], [0.0, 0.0, 1.0]])


def test_look_at_produces_a_rigid_transform_whose_z_axis_points_at_the_target():
    eye, target = np.array([1.0, -2.0, 1.5]), np.array([-0.5, 0.3, 0.2])
    T = look_at(eye, target)
    R = T[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])
    np.testing.assert_allclose(R[:, 2], (target - eye) / np.linalg.norm(target - eye))
    assert R[2, 0] == pytest.approx(0.0, abs=1e-12)  # image x is level
    assert R[2, 1] < 0.0  # image y points down in the world
    target_cam = np.linalg.inv(T) @ np.append(target, 1.0)
    np.testing.assert_allclose(target_cam[:3], [0, 0, np.linalg.norm(target - eye)], atol=1e-12)


@pytest.mark.parametrize(
    ("eye", "target", "message"),
    [
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "coincide"),
        ([0.0, 0.0, 2.0], [0.0, 0.0, 0.0], "vertical"),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 5.0], "vertical"),
        ([0.0, 0.0], [1.0, 0.0, 0.0], r"\(3,\) vector"),
    ],
)
def test_look_at_rejects_degenerate_views(eye, target, message):
    with pytest.raises(ValueError, match=message):
        look_at(eye, target)


def test_orbit_poses_lie_inside_the_room_differ_and_jointly_observe_every_box(room, orbit_frames):
    poses = orbit_trajectory(room, 24)
    eyes = np.array([T[:3, 3] for T in poses])
    assert (np.abs(eyes[:, :2]) < room.room_size_m[:2] / 2).all()
    assert ((eyes[:, 2] > 0.0) & (eyes[:, 2] < room.room_size_m[2])).all()
    assert len({T.tobytes() for T in poses}) == 24
    for T in poses:
        np.testing.assert_allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)
    seen = set(np.unique(np.concatenate([f.labels.ravel() for f in orbit_frames])))
    assert seen == set(room.surface_label_ids())


def test_orbit_trajectory_is_deterministic_with_the_seed(room):
    a, b, c = (orbit_trajectory(room, 4, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(np.allclose(x, y) for x, y in zip(a, c, strict=True))


def test_orbit_frames_observe_most_of_every_box_top_and_side_face(room, orbit_frames):
    cell = 0.1
    for box in room.boxes:
        points = np.concatenate([f.points_world[f.labels == box.label] for f in orbit_frames])
        side_and_top_faces = [(a, box.min_m[a]) for a in (0, 1)] + [
            (a, box.max_m[a]) for a in (0, 1, 2)
        ]
        for axis, value in side_and_top_faces:
            # Cover each face with a grid of ~0.1 m cells and count the cells some hit fell in.
            in_plane = [a for a in range(3) if a != axis]
            on_face = points[np.abs(points[:, axis] - value) < 1e-5][:, in_plane]
            cells = np.ceil(box.size_m[in_plane] / cell).astype(int)
            ij = np.floor((on_face - box.min_m[in_plane]) / box.size_m[in_plane] * cells)
            ij = np.clip(ij.astype(int), 0, cells - 1)
            coverage = len(np.unique(ij[:, 0] * cells[1] + ij[:, 1])) / cells.prod()
            assert coverage >= 0.8, (box.name, axis, value, coverage)


def test_orbit_trajectory_rejects_a_radius_that_leaves_the_room(room):
    with pytest.raises(ValueError, match="outside the room"):
        orbit_trajectory(room, 8, radius_m=2.6)


# --- embeddings ----------------------------------------------------------------------------------


def test_embeddings_are_unit_norm_where_hit_and_zero_elsewhere(room):
    frame = render(room, K, look_at([0.0, 0.0, 2.0], [3.0, 0.0, 3.0]), H, W)
    field = SmoothFeatureField.random(seed=1)
    emb = make_embeddings(
        frame, room, pixel_noise_std=0.5, field=field, rng=np.random.default_rng(0)
    )
    assert emb.shape == (768, H, W) and emb.dtype == np.float32 and emb.flags.c_contiguous
    norms = np.linalg.norm(emb, axis=0)
    np.testing.assert_allclose(norms[frame.hit_mask], 1.0, atol=1e-5)
    assert (emb[:, ~frame.hit_mask] == 0.0).all()


def test_embeddings_without_field_or_noise_are_the_label_prototypes(room, orbit_frames):
    frame = orbit_frames[0]
    emb = make_embeddings(frame, room)
    np.testing.assert_allclose(emb.transpose(1, 2, 0), room.prototypes[frame.labels], atol=1e-6)


def test_channels_last_variant_equals_the_default_and_views_a_contiguous_hwc_array(room):
    frame = render(room, K, orbit_trajectory(room, 1)[0], H, W)
    field = SmoothFeatureField.random()
    kwargs = {"pixel_noise_std": 0.3, "field": field}
    default = make_embeddings(frame, room, rng=np.random.default_rng(2), **kwargs)
    hwc_view = make_embeddings(
        frame, room, rng=np.random.default_rng(2), channels_last=True, **kwargs
    )
    assert hwc_view.shape == (768, H, W)
    assert hwc_view.transpose(1, 2, 0).flags.c_contiguous
    np.testing.assert_array_equal(hwc_view, default)


def test_pixel_noise_std_is_the_noise_norm_relative_to_the_unit_prototype(room, orbit_frames):
    frame = orbit_frames[0]
    emb = make_embeddings(frame, room, pixel_noise_std=1.0, rng=np.random.default_rng(0))
    cosine = np.einsum("chw,hwc->hw", emb, room.prototypes[frame.labels])
    # |prototype + noise| ~ sqrt(1 + std^2), so the cosine to the prototype is ~ 1 / sqrt(2).
    assert cosine.mean() == pytest.approx(1.0 / np.sqrt(2.0), abs=0.01)


def test_make_embeddings_needs_an_rng_for_noise_and_a_field_of_the_scene_dimension(room):
    frame = render(room, K, orbit_trajectory(room, 1)[0], H, W)
    with pytest.raises(ValueError, match="needs rng"):
        make_embeddings(frame, room, pixel_noise_std=0.1)
    with pytest.raises(ValueError, match="field has dim 16"):
        make_embeddings(frame, room, field=SmoothFeatureField.random(dim=16, num_features=8))


# --- feature field -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def room_points() -> np.ndarray:
    return np.random.default_rng(1).uniform([-3.0, -2.5, 0.0], [3.0, 2.5, 2.5], (4000, 3))


def test_field_is_smooth_nearby_points_give_closer_features_than_far_points(room_points):
    field = SmoothFeatureField.random(length_scale_m=0.5)
    rng = np.random.default_rng(2)
    step = rng.standard_normal(room_points.shape)
    step /= np.linalg.norm(step, axis=1, keepdims=True)
    f0 = field(room_points)
    distances = [
        np.linalg.norm(field(room_points + r * step) - f0, axis=1).mean() for r in (0.02, 0.2, 2.0)
    ]
    assert distances[0] < 0.1 * distances[2] and distances[0] < distances[1] < distances[2]


def test_field_is_deterministic_with_the_seed_and_keeps_the_leading_shape(room_points):
    a, b, c = (SmoothFeatureField.random(seed=s) for s in (5, 5, 6))
    grid = room_points[:12].reshape(3, 4, 3)
    out = a(grid)
    assert out.shape == (3, 4, 768) and out.dtype == np.float32
    np.testing.assert_array_equal(out, b(grid))
    assert not np.allclose(out, c(grid))


def test_field_has_the_requested_rms_norm_and_a_power_law_spectrum(room_points):
    field = SmoothFeatureField.random(amplitude=0.5, num_features=64, spectrum_exponent=1.0)
    values = field(room_points).astype(np.float64)
    assert np.mean(np.sum(values**2, axis=1)) == pytest.approx(0.25, rel=0.1)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(values.T)))[::-1]
    assert eigenvalues[64] < 1e-9 * eigenvalues[0]  # spans num_features directions
    slope = np.polyfit(np.log(np.arange(1, 33)), np.log(eigenvalues[:32]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.2)


# --- ground truth --------------------------------------------------------------------------------


def test_surface_voxels_of_one_label_are_a_subset_of_all_surface_voxels(room, orbit_frames):
    frames = orbit_frames[:6]
    all_voxels = surface_voxels(frames, room, 0.1)
    assert all_voxels.dtype == np.int64 and all_voxels.shape[1] == 3
    assert len(np.unique(all_voxels, axis=0)) == len(all_voxels)
    assert (np.lexsort(all_voxels.T[::-1]) == np.arange(len(all_voxels))).all()
    all_set = {tuple(v) for v in all_voxels}
    union = set()
    for label in room.surface_label_ids():
        voxels = {tuple(v) for v in surface_voxels(frames, room, 0.1, label=label)}
        assert voxels <= all_set
        union |= voxels
    assert union == all_set
    floor = surface_voxels(frames, room, 0.1, label=FLOOR)
    assert (floor[:, 2] == 0).all()  # floor hits lie exactly on z = 0


def test_voxel_label_majority_gives_each_observed_voxel_a_label_seen_there(room, orbit_frames):
    frames = orbit_frames[:6]
    voxels, labels = voxel_label_majority(frames, 0.1)
    np.testing.assert_array_equal(voxels, surface_voxels(frames, room, 0.1))
    assert labels.dtype == np.int32 and labels.shape == (len(voxels),)
    for label in room.surface_label_ids():
        seen = {tuple(v) for v in surface_voxels(frames, room, 0.1, label=label)}
        assert {tuple(v) for v in voxels[labels == label]} <= seen
    table = room.label_id("table")
    assert (labels == table).sum() > 0 and (labels == FLOOR).sum() > (labels == table).sum()


def test_ground_truth_of_no_frames_is_empty(room):
    assert surface_voxels([], room, 0.05).shape == (0, 3)
    voxels, labels = voxel_label_majority(iter([]), 0.05)
    assert voxels.shape == (0, 3) and labels.shape == (0,)


# --- bad input -----------------------------------------------------------------------------------


def scaled_pose() -> np.ndarray:
    T = look_at([0.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    T[:3, :3] *= 1.1
    return T


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: Box("b", 2, np.zeros(3), np.array([0.5, 0.0, 0.5])), "positive extents"),
        (lambda s: Box("b", 2, np.zeros(3), np.ones(2)), "positive extents"),
        (lambda s: scene_with(("b", (3.0, 0.0, 0.5), (0.4, 0.4, 1.0))), "inside the room"),
        (lambda s: render(s, K[:2], np.eye(4), H, W), r"\(3, 3\) intrinsics"),
        (lambda s: render(s, K * 2.0, np.eye(4), H, W), "zero skew"),
        (lambda s: render(s, K, scaled_pose(), H, W), "not orthonormal"),
        (lambda s: render(s, K, np.diag([1.0, 1.0, -1.0, 1.0]), H, W), "reflection"),
        (lambda s: render(s, K, np.eye(3), H, W), r"\(4, 4\)"),
        (lambda s: render(s, K, np.eye(4), 0, W), "height must be a positive integer"),
        (lambda s: pinhole_intrinsics(W, H, horizontal_fov_deg=180.0), "horizontal_fov_deg"),
        (lambda s: orbit_trajectory(s, 0), "num_frames"),
        (lambda s: surface_voxels([], s, 0.0), "voxel_size_m"),
        (lambda s: surface_voxels([], s, 0.1, label=99), "label"),
        (lambda s: voxel_label_majority([np.zeros((2, 2))], 0.1), "RenderedFrame"),
        (lambda s: SmoothFeatureField.random(dim=8, num_features=16), "must not exceed dim"),
        (lambda s: SmoothFeatureField.random(length_scale_m=0.0), "length_scale_m"),
        (lambda s: make_room_scene(embedding_dim=0), "embedding_dim"),
    ],
)
def test_bad_input_raises_value_error_with_a_clear_message(room, call, message):
    with pytest.raises(ValueError, match=message):
        call(room)


def test_casting_only_the_rays_in_a_box_projected_bounds_changes_no_pixel(room, monkeypatch):
    from dve_perception.simulation import synthetic_scene

    rng = np.random.default_rng(3)
    eyes = rng.uniform([-2.8, -2.3, 0.05], [2.8, 2.3, 2.4], (40, 3))
    targets = rng.uniform([-3.0, -2.5, 0.0], [3.0, 2.5, 1.0], (40, 3))
    poses = [look_at(e, t) for e, t in zip(eyes, targets, strict=True)]
    fast = [render(room, K, T, H, W) for T in poses]
    monkeypatch.setattr(
        synthetic_scene, "_candidate_rays", lambda box, K, T, h, w: np.arange(h * w)
    )
    for frame, T in zip(fast, poses, strict=True):
        reference = render(room, K, T, H, W)
        np.testing.assert_array_equal(frame.labels, reference.labels)
        np.testing.assert_array_equal(frame.depth_m, reference.depth_m)
