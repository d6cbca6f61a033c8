"""The mapping side of a node: embeddings + TF into the voxel map, services and map outputs.

Fusion runs in one callback group and the services in another, under a MultiThreadedExecutor,
so a query can run while a frame is being fused; the map's lock keeps them consistent. TF is
looked up at the frame's stamp with a timeout; failures are counted and warned about at most
once per `warn_period_s` (the core decides), and the node keeps running. `use_sim_time` works
through the node's clock and TF buffer, as for any node.
"""

from __future__ import annotations

import traceback

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from std_srvs.srv import Trigger
from tf2_ros import TransformException
from tf2_ros.buffer import Buffer
from tf2_ros.transform_listener import TransformListener

from dve_perception.errors import DvePerceptionError
from dve_perception.frames import EmbeddingFrame
from dve_perception.mapping.text_query import TextEncoder
from dve_perception.messages.conversions import transform_to_matrix
from dve_perception.messages.outputs import (
    failed_query_fields,
    make_header,
    msg_to_embedding_frame,
    points_cloud,
    query_markers,
    query_response_fields,
)
from dve_perception.node_logic import MapService, Throttle, build_map
from dve_perception.ros.ros_types import MSG
from dve_perception.settings.node_config import MappingNodeConfig
from dve_perception_interfaces.srv import LoadMap, QueryText, SaveMap

__all__ = ["MappingAdapter"]


