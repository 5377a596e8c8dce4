"""The ROS 2 segmentation node: camera frames in, labels, confidence and an overlay out.

Topics (relative names, so a namespace or remap moves them):

* in  ``image`` (sensor_msgs/Image, or sensor_msgs/CompressedImage with ``input_transport:=compressed``),
  ``camera_info`` (sensor_msgs/CameraInfo, optional)
* out ``segmentation/labels`` (mono8 class ids), ``segmentation/confidence`` (32FC1 or mono8),
  ``segmentation/overlay`` (rgb8), ``segmentation/camera_info`` (scaled to the label image),
  ``segmentation/label_info`` (transient local), and ``/diagnostics`` once a second.

Every output carries the input frame's header. The node only wires: decoding is
``rtseg_ros.io.images``, inference the ``Segmenter``, threading ``engines.serving``, the overlay ``io.overlay``.

Topic names, types and QoS are :class:`rtseg_ros.names.Topics`; parameters are
:data:`rtseg_ros.names.PARAMETERS`.

``label_info`` is ``vision_msgs/LabelInfo`` where vision_msgs is installed. Otherwise it is a
``std_msgs/String`` holding JSON (:meth:`SegmenterConfig.label_info_fields`)::

    {"format": "rtseg_ros/label_info/1", "label_set": "cityscapes", "num_classes": 19,
     "ignore_index": 255, "classes": [{"id": 0, "name": "road", "color": [128, 64, 128]}, ...],
     "model": "mfaranet", "scales": [1, 2, 3, 4], "weights": "/path/or/empty", "weights_sha256": "...",
     "input_size": [512, 1024], "output_resolution": "input", "backend": "torch", "precision": "fp32",
     "device": "cpu"}

``input_size`` is (height, width); ``weights_sha256`` identifies the random initial weights too.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header, String

from rtseg_ros.engines import Segmenter, SegmenterConfig
from rtseg_ros.engines.serving import EngineSwapper, LatestFrameWorker
from rtseg_ros.io.images import (
    ImageDecodeError,
    array_to_image_fields,
    compressed_msg_to_array,
    image_msg_to_array,
)
from rtseg_ros.io.overlay import overlay_labels
from rtseg_ros.names import LABEL_INFO_FORMAT, NODE_NAME, Topics
from rtseg_ros.ros.diagnostics import FrameStatistics, diagnostic_status
from rtseg_ros.ros.interfaces import (
    LABEL_INFO_QOS,
    LABEL_INFO_TYPE,
    LabelInfo,
    VisionClass,
    diagnostic_name,
    qos_profile,
)
from rtseg_ros.ros.parameters import (
    ENGINE_PARAMETERS,
    ParameterError,
    declare_parameters,
    read_parameters,
    validate_parameters,
)

__all__ = [
    "LABEL_INFO_FORMAT",
    "LABEL_INFO_QOS",
    "LABEL_INFO_TYPE",
    "SegmentationNode",
    "StartupError",
    "diagnostic_name",
    "main",
    "scale_camera_info",
]

# Bad-frame and inference-error logs repeat at most this often.
LOG_THROTTLE_S = 5.0


class StartupError(RuntimeError):
    """The node cannot start with its parameters; the message says what to change."""


def scale_camera_info(info: CameraInfo, width: int, height: int, header: Header) -> CameraInfo:
    """A new CameraInfo for ``info``'s camera resampled to ``width`` x ``height``, with ``header``.

    Intrinsics, projection and ROI are scaled; ``info`` itself is left untouched (it is reused for
    later frames).
    """
    sx = width / info.width if info.width else 1.0
    sy = height / info.height if info.height else 1.0
    k = list(info.k)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    p = list(info.p)
    p[0], p[2], p[3], p[5], p[6] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy
    roi = RegionOfInterest(
        x_offset=round(info.roi.x_offset * sx), y_offset=round(info.roi.y_offset * sy),
        width=round(info.roi.width * sx), height=round(info.roi.height * sy), do_rectify=info.roi.do_rectify)
    return CameraInfo(
        header=header, height=height, width=width, distortion_model=info.distortion_model, d=info.d, k=k, r=info.r,
        p=p, binning_x=info.binning_x, binning_y=info.binning_y, roi=roi)


class SegmentationNode(Node):
    """Semantic segmentation of a camera stream with a latest-frame policy.

    Raises:
        StartupError: invalid parameters, or weights that are missing or do not fit the model.
    """

    def __init__(self, **node_options: Any) -> None:
        super().__init__(NODE_NAME, **node_options)
        declare_parameters(self)
        values = read_parameters(self)
        try:
            config = validate_parameters(values)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None
        self._confidence_encoding: str = values["confidence_encoding"]
        self._publish_overlay: bool = values["publish_overlay"]
        self._overlay_alpha: float = float(values["overlay_alpha"])
        self._camera_info: CameraInfo | None = None
        self._stats = FrameStatistics()

        depth = values["qos_depth"]
        # The camera subscriptions take reliability and depth from the parameters, the outputs the depth.
        camera_qos = qos_profile(dataclasses.replace(Topics.IMAGE.qos, reliability=values["qos_reliability"]), depth)
        self._labels_pub = self.create_publisher(Image, Topics.LABELS.name, qos_profile(Topics.LABELS.qos, depth))
        self._confidence_pub = self.create_publisher(
            Image, Topics.CONFIDENCE.name, qos_profile(Topics.CONFIDENCE.qos, depth))
        self._overlay_pub = self.create_publisher(Image, Topics.OVERLAY.name, qos_profile(Topics.OVERLAY.qos, depth))
        self._camera_info_pub = self.create_publisher(
            CameraInfo, Topics.OUTPUT_CAMERA_INFO.name, qos_profile(Topics.OUTPUT_CAMERA_INFO.qos, depth))
        self._label_info_pub = self.create_publisher(LABEL_INFO_TYPE, Topics.LABEL_INFO.name, LABEL_INFO_QOS)
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, Topics.DIAGNOSTICS.name, qos_profile(Topics.DIAGNOSTICS.qos))

        if config.weights is None:
            self.get_logger().warning(
                "no 'weights' set: running with UNTRAINED random weights, the labels are meaningless")
        try:
            self._engine: EngineSwapper[SegmenterConfig, Segmenter] = EngineSwapper(
                self._build_segmenter, config, on_swap=self._on_engine_swapped, on_failure=self._on_engine_failed)
        except (ValueError, OSError) as exc:
            raise StartupError(_engine_error_message(config, exc)) from None
        self._worker: LatestFrameWorker[Image | CompressedImage] = LatestFrameWorker(self._process_frame)

        if values["input_transport"] == "compressed":
            self._decode = compressed_msg_to_array
            self.create_subscription(CompressedImage, Topics.COMPRESSED_IMAGE.name, self._on_image, camera_qos)
        else:
            self._decode = image_msg_to_array
            self.create_subscription(Image, Topics.IMAGE.name, self._on_image, camera_qos)
        self.create_subscription(CameraInfo, Topics.CAMERA_INFO.name, self._on_camera_info, camera_qos)
        self.add_on_set_parameters_callback(self._validate_parameter_change)
        self.add_post_set_parameters_callback(self._apply_parameter_change)
        self.create_timer(1.0, self._publish_diagnostics)
        self._publish_label_info(config)
        self.get_logger().info(
            f"serving {config.model} ({config.backend}, {config.precision}, {config.device}) at "
            f"{config.input_height}x{config.input_width} (HxW); "
            f"subscribed to {self.resolve_topic_name(Topics.IMAGE.name)}")

    def destroy_node(self) -> None:
        self._worker.stop()
        super().destroy_node()

    # Engine --------------------------------------------------------------------------------

    def _build_segmenter(self, config: SegmenterConfig) -> Segmenter:
        segmenter = Segmenter(config)
        segmenter.warmup()
        return segmenter

    def _on_engine_swapped(self, config: SegmenterConfig) -> None:
        self.get_logger().info(
            f"now serving {config.model} {config.backend}/{config.precision} at "
            f"{config.input_height}x{config.input_width}, scales {list(config.scales)}")
        self._publish_label_info(config)

    def _on_engine_failed(self, config: SegmenterConfig, error: Exception) -> None:
        self.get_logger().error(f"{_engine_error_message(config, error)}; still serving the previous engine")
        # Put the parameters back to what is serving, so reading them tells the truth.
        serving = self._engine.config
        reverted = {name: value for name, value in serving.to_parameters().items()
                    if self.get_parameter(name).value != value}
        self.set_parameters([Parameter(name, value=value) for name, value in reverted.items()])

    # Parameters ----------------------------------------------------------------------------

    def _validate_parameter_change(self, parameters: list[Parameter]) -> SetParametersResult:
        values = read_parameters(self)
        values.update({parameter.name: parameter.value for parameter in parameters})
        try:
            validate_parameters(values)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameter_change(self, parameters: list[Parameter]) -> None:
        values = read_parameters(self)
        self._confidence_encoding = values["confidence_encoding"]
        self._publish_overlay = values["publish_overlay"]
        self._overlay_alpha = float(values["overlay_alpha"])
        if any(parameter.name in ENGINE_PARAMETERS for parameter in parameters):
            try:
                config = validate_parameters(values)
            except ParameterError as exc:  # e.g. the weights file vanished since the change was accepted
                self.get_logger().error(f"not rebuilding the engine: {exc}")
                return
            if self._engine.rebuild(config):
                self.get_logger().info("building a new engine in the background; the current one keeps serving")

    # Frames --------------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._stats.frame_received(displaced_pending=self._worker.submit(msg))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _process_frame(self, msg: Image | CompressedImage) -> None:
        """Decode, segment and publish one frame (runs on the worker thread)."""
        try:
            frame, color_order = self._decode(msg)
        except ImageDecodeError as exc:
            self._stats.frame_bad()
            self.get_logger().warning(f"skipping bad frame: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        segmenter = self._engine.engine
        want_confidence = self._confidence_pub.get_subscription_count() > 0
        try:
            result = segmenter.segment(frame, color_order=color_order, want_confidence=want_confidence)
        except Exception as exc:  # noqa: BLE001 - one failing frame must not stop the stream
            self._stats.frame_failed()
            self.get_logger().error(f"inference failed: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return

        header = msg.header
        labels = result.labels
        self._labels_pub.publish(Image(header=header, **array_to_image_fields(labels, "mono8")))
        if result.confidence is not None:
            self._publish_confidence(header, result.confidence)
        if self._publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            overlay = overlay_labels(frame, color_order, labels, segmenter.label_set, self._overlay_alpha)
            self._overlay_pub.publish(Image(header=header, **array_to_image_fields(overlay, "rgb8")))
        camera_info = self._camera_info
        if camera_info is not None:
            self._camera_info_pub.publish(
                scale_camera_info(camera_info, width=labels.shape[1], height=labels.shape[0], header=header))
        latency = self.get_clock().now() - Time.from_msg(header.stamp)
        self._stats.frame_published(latency.nanoseconds * 1e-9)

    def _publish_confidence(self, header: Header, confidence: np.ndarray) -> None:
        if self._confidence_encoding == "mono8":
            fields = array_to_image_fields(np.rint(confidence * 255.0).astype(np.uint8), "mono8")
        else:
            fields = array_to_image_fields(confidence.astype(np.float32, copy=False), "32FC1")
        self._confidence_pub.publish(Image(header=header, **fields))

    # Status --------------------------------------------------------------------------------

    def _publish_label_info(self, config: SegmenterConfig) -> None:
        label_set = self._engine.engine.label_set
        if LabelInfo is not None:
            msg = LabelInfo(class_map=[VisionClass(class_id=i, class_name=name)
                                       for i, name in enumerate(label_set.class_names)])
            msg.header.stamp = self.get_clock().now().to_msg()
        else:
            msg = String(data=json.dumps(config.label_info_fields(self._engine.engine.weights_id)))
        self._label_info_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        engine = self._engine.config.diagnostic_fields()
        status = diagnostic_status(diagnostic_name(self.get_fully_qualified_name()), self._stats.report(), engine,
                                   self._engine.state, self._engine.last_error)
        header = Header(stamp=self.get_clock().now().to_msg())
        self._diagnostics_pub.publish(DiagnosticArray(header=header, status=[status]))


def _engine_error_message(config: SegmenterConfig, error: Exception) -> str:
    if config.weights:
        return (f"cannot load weights {config.weights!r} into {config.model} ({config.label_set}): {error}. "
                f"Point 'weights' at a checkpoint for this model and label set, or set it to '' for random weights")
    return f"cannot build the {config.model} engine ({config.backend}, {config.precision}, {config.device}): {error}"


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM (console script ``segmentation_node``; takes ``--ros-args``)."""
    # rclpy's own handlers would invalidate the context at once, under a frame still being
    # published; as KeyboardInterrupt the signals stop the worker first, then ROS.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (shell `&`)
        signal.signal(signum, signal.default_int_handler)
    try:
        node = SegmentationNode()
    except StartupError as exc:
        get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # stopped while the engine was being built
        rclpy.try_shutdown()
        return 0
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
