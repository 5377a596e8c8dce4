"""One camera's side of the segmentation node: its inputs, its outputs and its statistics.

The node serves one camera (topics ``image``, ``camera_info``, ``segmentation/...``) or several with
one engine (each camera's topics under its name: ``front/image``, ``front/segmentation/labels``, ...;
:func:`rtseg_ros.names.camera_topic`). Everything that belongs to one camera lives here, so that a
camera that stops or sends bad frames affects only its own topics and its own /diagnostics status.
The engine, the parameters and the choice of thread that runs a frame stay with the node.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.io.overlay import overlay_labels
from rtseg_ros.names import Topics, TopicSpec, camera_topic
from rtseg_ros.ros import rcl_direct
from rtseg_ros.ros.diagnostics import FrameStatistics
from rtseg_ros.ros.frame_path import (
    CameraInfoHistory,
    DecodedFrame,
    FrameDecoder,
    OutputEncoder,
    ScaledCameraInfos,
    header_message,
)
from rtseg_ros.ros.interfaces import LABEL_INFO_QOS, message_type, qos_profile

__all__ = ["CameraStream", "FrameHandler", "OutputSettings"]

# handle(camera, data, received_ns, missed): a serialised frame taken from the camera's topic; ``data`` is
# valid only during the call; ``missed`` counts the frames the middleware replaced before it.
FrameHandler = Callable[["CameraStream", "bytes | memoryview", int, int], None]


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """How the outputs of a frame are written (node parameters that may change at run time)."""

    confidence_encoding: str
    publish_overlay: bool
    overlay_alpha: float


class CameraStream:
    """The topics, decoder, encoders and frame statistics of one camera.

    Publishers exist from construction; frames are taken only between :meth:`start` and :meth:`stop`
    (a managed node takes none while inactive: the camera's messages stay in the middleware).

    Args:
        node: the node the topics belong to.
        camera: the camera's name; ``""`` for the single-camera node's unprefixed topics.
        transport: ``raw`` or ``compressed``.
        camera_qos: the QoS of the image subscription; ``info_qos`` that of camera_info.
        output_depth: history depth of the image outputs.
        direct_io: take and publish serialised messages through rcl (``rcl_direct``).
        on_frame: called with every frame taken (see :data:`FrameHandler`), on the taking thread.
        on_camera_info: called with every camera_info message after it is stored.
    """

    def __init__(self, node: Node, camera: str, *, transport: str, camera_qos: Any, info_qos: Any,
                 output_depth: int, direct_io: bool, on_frame: FrameHandler,
                 on_camera_info: Callable[[CameraStream, CameraInfo], None]) -> None:
        self.node = node
        self.name = camera
        self.stats = FrameStatistics()
        self.decode = FrameDecoder(transport)
        self._image_type = CompressedImage if transport == "compressed" else Image
        self._camera_qos = camera_qos
        self._direct_io = direct_io
        self._on_frame = on_frame
        self._on_camera_info_callback = on_camera_info
        self._camera_infos = CameraInfoHistory()
        self._scaled_camera_info = ScaledCameraInfos()
        self._outputs = OutputEncoder(reuse_buffers=direct_io)
        self._labels_pub = self._image_publisher(Topics.LABELS, output_depth)
        self._confidence_pub = self._image_publisher(Topics.CONFIDENCE, output_depth)
        self._overlay_pub = self._image_publisher(Topics.OVERLAY, output_depth)
        self._camera_info_pub = node.create_publisher(
            CameraInfo, self.topic(Topics.OUTPUT_CAMERA_INFO), qos_profile(Topics.OUTPUT_CAMERA_INFO.qos, output_depth))
        self._label_info_pub = node.create_publisher(
            message_type(Topics.LABEL_INFO), self.topic(Topics.LABEL_INFO), LABEL_INFO_QOS)
        self._label_info_meta_pub = node.create_publisher(
            message_type(Topics.LABEL_INFO_META), self.topic(Topics.LABEL_INFO_META),
            qos_profile(Topics.LABEL_INFO_META.qos))
        self._timings_pub = node.create_publisher(String, self.topic(Topics.TIMINGS), qos_profile(Topics.TIMINGS.qos))
        self._camera_info_sub = node.create_subscription(
            CameraInfo, self.topic(Topics.CAMERA_INFO), self._on_camera_info, info_qos)
        self._taker: rcl_direct.FrameTaker | None = None
        self._subscription: Any = None

    def topic(self, spec: TopicSpec) -> str:
        """This camera's name for one of the node's topics (relative to the node's namespace)."""
        return camera_topic(self.name, spec)

    @property
    def image_topic(self) -> str:
        """The camera topic, fully resolved (for logs)."""
        return self.node.resolve_topic_name(self.topic(Topics.IMAGE))

    def _image_publisher(self, spec: TopicSpec, depth: int) -> Any:
        """An image output's publisher: one that publishes the encoder's buffers in place with direct_io."""
        publisher = self.node.create_publisher(Image, self.topic(spec), qos_profile(spec.qos, depth))
        return rcl_direct.SerializedPublisher(publisher) if self._direct_io else publisher

    # Taking frames -------------------------------------------------------------------------

    @property
    def taking(self) -> bool:
        return self._taker is not None or self._subscription is not None

    def start(self) -> None:
        """Start taking frames (serialised; ``frame_path`` reads them in place) and handing them to ``on_frame``."""
        if self.taking:
            return
        topic = self.topic(Topics.IMAGE)
        if self._direct_io:
            subscription = rcl_direct.SerializedSubscription(self.node, self._image_type, topic, self._camera_qos)
            self._taker = rcl_direct.FrameTaker(
                subscription, lambda data, received_ns, missed: self._on_frame(self, data, received_ns, missed),
                lambda: self.node.get_clock().now().nanoseconds, name=f"frame-taker{'-' + self.name if self.name else ''}")
        else:
            self._subscription = self.node.create_subscription(
                self._image_type, topic,
                lambda data: self._on_frame(self, data, self.node.get_clock().now().nanoseconds, 0),
                self._camera_qos, raw=True)

    def stop(self) -> None:
        """Stop taking frames (the one in hand finishes); the camera's messages are no longer taken."""
        if self._taker is not None:
            self._taker.stop()
            self._taker = None
        if self._subscription is not None:
            self.node.destroy_subscription(self._subscription)
            self._subscription = None

    def destroy(self) -> None:
        """Stop taking frames and remove every topic of this camera from the node."""
        self.stop()
        self.node.destroy_subscription(self._camera_info_sub)
        for publisher in (self._labels_pub, self._confidence_pub, self._overlay_pub):
            self.node.destroy_publisher(getattr(publisher, "publisher", publisher))
        for publisher in (self._camera_info_pub, self._label_info_pub, self._label_info_meta_pub, self._timings_pub):
            self.node.destroy_publisher(publisher)

    # Outputs -------------------------------------------------------------------------------

    def wants_confidence(self) -> bool:
        """Whether anyone subscribes to this camera's confidence (it is computed only then)."""
        return self._confidence_pub.get_subscription_count() > 0

    def wants_timings(self) -> bool:
        return self._timings_pub.get_subscription_count() > 0

    def publish_outputs(self, frame: DecodedFrame, labels: np.ndarray, confidence: np.ndarray | None,
                        label_set: LabelSet, settings: OutputSettings) -> None:
        """Labels, confidence, overlay (if subscribed) and camera_info (if one matches), with the frame's header."""
        header = frame.header
        self._labels_pub.publish(self._outputs.labels(header, labels))
        if confidence is not None:
            self._confidence_pub.publish(self._outputs.confidence(header, confidence, settings.confidence_encoding))
        if settings.publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            overlay = overlay_labels(frame.pixels, frame.color_order, labels, label_set, settings.overlay_alpha)
            self._overlay_pub.publish(self._outputs.overlay(header, overlay))
        camera_info = self._camera_infos.match(header.stamp_ns)
        if camera_info is not None:
            height, width = labels.shape
            self._camera_info_pub.publish(
                self._scaled_camera_info.get(camera_info, width, height, header_message(header)))

    def publish_timings(self, text: str) -> None:
        self._timings_pub.publish(String(data=text))

    def publish_label_info(self, label_info: Any, meta: str) -> None:
        """The latched class map (vision_msgs/LabelInfo) and its JSON companion."""
        self._label_info_pub.publish(label_info)
        self._label_info_meta_pub.publish(String(data=meta))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_infos.add(msg)
        self._on_camera_info_callback(self, msg)
