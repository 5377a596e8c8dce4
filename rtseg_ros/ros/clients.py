"""Client-side nodes that talk to a segmentation node: a camera feeder and an output listener.

The demo, live evaluation and the tests share them. Both resolve topic names the way the node does,
relative to a ``namespace``: a feeder and a listener made with the node's namespace reach the node
wherever it runs. A :class:`ClientSession` gives them an rclpy context of their own, so a client never
disturbs other ROS users of the process.

>>> with ClientSession() as session:
...     feeder = session.add(CameraFeeder(namespace="/front", context=session.context))
...     listener = session.add(OutputListener(namespace="/front", context=session.context))
...     session.wait_until(lambda: listener.ready and feeder.connected, 120, "the node")
...     header = feeder.publish_frame(image, "rgb")
...     session.wait_until(lambda: listener.stats(Topics.LABELS).count > 0, 10, "labels")

This module imports rclpy and message packages, never torch.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from rtseg_ros.io.images import array_to_image_fields
from rtseg_ros.names import INPUT_TRANSPORTS, NODE_NAME, Topics, TopicSpec
from rtseg_ros.ros.interfaces import (
    LABEL_INFO_QOS,
    describe_label_info,
    diagnostic_name,
    message_type,
    parse_label_info_meta,
)
from rtseg_ros.ros.node_process import NodeProcess, wait_until

__all__ = ["CameraFeeder", "ClientSession", "OutputListener", "TopicStatistics"]

NodeT = TypeVar("NodeT", bound=Node)

# What the listener hears by default: the node's image outputs.
IMAGE_OUTPUTS: tuple[TopicSpec, ...] = (Topics.LABELS, Topics.CONFIDENCE, Topics.OVERLAY)


def _reliable(depth: int) -> QoSProfile:
    # Reliable both ways: the feeder loses no frame before the node's (reliable or best-effort)
    # subscription takes it, and the listener matches the node's reliable outputs.
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


class ClientSession:
    """An rclpy context and executor of its own for client nodes; a context manager.

    rclpy installs no signal handlers for it: Ctrl-C reaches the caller as ``KeyboardInterrupt``.
    """

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list[Node] = []

    def add(self, node: NodeT) -> NodeT:
        """Spin ``node`` (made with ``context=session.context``) with the session; returns it."""
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def spin_once(self, timeout_s: float) -> None:
        self.executor.spin_once(timeout_sec=max(0.0, timeout_s))

    def spin_for(self, seconds: float) -> None:
        """Handle callbacks for ``seconds``."""
        self.spin_until(time.monotonic() + seconds)

    def spin_until(self, deadline: float) -> None:
        """Handle callbacks until the monotonic time ``deadline``."""
        while (left := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str,
                   process: NodeProcess | None = None) -> None:
        """Spin until ``condition()`` holds.

        Raises:
            rtseg_ros.ros.node_process.NodeExitedError: ``process`` ended first.
            TimeoutError: not within ``timeout_s``; the message names ``what`` (and ends with the
                node's log when ``process`` is given).
        """
        wait_until(condition, timeout_s, self.spin_once, what, process)

    def close(self) -> None:
        self.executor.shutdown()
        for node in self._nodes:
            node.destroy_node()
        self._nodes.clear()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> ClientSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class CameraFeeder(Node):
    """Plays a camera to the node: frames with fresh header stamps, or messages built by the caller.

    Args:
        namespace: the segmentation node's namespace; relative topics resolve in it.
        image_topic: where the node listens (relative, or absolute when the node's is remapped).
        transport: ``raw`` (sensor_msgs/Image) or ``compressed`` (sensor_msgs/CompressedImage).
        camera_info_topic: the node's camera_info input.
        depth: history depth of the publishers.
        frame_id: ``header.frame_id`` of the frames :meth:`publish_frame` makes.
        node_name: this node's name.
        context: the rclpy context (``ClientSession.context``).

    Raises:
        ValueError: an unknown transport.
    """

    def __init__(self, *, namespace: str = "", image_topic: str = Topics.IMAGE.name, transport: str = "raw",
                 camera_info_topic: str = Topics.CAMERA_INFO.name, depth: int = 10, frame_id: str = "camera",
                 node_name: str = "rtseg_camera_feeder", context: Context | None = None) -> None:
        if transport not in INPUT_TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(INPUT_TRANSPORTS)}, got {transport!r}")
        super().__init__(node_name, namespace=namespace or None, context=context)
        self.transport = transport
        self.frame_id = frame_id
        image_spec = Topics.COMPRESSED_IMAGE if transport == "compressed" else Topics.IMAGE
        self._image_type = message_type(image_spec)
        self._images = self.create_publisher(self._image_type, image_topic, _reliable(depth))
        self._camera_info = self.create_publisher(CameraInfo, camera_info_topic, _reliable(depth))
        self.published = 0
        self.first_published_s: float | None = None
        self.last_published_s: float | None = None

    @property
    def image_topic(self) -> str:
        """The fully resolved camera topic."""
        return self._images.topic_name

    @property
    def subscribers(self) -> int:
        """How many subscriptions (the node's) the camera topic has."""
        return self._images.get_subscription_count()

    @property
    def camera_info_subscribers(self) -> int:
        return self._camera_info.get_subscription_count()

    @property
    def connected(self) -> bool:
        """True once a subscriber (the node) takes the camera topic."""
        return self.subscribers > 0

    def stamp_now(self) -> Header:
        """A header stamped now on this node's clock, with the feeder's frame id."""
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)

    def publish_frame(self, image: np.ndarray, color_order: str = "rgb", header: Header | None = None) -> Header:
        """Publish an HxWx3 frame as ``rgb8``/``bgr8`` with ``header`` (default: stamped now); returns the header.

        Raises:
            ValueError: the feeder sends compressed images (build them and use :meth:`publish`).
        """
        if self.transport != "raw":
            raise ValueError("publish_frame sends raw frames; publish a CompressedImage with publish()")
        header = header or self.stamp_now()
        encoding = "rgb8" if color_order == "rgb" else "bgr8"
        self.publish(Image(header=header, **array_to_image_fields(image, encoding)))
        return header

    def publish(self, msg: Image | CompressedImage | CameraInfo) -> None:
        """Publish a message built by the caller: a frame of the feeder's transport or a CameraInfo.

        Raises:
            TypeError: another message type.
        """
        if isinstance(msg, CameraInfo):
            self._camera_info.publish(msg)
            return
        if not isinstance(msg, self._image_type):
            raise TypeError(f"this feeder publishes {self._image_type.__name__} ({self.transport} transport) "
                            f"and CameraInfo, not {type(msg).__name__}")
        self._images.publish(msg)
        self.published += 1
        now = time.monotonic()
        if self.first_published_s is None:
            self.first_published_s = now
        self.last_published_s = now


@dataclass
class TopicStatistics:
    """What arrived on one output topic.

    Attributes:
        count: messages received.
        first_s / last_s: ``time.monotonic()`` of the first and the latest.
        latencies_ms: per message, receipt time minus its header stamp (the camera frame's) on the
            listener's ROS clock: end-to-end latency when the stamps are the feeder's.
    """

    count: int = 0
    first_s: float | None = None
    last_s: float | None = None
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, received_s: float, latency_ms: float | None) -> None:
        self.count += 1
        if self.first_s is None:
            self.first_s = received_s
        self.last_s = received_s
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)

    @property
    def rate_hz(self) -> float | None:
        """Messages per second between the first and the latest (``None`` before two)."""
        if self.count < 2 or self.first_s is None or self.last_s is None or self.last_s <= self.first_s:
            return None
        return (self.count - 1) / (self.last_s - self.first_s)

    def latency_percentiles(self, quantiles: Iterable[float] = (50, 95), since: int = 0) -> list[float]:
        """Latency percentiles (ms) of the messages from index ``since`` on; NaN where none."""
        window = self.latencies_ms[since:]
        quantiles = list(quantiles)
        if not window:
            return [float("nan")] * len(quantiles)
        return [float(value) for value in np.percentile(window, quantiles)]


