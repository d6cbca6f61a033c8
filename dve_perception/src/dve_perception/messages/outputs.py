"""Build the messages the ROS nodes publish and answer with, without importing ROS.

This module is the adapters' single entry point: it re-exports the basic builders
(`messages.builders`) and the embedding-frame codec (`messages.embedding`), and builds the QueryText
response fields and the RViz markers of a query. Every builder takes a `types` object (see
`messages.message_types.MessageTypes`): the adapters pass rclpy's classes, tests pass
`messages.message_types.rosbags_message_types()`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dve_perception.errors import InputError
from dve_perception.messages.builders import (
    array_to_image,
    camera_info_to_K_at,
    make_header,
    points_cloud,
)
from dve_perception.messages.conversions import ns_to_stamp_fields
from dve_perception.messages.embedding import embedding_frame_to_msg, msg_to_embedding_frame

__all__ = [
    "QUERY_MARKER_NAMESPACE",
    "array_to_image",
    "camera_info_to_K_at",
    "embedding_frame_to_msg",
    "failed_query_fields",
    "make_header",
    "msg_to_embedding_frame",
    "points_cloud",
    "query_markers",
    "query_response_fields",
]

#: The namespace of the query markers (RViz shows and deletes markers per namespace).
QUERY_MARKER_NAMESPACE = "dve_perception_query"
# visualization_msgs/Marker constants (fixed by the message definition).
_CUBE, _TEXT_VIEW_FACING = 1, 9
_ADD, _DELETEALL = 0, 3
_INT32_MAX = 2**31 - 1
#: Box colours by rank (1st, 2nd, ...), cycled; translucent so the voxels stay visible.
_RANK_COLOURS = (
    (0.90, 0.10, 0.10),
    (1.00, 0.55, 0.00),
    (0.95, 0.85, 0.10),
    (0.20, 0.70, 0.20),
    (0.10, 0.55, 0.95),
    (0.60, 0.30, 0.85),
)
_BOX_ALPHA = 0.4
_TEXT_HEIGHT_M = 0.1


def query_response_fields(
    result: Any,
    points_m: np.ndarray | None,
    header: Any,
    types: Any,
    *,
    message: str = "",
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Return the QueryText response fields of a successful query.

    Args:
        result: the `mapping.QueryResult`.
        points_m: (N, 3) voxel centres for the cloud, aligned with `scores`; None uses
            `result.points_m`.
        header: the header of the cloud (map frame).
        types: the message types (`QueryMatch`, `Point`, `Vector3`, `PointCloud2`, ...).
        message: the outcome to report; "" reports the match count and the threshold.
        scores: (N,) scores of `points_m` when the cloud holds a subset of the voxels (e.g. the
            best ones of a large map); None uses `result.scores`.

    Returns:
        success, message, score_name, threshold, matches (best first) and cloud (x, y, z, score
        of every voxel), by field name.

    Raises:
        InputError: points that are not (N, 3) finite values with N the number of scores.
    """
    scores = np.asarray(result.scores if scores is None else scores)
    points = np.asarray(result.points_m if points_m is None else points_m)
    if points.ndim != 2 or points.shape[0] != scores.shape[0]:
        raise InputError(
            f"points_m has shape {points.shape} but the query scored {scores.shape[0]} voxels; "
            "expected one point per voxel"
        )
    matches = [_query_match(types, cluster) for cluster in result.clusters]
    if not message:
        plural = "match" if len(matches) == 1 else "matches"
        message = (
            f"{len(matches)} {plural} with {result.score_name} >= {float(result.threshold):.3g} "
            f"among {len(result.scores)} voxels"
        )
    return {
        "success": True,
        "message": str(message),
        "score_name": str(result.score_name),
        "threshold": float(result.threshold),
        "matches": matches,
        "cloud": points_cloud(header, points, types, scores=scores),
    }


def failed_query_fields(message: str, header: Any, types: Any) -> dict[str, Any]:
    """Return the QueryText response fields of a query that scored nothing.

    Args:
        message: why the query failed.
        header: the header of the (empty) cloud.
        types: the message types (`PointCloud2`, `PointField`, `uint8_array`).

    Returns:
        success false, the message, no score name, threshold 0, no matches, an empty x, y, z,
        score cloud.
    """
    return {
        "success": False,
        "message": str(message),
        "score_name": "",
        "threshold": 0.0,
        "matches": [],
        "cloud": points_cloud(header, np.zeros((0, 3)), types, scores=np.zeros(0)),
    }


