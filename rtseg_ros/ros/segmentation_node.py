"""The ROS 2 segmentation node: camera frames in, labels, confidence and an overlay out.

Topics (relative names, so a namespace or remap moves them):

* in  ``image`` (sensor_msgs/Image, or sensor_msgs/CompressedImage with ``input_transport:=compressed``),
  ``camera_info`` (sensor_msgs/CameraInfo, optional)
* out ``segmentation/labels`` (mono8 class ids), ``segmentation/confidence`` (32FC1 or mono8),
  ``segmentation/overlay`` (rgb8), ``segmentation/camera_info`` (scaled to the label image),
  ``segmentation/label_info`` (vision_msgs/LabelInfo, transient local), ``segmentation/label_info_meta``
  (std_msgs/String, transient local), and ``/diagnostics`` once a second.

Every output carries the input frame's header. The node only wires: decoding is
``rtseg_ros.io.images``, inference the ``Segmenter``, threading ``engines.serving``, the overlay ``io.overlay``.

Topic names, types and QoS are :class:`rtseg_ros.names.Topics`; parameters are
:data:`rtseg_ros.names.PARAMETERS`.

``label_info`` is always ``vision_msgs/LabelInfo`` (class ids and names, ``threshold`` 0); without
vision_msgs the node does not start (exit code 2). What LabelInfo has no field for goes in the
latched companion ``label_info_meta``, a ``std_msgs/String`` holding JSON
(:meth:`SegmenterConfig.label_info_fields`), re-published with label_info after every engine swap::

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
import os
import signal
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from rtseg_ros.engines import Segmenter, SegmenterConfig, set_cpu_threads
from rtseg_ros.engines.serving import EngineSwapper, LatestFrameWorker
from rtseg_ros.engines.variant_build import build_in_child
from rtseg_ros.io.images import ImageDecodeError
from rtseg_ros.io.overlay import overlay_labels
from rtseg_ros.names import LABEL_INFO_FORMAT, NODE_NAME, Topics
from rtseg_ros.ros import rcl_direct
from rtseg_ros.ros.diagnostics import FrameStatistics, device_name, diagnostic_status
from rtseg_ros.ros.frame_path import (
    CameraInfoHistory,
    DecodedFrame,
    FrameDecoder,
    OutputEncoder,
    ScaledCameraInfos,
    header_message,
    scale_camera_info,
)
from rtseg_ros.ros.interfaces import (
    LABEL_INFO_QOS,
    VisionMsgsMissing,
    diagnostic_name,
    label_info_message,
    message_type,
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


class SegmentationNode(Node):
    """Semantic segmentation of a camera stream with a latest-frame policy.

    Raises:
        StartupError: invalid parameters (of the wrong type too), weights that are missing or do not fit
            the model, or vision_msgs missing.
    """

    def __init__(self, **node_options: Any) -> None:
        super().__init__(NODE_NAME, **node_options)
        try:
            label_info_type = message_type(Topics.LABEL_INFO)
        except VisionMsgsMissing as exc:
            raise StartupError(str(exc)) from None
        try:
            declare_parameters(self)
            values = read_parameters(self)
            config = validate_parameters(values)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None
        self._image_timeout_s = float(values["image_timeout"])
        self._hardware_id = device_name(config.device)
        self._confidence_encoding: str = values["confidence_encoding"]
        self._publish_overlay: bool = values["publish_overlay"]
        self._overlay_alpha: float = float(values["overlay_alpha"])
        self._camera_infos = CameraInfoHistory()
        self._scaled_camera_info = ScaledCameraInfos()
        # (frame size, with confidence) of every frame kind served or announced; each new engine builds them all.
        camera_size = (int(values["camera_height"]), int(values["camera_width"]))
        first_size = camera_size if all(camera_size) else (config.input_height, config.input_width)
        # With the camera's size known, its labels+confidence engine too (built after the labels one).
        self._variants: frozenset[tuple[tuple[int, int], bool]] = frozenset(
            {(first_size, False)} | ({(camera_size, True)} if all(camera_size) else set()))
        self._failed_variants: set[tuple[tuple[int, int], bool]] = set()
        self._last_requested: tuple[tuple[int, int], bool] = (first_size, False)
        self._fallbacks_logged: set[tuple[tuple[int, int], bool]] = set()
        self._stats = FrameStatistics()

        depth = values["qos_depth"]
        # The camera subscriptions take reliability and depth from the parameters, the outputs the depth.
        camera_qos = qos_profile(dataclasses.replace(Topics.IMAGE.qos, reliability=values["qos_reliability"]), depth)
        self._direct_io = bool(values["direct_io"])
        if self._direct_io:
            try:
                rcl_direct.check_available()
            except rcl_direct.DirectIoUnavailable as exc:
                self.get_logger().warning(f"direct_io: {exc}; taking and publishing frames through rclpy instead")
                self._direct_io = False
        self._outputs = OutputEncoder(reuse_buffers=self._direct_io)
        self._labels_pub = self._image_publisher(Topics.LABELS.name, qos_profile(Topics.LABELS.qos, depth))
        self._confidence_pub = self._image_publisher(
            Topics.CONFIDENCE.name, qos_profile(Topics.CONFIDENCE.qos, depth))
        self._overlay_pub = self._image_publisher(Topics.OVERLAY.name, qos_profile(Topics.OVERLAY.qos, depth))
        self._camera_info_pub = self.create_publisher(
            CameraInfo, Topics.OUTPUT_CAMERA_INFO.name, qos_profile(Topics.OUTPUT_CAMERA_INFO.qos, depth))
        self._label_info_pub = self.create_publisher(label_info_type, Topics.LABEL_INFO.name, LABEL_INFO_QOS)
        self._label_info_meta_pub = self.create_publisher(
            message_type(Topics.LABEL_INFO_META), Topics.LABEL_INFO_META.name, qos_profile(Topics.LABEL_INFO_META.qos))
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, Topics.DIAGNOSTICS.name, qos_profile(Topics.DIAGNOSTICS.qos))
        self._timings_pub = self.create_publisher(String, Topics.TIMINGS.name, qos_profile(Topics.TIMINGS.qos))

        # Before the first engine: every backend takes its thread count from torch's.
        self._cpu_threads = set_cpu_threads(int(values["cpu_threads"]))
        if config.weights is None:
            self.get_logger().warning(
                "no 'weights' set: running with UNTRAINED random weights, the labels are meaningless")
        # The settings and the weights are checked here (a bad one stops the start-up); the engines are
        # built in the background, while the node answers parameters and reports on /diagnostics.
        self._started_at = time.monotonic()
        self._ready_lock = threading.Lock()
        self._ready_after_s: float | None = None  # set once the first engine serves
        self.fatal_error = ""
        try:
            segmenter = Segmenter(config)
        except (ValueError, OSError) as exc:
            raise StartupError(_engine_error_message(config, exc)) from None
        self._engine: EngineSwapper[SegmenterConfig, Segmenter] = EngineSwapper(
            self._build_segmenter, config, on_swap=self._on_engine_swapped, on_failure=self._on_engine_failed,
            initial=segmenter)
        transport = values["input_transport"]
        self._decode = FrameDecoder(transport)
        # camera_info keeps a few messages even at depth 1: each frame looks its own up by stamp.
        info_qos = qos_profile(dataclasses.replace(Topics.CAMERA_INFO.qos, reliability=values["qos_reliability"]),
                               max(depth, Topics.CAMERA_INFO.qos.depth))
        self.create_subscription(CameraInfo, Topics.CAMERA_INFO.name, self._on_camera_info, info_qos)
        # One callback that checks and then applies: Humble's rclpy has no post-set callback, and this
        # callback is the only one, so a change it accepts is the change rclpy makes.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._publish_diagnostics)
        # label_info (latched) tells clients the node serves: now, or once the first engine is built.
        self._request_variant(first_size, False)
        if segmenter.is_prepared(segmenter.output_size(first_size), False):
            self._announce_ready()
        # Last: frames may be handled as soon as this exists.
        self._frames = self._subscribe_camera(CompressedImage if transport == "compressed" else Image, camera_qos,
                                              depth)
        self.get_logger().info(
            f"serving {config.model} ({self._served_backend(config)}, {config.precision}, {config.device}) at "
            f"{config.input_height}x{config.input_width} (HxW) on {self._cpu_threads} CPU thread(s); "
            f"subscribed to {self.resolve_topic_name(Topics.IMAGE.name)} "
            f"({'rcl serialised take and publish' if self._direct_io else 'rclpy executor'})")

    def destroy_node(self) -> None:
        self._frames.stop()
        super().destroy_node()

    # Data path -----------------------------------------------------------------------------

    def _image_publisher(self, topic: str, qos: Any) -> Any:
        """An image output's publisher: one that publishes the encoder's buffers in place with direct_io."""
        publisher = self.create_publisher(Image, topic, qos)
        return rcl_direct.SerializedPublisher(publisher) if self._direct_io else publisher

    def _subscribe_camera(self, image_type: type, qos: Any, depth: int) -> rcl_direct.FrameTaker | LatestFrameWorker:
        """Start taking camera frames (serialised; frame_path reads them in place) and handing them to the network.

        Either way ``qos_depth`` frames may wait for the network (1: only the newest, no backlog of
        stale frames): in the subscription's own history with direct_io, else in the worker's queue.
        """
        if self._direct_io:
            subscription = rcl_direct.SerializedSubscription(self, image_type, Topics.IMAGE.name, qos)
            return rcl_direct.FrameTaker(subscription, self._on_taken_frame,
                                         lambda: self.get_clock().now().nanoseconds, name="frame-taker")
        self._worker: LatestFrameWorker[tuple[bytes | memoryview, int]] = LatestFrameWorker(
            self._process_frame, depth=depth)
        self.create_subscription(image_type, Topics.IMAGE.name, self._on_image, qos, raw=True)
        return self._worker

    # Engine --------------------------------------------------------------------------------

    def _build_segmenter(self, config: SegmenterConfig) -> Segmenter:
        segmenter = Segmenter(config)
        # Every kind of frame served so far (or announced), so that a new engine never builds in the frame path.
        for frame_size, with_confidence in sorted(self._variants):
            segmenter.warmup(frame_size, with_confidence)
        return segmenter

    def _request_variant(self, frame_size: tuple[int, int], with_confidence: bool) -> None:
        """Have the engine in service build what ``frame_size`` frames need, in the background, unless ready."""
        key = ((int(frame_size[0]), int(frame_size[1])), bool(with_confidence))
        if key not in self._variants:
            self._variants = self._variants | {key}  # a new set: the builders iterate over the old one
        self._last_requested = key
        segmenter = self._engine.engine
        if key in self._failed_variants or segmenter.is_prepared(segmenter.output_size(key[0]), key[1]):
            return
        self._engine.run_in_background(id(segmenter), lambda: self._prepare_variants(segmenter),
                                       what="engine variants")

    def _prepare_variants(self, segmenter: Segmenter) -> None:
        """Build every wanted variant ``segmenter`` lacks, one at a time (runs on a background thread)."""
        while True:
            missing = [(size, confidence) for size, confidence in sorted(self._variants)
                       if (size, confidence) not in self._failed_variants
                       and not segmenter.is_prepared(segmenter.output_size(size), confidence)]
            if not missing:
                return
            # What the latest frame needs first; then the others in order.
            frame_size, with_confidence = self._last_requested if self._last_requested in missing else missing[0]
            output_size = segmenter.output_size(frame_size)
            what = f"the {'labels+confidence' if with_confidence else 'labels'} engine for {output_size[0]}x" \
                   f"{output_size[1]} labels"
            self.get_logger().info(f"building {what} in the background; the ready engines keep serving")
            start = time.monotonic()
            try:
                if segmenter.engine.builds_per_variant:
                    # The build in a child process, into the cache; loading it here is quick (variant_build).
                    try:
                        build_in_child(segmenter.config, output_size, with_confidence)
                    except Exception as exc:  # noqa: BLE001 - fall back to building here
                        self.get_logger().warning(f"building {what} in a child process failed ({exc}); "
                                                  f"building it in this process")
                segmenter.prepare(output_size, with_confidence)
            except Exception as exc:  # noqa: BLE001 - the engines already built keep serving
                self._failed_variants.add((frame_size, with_confidence))
                if self._ready_after_s is None and not segmenter.prepared:
                    self._fail_start(f"building {what} failed: {exc}")
                    return
                self.get_logger().error(f"building {what} failed: {exc}; serving from the engines already built")
                continue
            self.get_logger().info(f"{what} ready after {time.monotonic() - start:.1f} s")
            if segmenter is self._engine.engine:
                self._announce_ready()

    def _announce_ready(self) -> bool:
        """The first engine serves: say so (log and the latched label_info), once; returns whether it did now."""
        with self._ready_lock:
            if self._ready_after_s is not None:
                return False
            self._ready_after_s = time.monotonic() - self._started_at
        self.get_logger().info(f"ready to serve {self.resolve_topic_name(Topics.IMAGE.name)}, "
                               f"{self._ready_after_s:.1f} s after start-up")
        self._publish_label_info()
        return True

    def _fail_start(self, message: str) -> None:
        """No engine could be built at start-up: log it and end the node (``main`` exits with 2)."""
        self.fatal_error = message
        self.get_logger().fatal(f"{message}; nothing to serve, stopping")
        self.context.try_shutdown()

    def _served_backend(self, config: SegmenterConfig) -> str:
        """The backend of the engine in service, and ``config``'s if that was 'auto' (``openvino, from auto``)."""
        served = self._engine.engine.config.backend  # the Segmenter's config has 'auto' resolved
        return served if served == config.backend else f"{served}, from {config.backend}"

    def _on_engine_swapped(self, config: SegmenterConfig) -> None:
        self.get_logger().info(
            f"now serving {config.model} ({self._served_backend(config)}, {config.precision}) at "
            f"{config.input_height}x{config.input_width}, scales {list(config.scales)}")
        self._hardware_id = device_name(config.device)
        if not self._announce_ready():  # the new engine's label set and settings
            self._publish_label_info()

    def _on_engine_failed(self, config: SegmenterConfig, error: Exception) -> None:
        self.get_logger().error(f"{_engine_error_message(config, error)}; still serving the previous engine")
        # Put the parameters back to what is serving, so reading them tells the truth.
        serving = self._engine.config
        reverted = {name: value for name, value in serving.to_parameters().items()
                    if self.get_parameter(name).value != value}
        self.set_parameters([Parameter(name, value=value) for name, value in reverted.items()])

    # Parameters ----------------------------------------------------------------------------

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Check a change against the whole set of values; if it fits, apply it (rclpy stores it next)."""
        values = read_parameters(self)
        values.update({parameter.name: parameter.value for parameter in parameters})
        try:
            config = validate_parameters(values)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._confidence_encoding = values["confidence_encoding"]
        self._publish_overlay = values["publish_overlay"]
        self._overlay_alpha = float(values["overlay_alpha"])
        self._image_timeout_s = float(values["image_timeout"])
        if any(parameter.name in ENGINE_PARAMETERS for parameter in parameters):
            self._rebuild_after_set(config)
        return SetParametersResult(successful=True)

    def _rebuild_after_set(self, config: SegmenterConfig) -> None:
        """Start the rebuild once rclpy has stored the accepted values (a one-shot timer runs after this
        callback): a build that fails at once then finds the new values to set back."""
        timer: list[Any] = []

        def start() -> None:
            timer[0].cancel()
            self.destroy_timer(timer[0])
            if self._engine.rebuild(config):
                self.get_logger().info("building a new engine in the background; the current one keeps serving")

        timer.append(self.create_timer(0.0, start))

    # Frames --------------------------------------------------------------------------------

    def _on_image(self, data: bytes) -> None:
        received_ns = self.get_clock().now().nanoseconds
        self._stats.frame_received(displaced_pending=self._worker.submit((data, received_ns)))

    def _on_taken_frame(self, data: memoryview, received_ns: int, missed: int) -> None:
        """A frame taken with direct_io (on the taking thread; ``data`` is valid during this call only)."""
        self._stats.frame_received(displaced_pending=False, missed=missed)
        self._process_frame((data, received_ns))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_infos.add(msg)
        # The frame size it announces (REP 104: the ROI, or the whole sensor, read out with binning):
        # build its engine now, before such frames arrive.
        width = msg.roi.width if msg.roi.width and msg.roi.height else msg.width
        height = msg.roi.height if msg.roi.width and msg.roi.height else msg.height
        frame_size = (height // max(msg.binning_y, 1), width // max(msg.binning_x, 1))
        if all(frame_size) and (frame_size, False) not in self._variants:
            self._request_variant(frame_size, False)

    def _process_frame(self, item: tuple[bytes | memoryview, int]) -> None:
        """Decode, segment and publish one frame (on the worker or frame-taking thread)."""
        data, received_ns = item
        started_ns = self.get_clock().now().nanoseconds
        try:
            frame = self._decode(data)
        except ImageDecodeError as exc:
            self._stats.frame_bad()
            self.get_logger().warning(f"skipping bad frame: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        decoded_ns = self.get_clock().now().nanoseconds
        segmenter = self._engine.engine
        want_confidence = self._confidence_pub.get_subscription_count() > 0
        frame_size = tuple(frame.pixels.shape[:2])
        output_size = segmenter.output_size(frame_size)
        variant = self._ready_variant(segmenter, frame_size, output_size, want_confidence)
        if variant is None:
            self._stats.frame_dropped()
            self.get_logger().info("dropping frames until the first engine is built",
                                   throttle_duration_sec=LOG_THROTTLE_S)
            return
        run_size, run_confidence = variant
        try:
            result = segmenter.segment(frame.pixels, color_order=frame.color_order, want_confidence=run_confidence,
                                       output_size=run_size)
        except Exception as exc:  # noqa: BLE001 - one failing frame must not stop the stream
            self._stats.frame_failed()
            self.get_logger().error(f"inference failed: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        segmented_ns = self.get_clock().now().nanoseconds
        labels = result.labels
        confidence = result.confidence if want_confidence else None
        if run_size != output_size:  # served by another size's engine while this size's builds
            size = (output_size[1], output_size[0])
            labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            if confidence is not None:
                confidence = cv2.resize(confidence, size, interpolation=cv2.INTER_LINEAR)
        self._publish_outputs(frame, labels, confidence, segmenter)
        published_ns = self.get_clock().now().nanoseconds
        self._stats.frame_published((published_ns - frame.header.stamp_ns) * 1e-9)
        if self._timings_pub.get_subscription_count() > 0:
            self._timings_pub.publish(String(data=json.dumps({
                "stamp_ns": frame.header.stamp_ns, "received_ns": received_ns, "started_ns": started_ns,
                "decoded_ns": decoded_ns, "segmented_ns": segmented_ns, "published_ns": published_ns,
                "segmenter_ms": {key: round(value, 3) for key, value in result.timings_ms.items()},
                "frame_size": list(frame_size), "served_size": list(run_size), "served_confidence": run_confidence})))

    def _ready_variant(self, segmenter: Segmenter, frame_size: tuple[int, int], output_size: tuple[int, int],
                       want_confidence: bool) -> tuple[tuple[int, int], bool] | None:
        """The (output size, confidence) to run a frame with: what it needs if that is built, else the
        closest variant that is (and what it needs gets built in the background); ``None`` while none is
        (at start-up: the frame is dropped, never served by a build inside it)."""
        if segmenter.is_prepared(output_size, want_confidence):
            return output_size, want_confidence
        self._request_variant(frame_size, want_confidence)
        prepared = segmenter.prepared
        if not prepared:
            return None
        area = output_size[0] * output_size[1]
        size, confidence = min(prepared, key=lambda variant: (
            variant[1] != want_confidence, variant[0] != output_size, abs(variant[0][0] * variant[0][1] - area)))
        if (output_size, want_confidence) not in self._fallbacks_logged:
            self._fallbacks_logged.add((output_size, want_confidence))
            needs = "labels+confidence" if want_confidence else "labels"
            self.get_logger().info(
                f"{needs} at {output_size[0]}x{output_size[1]}: served from the {size[0]}x{size[1]} "
                f"{'labels+confidence' if confidence else 'labels'} engine"
                f"{', resized' if size != output_size else ''}{'' if confidence or not want_confidence else ', no confidence'}"
                f" until its own engine is built")
        return size, confidence

    def _publish_outputs(self, frame: DecodedFrame, labels: np.ndarray, confidence: np.ndarray | None,
                         segmenter: Segmenter) -> None:
        """Labels, confidence, overlay (if subscribed) and camera_info (if one matches), with the frame's header."""
        header = frame.header
        self._labels_pub.publish(self._outputs.labels(header, labels))
        if confidence is not None:
            self._confidence_pub.publish(self._outputs.confidence(header, confidence, self._confidence_encoding))
        if self._publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            overlay = overlay_labels(frame.pixels, frame.color_order, labels, segmenter.label_set, self._overlay_alpha)
            self._overlay_pub.publish(self._outputs.overlay(header, overlay))
        camera_info = self._camera_infos.match(header.stamp_ns)
        if camera_info is not None:
            height, width = labels.shape
            self._camera_info_pub.publish(
                self._scaled_camera_info.get(camera_info, width, height, header_message(header)))

    # Status --------------------------------------------------------------------------------

    def _publish_label_info(self) -> None:
        """label_info (LabelInfo) and its companion label_info_meta (JSON) for the engine in service."""
        engine = self._engine.engine
        msg = label_info_message(engine.label_set.class_names)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._label_info_pub.publish(msg)
        # The served engine's config: backend 'auto' appears as the backend it resolved to.
        self._label_info_meta_pub.publish(String(data=json.dumps(
            engine.config.label_info_fields(engine.weights_id, engine.label_set))))

    def _publish_diagnostics(self) -> None:
        engine = self._engine.engine.config.diagnostic_fields()  # the backend 'auto' resolved to
        status = diagnostic_status(diagnostic_name(self.get_fully_qualified_name()), self._stats.report(), engine,
                                   self._engine.state, self._engine.last_error,
                                   image_timeout_s=self._image_timeout_s, hardware_id=self._hardware_id)
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
    # Made before the node: a start-up build that fails in the background shuts the context down, and
    # an executor made after that could not be (spinning this one just ends).
    executor = SingleThreadedExecutor()
    try:
        node = SegmentationNode()
    except StartupError as exc:
        get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # stopped while the engine was being built
        rclpy.try_shutdown()
        return _exit_code(0)
    try:
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return _exit_code(2 if node.fatal_error else 0)


def _exit_code(code: int) -> int:
    """``code``, for the process to exit with; ends the process at once while an engine build still runs.

    A background build (a daemon thread inside a native compiler such as OpenVINO's) torn down by the
    interpreter's finalisation aborts the process ("terminate called without an active exception",
    exit -6), so a clean Ctrl-C during a rebuild would look like a crash to ``ros2 launch`` and its
    supervisor. Everything is published and ROS is shut down by now; the unfinished build is dropped.
    """
    if any(thread.daemon and thread.is_alive() for thread in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