MessageCallback = Callable[[str, Any, float], None]


class OutputListener(Node):
    """Listens to the node's outputs: counts, rates and latency per topic, the latest label_info (and its
    label_info_meta document) and status.

    Args:
        namespace: the segmentation node's namespace; the output topics resolve in it.
        outputs: the output topics to listen to (label_info, label_info_meta and /diagnostics are always
            heard).
        depth: history depth of the output subscriptions (deep enough for a burst of outputs).
        keep_messages: keep every message received, with its arrival time, in :attr:`messages`.
        on_message: called as ``on_message(topic, msg, received_s)`` for each output message, ``topic``
            being the resolved name.
        node_name: the watched segmentation node's name (whose /diagnostics status is kept).
        listener_name: this node's name.
        context: the rclpy context (``ClientSession.context``).
    """

    def __init__(self, *, namespace: str = "", outputs: Iterable[TopicSpec] = IMAGE_OUTPUTS, depth: int = 10,
                 keep_messages: bool = False, on_message: MessageCallback | None = None,
                 node_name: str = NODE_NAME, listener_name: str = "rtseg_output_listener",
                 context: Context | None = None) -> None:
        super().__init__(listener_name, namespace=namespace or None, context=context)
        self.keep_messages = keep_messages
        self.on_message = on_message
        self.statistics: dict[str, TopicStatistics] = {}
        self.messages: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.label_info: Any | None = None
        self.label_info_count = 0
        self.label_info_meta: dict[str, Any] | None = None
        self.label_info_meta_count = 0
        self.status: dict[str, str] = {}
        self.status_count = 0
        self._outputs: list[Any] = []
        for spec in outputs:
            if spec in (Topics.LABEL_INFO, Topics.LABEL_INFO_META):
                continue
            topic = self.resolve_topic_name(spec.name)
            self.statistics[topic] = TopicStatistics()
            self._outputs.append(self.create_subscription(
                message_type(spec), topic, lambda msg, topic=topic: self._on_output(topic, msg), _reliable(depth)))
        self._label_info = self.create_subscription(message_type(Topics.LABEL_INFO), Topics.LABEL_INFO.name,
                                                    self._on_label_info, LABEL_INFO_QOS)
        self._label_info_meta = self.create_subscription(
            message_type(Topics.LABEL_INFO_META), Topics.LABEL_INFO_META.name, self._on_label_info_meta,
            LABEL_INFO_QOS)
        self.node_path = f"{self.get_namespace().rstrip('/')}/{node_name}"
        self.create_subscription(DiagnosticArray, Topics.DIAGNOSTICS.name, self._on_diagnostics, 10)

    def topic(self, spec: TopicSpec) -> str:
        """The resolved name of one of the node's topics as this listener sees it."""
        return self.resolve_topic_name(spec.name)

    def stats(self, topic: TopicSpec | str) -> TopicStatistics:
        """The statistics of an output (by spec or resolved name).

        Raises:
            KeyError: the listener does not listen to it.
        """
        name = self.topic(topic) if isinstance(topic, TopicSpec) else topic
        try:
            return self.statistics[name]
        except KeyError:
            raise KeyError(f"not listening to {name}; listening to {', '.join(self.statistics)}") from None

    @property
    def label_info_text(self) -> str:
        """One line about the engine serving (empty before label_info_meta arrives)."""
        return describe_label_info(self.label_info_meta) if self.label_info_meta is not None else ""

    @property
    def connected(self) -> bool:
        """True once every output topic listened to has a publisher (the node's)."""
        # Node.count_publishers, not Subscription.get_publisher_count: Humble's rclpy has only the former.
        return all(self.count_publishers(subscription.topic_name) > 0 for subscription in self._outputs)

    @property
    def ready(self) -> bool:
        """The node is up: its latched label_info and label_info_meta have arrived (published once its
        engine is built) and every output listened to is connected."""
        return self.label_info is not None and self.label_info_meta is not None and self.connected

    def by_stamp(self, topic: str, header: Header) -> Any | None:
        """The kept message of ``topic`` (resolved name) with ``header``'s stamp, if any."""
        for _, msg in self.messages.get(topic, ()):
            if msg.header.stamp == header.stamp:
                return msg
        return None

    def _on_output(self, topic: str, msg: Any) -> None:
        received_s = time.monotonic()
        latency = self.get_clock().now() - Time.from_msg(msg.header.stamp)
        self.statistics[topic].add(received_s, latency.nanoseconds * 1e-6)
        if self.keep_messages:
            self.messages[topic].append((received_s, msg))
        if self.on_message is not None:
            self.on_message(topic, msg, received_s)

    def _on_label_info(self, msg: Any) -> None:
        self.label_info = msg
        self.label_info_count += 1
        if self.keep_messages:
            self.messages[self._label_info.topic_name].append((time.monotonic(), msg))

    def _on_label_info_meta(self, msg: Any) -> None:
        try:
            self.label_info_meta = parse_label_info_meta(msg)
        except ValueError as exc:
            self.get_logger().warning(f"ignoring {self._label_info_meta.topic_name}: {exc}")
            return
        self.label_info_meta_count += 1
        if self.keep_messages:
            self.messages[self._label_info_meta.topic_name].append((time.monotonic(), msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        name = diagnostic_name(self.node_path)
        for status in msg.status:
            if status.name == name:
                self.status = {kv.key: kv.value for kv in status.values}
                self.status_count += 1