def query_markers(
    result: Any, header: Any, types: Any, *, text: str, lifetime_s: float = 0.0
) -> Any:
    """Build RViz markers for a query's matches: a box and a label per cluster.

    The array starts with a DELETEALL marker, so the previous query's markers disappear
    even when this one has fewer matches. Then, for the cluster of rank r (1 = best), a
    translucent CUBE (id 2r - 1) on its bounding box and a TEXT_VIEW_FACING label (id 2r)
    "<text> #<r> <score>" above it.

    Args:
        result: the `mapping.QueryResult` (clusters in the map frame).
        header: the markers' header (map frame).
        types: the message types (`Marker`, `MarkerArray`, `Pose`, `Point`, `Quaternion`,
            `Vector3`, `ColorRGBA`, `Duration`).
        text: the query text for the labels.
        lifetime_s: how long RViz keeps the markers; 0 = until replaced.

    Returns:
        The MarkerArray.

    Raises:
        InputError: a negative or non-finite lifetime.
    """
    if not (math.isfinite(lifetime_s) and lifetime_s >= 0):
        raise InputError(f"lifetime_s must be finite and >= 0, got {lifetime_s!r}")
    markers = [types.Marker(header=header, ns=QUERY_MARKER_NAMESPACE, id=0, action=_DELETEALL)]
    voxel_m = max(float(result.voxel_size_m), 0.0)
    for rank, cluster in enumerate(result.clusters, start=1):
        markers.extend(_cluster_markers(types, header, rank, cluster, text, voxel_m, lifetime_s))
    return types.MarkerArray(markers=markers)


def _cluster_markers(
    types: Any, header: Any, rank: int, cluster: Any, text: str, voxel_m: float, lifetime_s: float
) -> list[Any]:
    """The box (id 2 * rank - 1) and label (id 2 * rank) markers of one cluster."""
    low, high = _vector(cluster.box_min_m), _vector(cluster.box_max_m)
    centre = (low + high) / 2
    r, g, b = _RANK_COLOURS[(rank - 1) % len(_RANK_COLOURS)]
    common = {"header": header, "ns": QUERY_MARKER_NAMESPACE, "action": _ADD}
    box = types.Marker(
        **common,
        id=2 * rank - 1,
        type=_CUBE,
        pose=_pose(types, centre),
        scale=_vector3(types, np.maximum(high - low, voxel_m)),
        color=types.ColorRGBA(r=r, g=g, b=b, a=_BOX_ALPHA),
        lifetime=_duration(types, lifetime_s),
    )
    label = types.Marker(
        **common,
        id=2 * rank,
        type=_TEXT_VIEW_FACING,
        pose=_pose(types, (centre[0], centre[1], high[2] + _TEXT_HEIGHT_M)),
        scale=_vector3(types, (_TEXT_HEIGHT_M,) * 3),
        color=types.ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
        text=f"{text} #{rank} {float(cluster.score):.2f}",
        lifetime=_duration(types, lifetime_s),
    )
    return [box, label]


def _query_match(types: Any, cluster: Any) -> Any:
    low, high = _vector(cluster.box_min_m), _vector(cluster.box_max_m)
    return types.QueryMatch(
        centroid=_point(types, _vector(cluster.centroid_m)),
        box_center=_point(types, (low + high) / 2),
        box_size=_vector3(types, high - low),
        score=float(cluster.score),
        mean_score=float(cluster.mean_score),
        voxel_count=int(cluster.voxel_count),
    )


def _vector(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(3)


def _point(types: Any, xyz: Any) -> Any:
    return types.Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _vector3(types: Any, xyz: Any) -> Any:
    return types.Vector3(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _pose(types: Any, position: Any) -> Any:
    identity = types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)
    return types.Pose(position=_point(types, position), orientation=identity)


def _duration(types: Any, seconds: float) -> Any:
    sec, nanosec = ns_to_stamp_fields(round(seconds * 1e9))
    return types.Duration(sec=min(sec, _INT32_MAX), nanosec=nanosec)