class MappingAdapter:
    """Attach mapping to `node`.

    Args:
        node: the node that owns subscriptions, publishers, services and timers.
        config: the mapping settings.
        encoder: the text encoder for queries.
        diagnostics: the node's diagnostic updater (one per node).
        subscribe: subscribe to `embedding` (standalone mapping node); the combined node calls
            `integrate` directly instead.
        embedding_dim: the network's embedding size when known (combined node).
    """

    def __init__(
        self,
        node: Node,
        config: MappingNodeConfig,
        encoder: TextEncoder,
        diagnostics: Updater,
        *,
        subscribe: bool,
        embedding_dim: int | None = None,
    ) -> None:
        self._node, self._config = node, config
        self._service = MapService(build_map(config, embedding_dim), encoder, config)
        self._warn = Throttle(config.warn_period_s)
        # Tied to the node: its clock (use_sim_time; a looping bag jumps back and clears the
        # buffer) and the tf2_frames service that tf2 tools query.
        self._tf_buffer = Buffer(node=node)
        self._tf_listener = TransformListener(self._tf_buffer, node)
        fusion, services = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._cloud_pub = node.create_publisher(MSG.PointCloud2, "map/cloud", latched)
        self._heat_pub = node.create_publisher(MSG.PointCloud2, "query/heatmap", latched)
        self._marker_pub = node.create_publisher(MSG.MarkerArray, "query/markers", latched)
        if subscribe:
            qos = QoSProfile(
                depth=config.embedding_qos_depth, reliability=ReliabilityPolicy.RELIABLE
            )
            node.create_subscription(
                MSG.EmbeddingFrame, "embedding", self._on_embedding, qos, callback_group=fusion
            )
        node.create_service(
            QueryText, config.query_service, self._on_query, callback_group=services
        )
        node.create_service(SaveMap, "save_map", self._on_save, callback_group=services)
        node.create_service(LoadMap, "load_map", self._on_load, callback_group=services)
        node.create_service(Trigger, "clear_map", self._on_clear, callback_group=services)
        if config.cloud_period_s > 0:
            node.create_timer(config.cloud_period_s, self._publish_cloud, callback_group=services)
        diagnostics.add("mapping", self._diagnose)
        self._log(self._service.on_start())

    def shutdown(self) -> None:
        """Save the map if configured (`save_map_on_shutdown`)."""
        self._log(self._service.on_shutdown())

    def integrate(self, frame: EmbeddingFrame, *, assume_unit: bool = False) -> None:
        """Fuse one frame, posed by TF at its stamp (frames without TF are counted, dropped).

        `assume_unit`: see `MapService.integrate` (True for the pipeline's own frames).
        """
        T_world_cam, error = self._lookup(frame.frame_id, frame.stamp_ns)
        outcome = self._service.integrate(frame, T_world_cam, error, assume_unit=assume_unit)
        if not outcome.ok and outcome.should_log:
            self._node.get_logger().warning(f"frame dropped: {outcome.reason}")

    def _lookup(self, frame_id: str, stamp_ns: int) -> tuple[np.ndarray | None, str | None]:
        try:
            transform = self._tf_buffer.lookup_transform(
                self._config.world_frame,
                frame_id,
                # ROS time, like Time.from_msg(header.stamp): the stamp is message time.
                Time(nanoseconds=stamp_ns, clock_type=ClockType.ROS_TIME),
                timeout=Duration(seconds=self._config.tf_timeout_s),
            )
            return transform_to_matrix(transform.transform), None
        except (TransformException, DvePerceptionError) as err:
            return None, f"{self._config.world_frame} <- {frame_id} at {stamp_ns} ns: {err}"

    def _on_embedding(self, msg: MSG.EmbeddingFrame) -> None:
        try:
            frame = msg_to_embedding_frame(msg)
        except DvePerceptionError as err:  # a malformed message must not stop the node
            if self._warn.ready():
                self._node.get_logger().warning(f"embedding frame rejected: {err}")
            return
        self.integrate(frame)

    def _header(self) -> MSG.Header:
        now = self._node.get_clock().now().nanoseconds
        return make_header(MSG, now, self._config.world_frame)

    def _on_query(self, request: QueryText.Request, response: QueryText.Response):
        header = self._header()
        try:
            outcome = self._service.query(
                request.text, list(request.negatives), request.top_k, request.threshold
            )
            if not outcome.success:
                fields = failed_query_fields(outcome.message, header, MSG)
            else:
                fields = query_response_fields(
                    outcome.result,
                    outcome.points_m,
                    header,
                    MSG,
                    message=outcome.message,
                    scores=outcome.scores,
                )
                self._heat_pub.publish(fields["cloud"])
                markers = query_markers(outcome.result, header, MSG, text=request.text.strip())
                self._marker_pub.publish(markers)
            summary = outcome.message
        except Exception:  # a bug: answer with it instead of leaving the caller hanging
            error = traceback.format_exc()
            self._node.get_logger().error(f"query failed:\n{error}")
            summary = f"internal error: {error.strip().splitlines()[-1]}"
            fields = failed_query_fields(summary, header, MSG)
        for key, value in fields.items():
            setattr(response, key, value)
        self._node.get_logger().info(f"query {request.text!r}: {summary}")
        return response

    def _on_save(self, request: SaveMap.Request, response: SaveMap.Response):
        outcome = self._service.save(request.path)
        self._log(outcome)
        response.success, response.message = outcome.success, outcome.message
        response.path = str(outcome.path or "")
        return response

    def _on_load(self, request: LoadMap.Request, response: LoadMap.Response):
        outcome = self._service.load(request.path)
        self._log(outcome)
        response.success, response.message = outcome.success, outcome.message
        response.path = str(outcome.path or "")
        response.voxel_count = int(outcome.voxel_count or 0)
        if outcome.success:
            self._publish_cloud()
        return response

    def _on_clear(self, request: Trigger.Request, response: Trigger.Response):
        outcome = self._service.clear()
        self._log(outcome)
        response.success, response.message = outcome.success, outcome.message
        self._publish_cloud()
        return response

    def _publish_cloud(self) -> None:
        points, rgb = self._service.cloud()
        self._cloud_pub.publish(points_cloud(self._header(), points, MSG, rgb=rgb))

    def _diagnose(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        stats = self._service.stats()
        if self._service.fused == 0:
            stat.summary(DiagnosticStatus.WARN, "no frame fused yet (check TF and the embeddings)")
        else:
            stat.summary(DiagnosticStatus.OK, f"{stats['voxels']} voxels")
        for key, value in stats.items():
            stat.add(str(key), str(value))
        return stat

    def _log(self, outcome) -> None:
        if outcome is None:
            return
        # One call site per severity: rclpy binds a severity to each logging call site and
        # raises "Logger severity cannot be changed between calls" if the same line switches.
        if outcome.success:
            self._node.get_logger().info(outcome.message)
        else:
            self._node.get_logger().error(outcome.message)
