"""The perception side of a node: synced RGB-D in, the network on a worker thread, images out.

The message_filters callback only stores the newest synced triple (`LatestSlot`): the worker
thread always processes the most recent frame and older ones are dropped and counted, so the
node never lags behind the camera. Conversion, inference and image logic is the core's
(`node_logic.PerceptionWorker`); this class owns subscriptions, QoS, the thread, publishers
and its diagnostics task.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable

import message_filters
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from dve_perception.errors import DvePerceptionError
from dve_perception.frames import EmbeddingFrame
from dve_perception.mapping.text_query import TextEncoder
from dve_perception.messages.outputs import array_to_image, embedding_frame_to_msg
from dve_perception.node_logic import (
    InputWatch,
    LatestSlot,
    PerceptionOutputs,
    PerceptionWorker,
    RateStats,
    Throttle,
    build_network,
    class_names,
    frame_from_messages,
)
from dve_perception.ros.ros_types import MSG
from dve_perception.settings.node_config import PerceptionNodeConfig

__all__ = ["PerceptionAdapter"]


class PerceptionAdapter:
    """Attach perception to `node`.

    Args:
        node: the node that owns subscriptions and publishers.
        config: the perception settings.
        encoder: the text encoder for the segmentation vocabulary (None: no segmentation).
        diagnostics: the node's diagnostic updater (one per node).
        on_frame: called on the worker thread with every frame's embeddings (the combined node
            fuses them into its map); None in the standalone perception node.
    """

    def __init__(
        self,
        node: Node,
        config: PerceptionNodeConfig,
        encoder: TextEncoder | None,
        diagnostics: Updater,
        on_frame: Callable[[EmbeddingFrame], None] | None = None,
    ) -> None:
        self._node, self._config, self._on_frame = node, config, on_frame
        network = build_network(config)
        self._provenance = {"backend": network.backend, **network.provenance}
        if "fallback_from" in network.provenance:
            node.get_logger().warning(f"running on the fallback backend {network.backend!r}")
        names = class_names(config)
        # A graph with fused class scores brings its own vocabulary; otherwise encode ours.
        fused = bool(network.pipeline.class_names)
        segment = config.publish_segmentation and encoder is not None and not fused
        prototypes = encoder.encode(names) if segment else None
        self._worker = PerceptionWorker(network.pipeline, prototypes, names, config)
        self._slot: LatestSlot = LatestSlot()
        self._stats = RateStats()
        self._warn = Throttle(config.warn_period_s)
        self._publishers = self._create_publishers()
        qos = _input_qos(config)
        inputs = {
            "color": (MSG.Image, "color/image"),
            "depth": (MSG.Image, "depth/image"),
            "camera_info": (MSG.CameraInfo, "color/camera_info"),
        }
        self._inputs = InputWatch(tuple(inputs))
        subscribers = []
        for name, (msg_type, topic) in inputs.items():
            subscriber = message_filters.Subscriber(node, msg_type, topic, qos_profile=qos)
            # Counted per topic so diagnostics can name one that never arrives.
            subscriber.registerCallback(lambda _msg, name=name: self._inputs.seen(name))
            subscribers.append(subscriber)
        self._sync = message_filters.ApproximateTimeSynchronizer(
            subscribers, config.sync_queue_size, config.sync_slop_s
        )
        self._sync.registerCallback(self._on_synced)
        diagnostics.add("perception", self._diagnose)
        self._thread = threading.Thread(target=self._run, name="perception", daemon=True)
        self._thread.start()

    @property
    def embedding_dim(self) -> int:
        """Channels of the network's embeddings (what a map fed by this node must hold)."""
        return self._worker.pipeline.embedding_dim

    def shutdown(self) -> None:
        """Stop the worker thread (it finishes the frame it is on)."""
        self._slot.close()
        self._thread.join(timeout=10.0)

    def _create_publishers(self) -> dict:
        node, config, qos = self._node, self._config, QoSProfile(depth=1)
        publishers = {}
        if config.publish_segmentation:
            publishers["segmentation"] = node.create_publisher(MSG.Image, "segmentation", qos)
        if config.publish_segmentation and config.publish_previews:
            publishers["segmentation/color"] = node.create_publisher(
                MSG.Image, "segmentation/color", qos
            )
        if config.publish_previews:
            publishers["embedding/pca"] = node.create_publisher(MSG.Image, "embedding/pca", qos)
        if config.publish_embedding:
            publishers["embedding"] = node.create_publisher(MSG.EmbeddingFrame, "embedding", qos)
        return publishers

    def _on_synced(self, color: MSG.Image, depth: MSG.Image, info: MSG.CameraInfo) -> None:
        # Executor thread: store only; the worker takes the newest triple.
        self._inputs.matched()
        self._slot.put((color, depth, info, time.monotonic()))

    def _run(self) -> None:
        while rclpy.ok():
            item = self._slot.take(timeout_s=0.5)
            if item is None:
                if self._slot.closed:
                    return
                continue
            color, depth, info, received = item
            try:
                outputs = self._worker.process(frame_from_messages(color, depth, info))
                self._publish_images(color.header, outputs)
                # Fuse before publishing the embedding message, so a failure there cannot
                # cost the map a frame.
                if self._on_frame is not None:
                    self._on_frame(outputs.embedding)
                self._publish_embedding(outputs)
            except DvePerceptionError as err:
                self._stats.drop()
                if self._warn.ready():
                    self._node.get_logger().warning(f"frame dropped: {err}")
                continue
            except Exception:  # a bug: log it with its traceback, count it, keep running
                self._stats.drop()
                # rclpy loggers take no exc_info: put the traceback in the message.
                self._node.get_logger().error(f"perception failed:\n{traceback.format_exc()}")
                continue
            self._stats.tick(latency_s=time.monotonic() - received)

    def _publish_images(self, header: MSG.Header, outputs: PerceptionOutputs) -> None:
        pubs = self._publishers
        images = {
            "segmentation": (outputs.labels, "mono16"),
            "segmentation/color": (outputs.labels_color, "rgb8"),
            "embedding/pca": (outputs.pca, "rgb8"),
        }
        for topic, (array, encoding) in images.items():
            if array is not None and topic in pubs:
                pubs[topic].publish(array_to_image(array, encoding, header, MSG))

    def _publish_embedding(self, outputs: PerceptionOutputs) -> None:
        if outputs.publish_embedding and "embedding" in self._publishers:
            size = (self._config.embedding_height, self._config.embedding_width)
            publish = outputs.publish
            if publish is not None and tuple(publish.embedding.shape[1:]) == size:
                # The graph downsampled it already (fused `embedding_publish` output).
                message = embedding_frame_to_msg(publish, MSG)
            else:
                message = embedding_frame_to_msg(outputs.embedding, MSG, size=size)
            self._publishers["embedding"].publish(message)

    def _diagnose(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        snapshot = self._stats.snapshot()
        counts = {
            **{f"{name} messages": count for name, count in self._inputs.counts.items()},
            "frames received (synced)": self._slot.received,
            "frames dropped (a newer one arrived)": self._slot.dropped,
        }
        problem = self._inputs.problem()
        if problem is not None:
            stat.summary(DiagnosticStatus.ERROR, problem)
        elif snapshot["total"] == 0:
            stat.summary(DiagnosticStatus.WARN, "no frame processed yet (check topics and QoS)")
        elif "fallback_from" in self._provenance:
            stat.summary(DiagnosticStatus.WARN, f"{snapshot['frequency_hz']:.1f} Hz on fallback")
        else:
            stat.summary(DiagnosticStatus.OK, f"{snapshot['frequency_hz']:.1f} Hz")
        for key, value in {**snapshot, **counts, **self._provenance}.items():
            stat.add(str(key), str(value))
        return stat


def _input_qos(config: PerceptionNodeConfig) -> QoSProfile:
    if config.input_qos == "sensor_data":
        return qos_profile_sensor_data
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=config.qos_depth,
        reliability=ReliabilityPolicy.RELIABLE,
    )
