"""Header, image, cloud, query and marker builders: rclpy-compatible, CDR round trip, exact."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
from ros_message_checks import DISTROS, check_message, message_types

from dve_perception.errors import InputError
from dve_perception.frames import scale_intrinsics
from dve_perception.mapping import QueryResult
from dve_perception.mapping.query import cluster_voxels
from dve_perception.mapping.voxel_hash import pack_voxel_keys
from dve_perception.messages.conversions import IMAGE_ENCODINGS, image_to_array
from dve_perception.messages.outputs import (
    QUERY_MARKER_NAMESPACE,
    array_to_image,
    camera_info_to_K_at,
    failed_query_fields,
    make_header,
    points_cloud,
    query_markers,
    query_response_fields,
)

HOST_BIG_ENDIAN = sys.byteorder != "little"
K = np.array([[50.0, 0.0, 39.5], [0.0, 52.0, 29.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module", params=DISTROS)
def types(request):
    return message_types(request.param)


@pytest.fixture(scope="module")
def humble():
    return message_types("humble")


# --- header and images --------------------------------------------------------------------


def test_header_splits_the_stamp_into_seconds_and_nanoseconds(types):
    header = make_header(types, 12_000_000_345, "camera")
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (12, 345, "camera")
    check_message(types, header)


def test_header_accepts_numpy_integer_stamps_but_stores_python_ints(humble):
    header = make_header(humble, np.int64(5), "map")
    assert type(header.stamp.sec) is int and type(header.stamp.nanosec) is int


@pytest.mark.parametrize("stamp", [-1, 1.5, True, 2**31 * 10**9])
def test_header_refuses_invalid_stamps(humble, stamp):
    with pytest.raises(InputError, match=r"stamp_ns"):
        make_header(humble, stamp, "map")


RNG = np.random.default_rng(3)
IMAGE_SAMPLES = {
    "rgb8": RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8),
    "bgr8": RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8),
    "rgba8": RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8),
    "bgra8": RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (4, 5), dtype=np.uint8),
    "mono16": RNG.integers(0, 65536, (4, 5), dtype=np.uint16),
    "16UC1": RNG.integers(0, 65536, (4, 5), dtype=np.uint16),
    "32FC1": RNG.normal(size=(4, 5)).astype(np.float32),
}


def test_samples_cover_every_decodable_encoding():
    assert set(IMAGE_SAMPLES) == set(IMAGE_ENCODINGS)


@pytest.mark.parametrize("encoding", sorted(IMAGE_SAMPLES))
def test_images_round_trip_exactly_through_cdr_and_image_to_array(types, encoding):
    values = IMAGE_SAMPLES[encoding]
    msg = array_to_image(values, encoding, make_header(types, 1, "cam"), types)
    back = check_message(types, msg)
    channels = 1 if values.ndim == 2 else values.shape[2]
    assert (back.height, back.width) == (4, 5)
    assert back.step == 5 * channels * values.itemsize
    assert back.is_bigendian == int(HOST_BIG_ENDIAN)
    decoded, decoded_encoding = image_to_array(back)
    assert decoded_encoding == encoding
    assert decoded.dtype == values.dtype
    np.testing.assert_array_equal(decoded, values)


def test_images_from_foreign_byte_order_arrays_keep_their_values(humble):
    values = np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000
    swapped = values.astype(values.dtype.newbyteorder("S"))
    decoded, _ = image_to_array(
        array_to_image(swapped, "16UC1", make_header(humble, 0, ""), humble)
    )
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize(
    ("encoding", "array", "pattern"),
    [
        ("rgb8", np.zeros((4, 5, 3), np.float32), r"rgb8 image must be a non-empty \(H, W, 3\) "),
        ("rgb8", np.zeros((4, 5, 4), np.uint8), r"uint8 array, got uint8 \(4, 5, 4\)"),
        ("mono16", np.zeros((4, 5), np.uint8), r"mono16 image .* uint16 array, got uint8"),
        (
            "32FC1",
            np.zeros((4, 5, 1), np.float32),
            r"\(H, W\) float32 array, got float32 \(4, 5, 1",
        ),
        (
            "mono8",
            np.zeros((0, 5), np.uint8),
            r"non-empty \(H, W\) uint8 array, got uint8 \(0, 5\)",
        ),
        ("yuv422", np.zeros((4, 5), np.uint8), r"unsupported image encoding 'yuv422'"),
    ],
)
def test_images_refuse_arrays_that_do_not_fit_the_encoding(humble, encoding, array, pattern):
    with pytest.raises(InputError, match=pattern):
        array_to_image(array, encoding, make_header(humble, 0, ""), humble)


# --- point clouds -------------------------------------------------------------------------


def _expected_cloud_bytes(points, extra_name=None, extra=None):
    """The structured array sensor_msgs_py.create_cloud would serialise (host order)."""
    names = ["x", "y", "z"] + ([extra_name] if extra_name else [])
    dtype = np.dtype(
        {"names": names, "formats": ["=f4"] * len(names), "offsets": [0, 4, 8, 12][: len(names)]}
    )
    cloud = np.zeros(len(points), dtype=dtype)
    for axis, name in enumerate("xyz"):
        cloud[name] = points[:, axis]
    if extra_name:
        cloud[extra_name] = extra
    return dtype.itemsize, cloud.tobytes()


def _fields(msg):
    return [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]


def test_score_clouds_match_create_cloud_byte_for_byte(types):
    points = np.array([[0.0, 1.0, 2.0], [-1.5, 0.25, 3.0], [4.0, 5.0, 6.0]])
    scores = np.array([0.1, 0.5, 0.9])
    msg = points_cloud(make_header(types, 9, "map"), points, types, scores=scores)
    back = check_message(types, msg)
    point_step, expected = _expected_cloud_bytes(points, "score", scores)
    assert back.data.tobytes() == expected
    assert _fields(back) == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("score", 12, 7, 1)]
    assert (back.height, back.width, back.point_step, back.row_step) == (1, 3, 16, 48)
    assert point_step == 16
    assert back.is_dense is False and back.is_bigendian is HOST_BIG_ENDIAN


def test_xyz_clouds_have_a_twelve_byte_point_step(humble):
    points = np.arange(12, dtype=np.float64).reshape(4, 3)
    msg = check_message(humble, points_cloud(make_header(humble, 0, "map"), points, humble))
    point_step, expected = _expected_cloud_bytes(points)
    assert (msg.point_step, msg.row_step, point_step) == (12, 48, 12)
    assert msg.data.tobytes() == expected and len(msg.fields) == 3


def test_rgb_is_packed_as_0x00RRGGBB_in_a_float32_field(types):
    points = np.zeros((2, 3))
    rgb = np.array([[255, 0, 1], [1, 2, 3]], dtype=np.uint8)
    msg = check_message(types, points_cloud(make_header(types, 0, "map"), points, types, rgb=rgb))
    assert _fields(msg)[3] == ("rgb", 12, 7, 1)
    packed = np.frombuffer(msg.data.tobytes(), dtype="=u4").reshape(2, 4)[:, 3]
    assert packed.tolist() == [0x00FF0001, 0x00010203]


def test_empty_clouds_are_valid_messages(types):
    msg = points_cloud(make_header(types, 0, "map"), np.zeros((0, 3)), types, scores=np.zeros(0))
    back = check_message(types, msg)
    assert (back.width, back.row_step, back.point_step, back.data.size) == (0, 0, 16, 0)


@pytest.mark.parametrize(
    ("points", "kwargs", "pattern"),
    [
        (np.zeros((2, 2)), {}, r"points must be an \(N, 3\) numeric array, got float64 \(2, 2\)"),
        (np.array([["a", "b", "c"]]), {}, r"points must be an \(N, 3\) numeric array"),
        (np.array([[0, 0, np.nan], [0, 0, 0]]), {}, r"1 of 2 points are NaN, inf"),
        (np.array([[1e39, 0, 0]]), {}, r"beyond float32 range"),
        (np.zeros((2, 3)), {"rgb": np.zeros((2, 3))}, r"rgb must be \(2, 3\) uint8, got float64"),
        (np.zeros((2, 3)), {"scores": np.zeros(3)}, r"scores must be \(2,\) numbers, got"),
        (
            np.zeros((1, 3)),
            {"rgb": np.zeros((1, 3), np.uint8), "scores": np.zeros(1)},
            r"either rgb or scores, not both",
        ),
    ],
)
def test_invalid_clouds_are_refused(humble, points, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        points_cloud(make_header(humble, 0, "map"), points, humble, **kwargs)


# --- query responses and markers ----------------------------------------------------------

VOXEL_M = 0.1
# Two clusters above 0.5: voxels (0,0,0)+(1,0,0) (best 0.9) and (5,5,5); one low voxel.
VOXELS = [(0, 0, 0), (1, 0, 0), (5, 5, 5), (9, 0, 0)]
SCORES = [0.9, 0.8, 0.7, 0.1]


@pytest.fixture(scope="module")
def result():
    keys = pack_voxel_keys(torch.tensor(VOXELS))
    scores = torch.tensor(SCORES)
    clusters = cluster_voxels(keys, scores, 0.5, VOXEL_M, top_k=5)
    return QueryResult(
        keys=keys.numpy(),
        voxel_size_m=VOXEL_M,
        cosine=scores.numpy() - 0.5,
        relevancy=scores.numpy(),
        score_name="relevancy",
        threshold=0.5,
        clusters=clusters,
    )


def _xyz(msg):
    return [msg.x, msg.y, msg.z]


def test_query_response_fields_describe_clusters_and_every_voxel(types, result):
    fields = query_response_fields(result, None, make_header(types, 3, "map"), types)
    response = check_message(types, types.QueryTextResponse(**fields))
    assert response.success is True and response.score_name == "relevancy"
    assert response.threshold == pytest.approx(0.5)
    assert response.message == "2 matches with relevancy >= 0.5 among 4 voxels"
    best, second = response.matches
    np.testing.assert_allclose(_xyz(best.centroid), [0.1, 0.05, 0.05])
    np.testing.assert_allclose(_xyz(best.box_center), [0.1, 0.05, 0.05])
    np.testing.assert_allclose(_xyz(best.box_size), [0.2, 0.1, 0.1])
    assert (best.score, best.voxel_count) == (pytest.approx(0.9), 2)
    assert best.mean_score == pytest.approx(0.85)
    np.testing.assert_allclose(_xyz(second.centroid), [0.55, 0.55, 0.55])
    cloud = np.frombuffer(response.cloud.data.tobytes(), dtype="=f4").reshape(4, 4)
    np.testing.assert_allclose(cloud[:, :3], (np.array(VOXELS) + 0.5) * VOXEL_M, rtol=1e-6)
    np.testing.assert_allclose(cloud[:, 3], SCORES)


def test_query_response_fields_take_the_given_points_and_message(humble, result):
    points = np.arange(12, dtype=np.float32).reshape(4, 3)
    header = make_header(humble, 3, "map")
    fields = query_response_fields(result, points, header, humble, message="found it")
    assert fields["message"] == "found it"
    cloud = np.frombuffer(fields["cloud"].data.tobytes(), dtype="=f4").reshape(4, 4)
    np.testing.assert_array_equal(cloud[:, :3], points)


def test_query_response_fields_can_carry_a_subset_of_the_voxels(humble, result):
    points = np.arange(6, dtype=np.float32).reshape(2, 3)
    fields = query_response_fields(
        result, points, make_header(humble, 3, "map"), humble, scores=np.array([0.9, 0.8])
    )
    cloud = np.frombuffer(fields["cloud"].data.tobytes(), dtype="=f4").reshape(2, 4)
    np.testing.assert_allclose(cloud[:, 3], [0.9, 0.8])
    assert fields["message"].endswith("among 4 voxels")  # the map's, not the cloud's


def test_query_response_fields_refuse_points_that_do_not_match_the_scores(humble, result):
    with pytest.raises(InputError, match=r"points_m has shape \(3, 3\) but the query scored 4"):
        query_response_fields(result, np.zeros((3, 3)), make_header(humble, 0, "map"), humble)


def test_failed_query_fields_are_an_empty_unsuccessful_response(types):
    fields = failed_query_fields("no map yet", make_header(types, 0, "map"), types)
    response = check_message(types, types.QueryTextResponse(**fields))
    assert (response.success, response.message, response.score_name) == (False, "no map yet", "")
    assert response.threshold == 0.0 and response.matches == []
    assert response.cloud.width == 0 and response.cloud.data.size == 0


def test_query_markers_delete_old_ones_then_box_and_label_each_cluster(types, result):
    markers = query_markers(result, make_header(types, 0, "map"), types, text="mug", lifetime_s=2.5)
    back = check_message(types, markers).markers
    assert len(back) == 1 + 2 * len(result.clusters)
    assert back[0].action == 3 and back[0].ns == QUERY_MARKER_NAMESPACE
    assert len({m.id for m in back}) == len(back)
    assert all(m.ns == QUERY_MARKER_NAMESPACE for m in back)
    for rank, cluster in enumerate(result.clusters, start=1):
        box, label = back[2 * rank - 1], back[2 * rank]
        assert (box.type, box.action, label.type) == (1, 0, 9)
        np.testing.assert_allclose(_xyz(box.scale), cluster.box_max_m - cluster.box_min_m)
        centre = (cluster.box_min_m + cluster.box_max_m) / 2
        np.testing.assert_allclose(_xyz(box.pose.position), centre)
        q = box.pose.orientation
        assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)
        assert 0 < box.color.a < 1
        assert label.text == f"mug #{rank} {cluster.score:.2f}"
        assert label.pose.position.z > cluster.box_max_m[2]
        assert (box.lifetime.sec, box.lifetime.nanosec) == (2, 500_000_000)
    assert back[1].text == "" and back[2].text == "mug #1 0.90"


def test_query_markers_of_a_result_without_clusters_only_delete(humble, result):
    empty = dataclasses.replace(result, clusters=())
    markers = query_markers(empty, make_header(humble, 0, "map"), humble, text="mug")
    assert [m.action for m in markers.markers] == [3]


@pytest.mark.parametrize("lifetime_s", [-1.0, float("inf")])
def test_query_markers_refuse_invalid_lifetimes(humble, result, lifetime_s):
    with pytest.raises(InputError, match=r"lifetime_s must be finite and >= 0"):
        query_markers(
            result, make_header(humble, 0, "map"), humble, text="x", lifetime_s=lifetime_s
        )


# --- camera info --------------------------------------------------------------------------


def _camera_info(types, height, width, k):
    return types.CameraInfo(height=height, width=width, k=np.asarray(k, np.float64).reshape(9))


def test_camera_info_K_is_scaled_about_pixel_centres(humble):
    full = np.array([[600.0, 0, 319.5], [0, 610.0, 239.5], [0, 0, 1]])
    K_small = camera_info_to_K_at(_camera_info(humble, 480, 640, full), (120, 160))
    np.testing.assert_allclose(K_small, scale_intrinsics(full, 0.25, 0.25))
    np.testing.assert_allclose(K_small[:2, 2], [(319.5 + 0.5) / 4 - 0.5, (239.5 + 0.5) / 4 - 0.5])
    np.testing.assert_allclose(np.diag(K_small), [150.0, 152.5, 1.0])


def test_camera_info_K_at_refuses_a_camera_info_without_size(humble):
    with pytest.raises(InputError, match=r"camera_info has no image size: 0x0"):
        camera_info_to_K_at(_camera_info(humble, 0, 0, K), (10, 10))


def test_camera_info_K_at_refuses_an_invalid_size(humble):
    with pytest.raises(InputError, match=r"size must be \(height, width\) positive integers"):
        camera_info_to_K_at(_camera_info(humble, 60, 80, K), (0, 10))
