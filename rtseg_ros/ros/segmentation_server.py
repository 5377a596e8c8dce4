"""The segmentation node's work, the same whether the node is a plain or a managed (lifecycle) one.

:class:`SegmentationServer` is handed the node and wires it: the parameters (declared at once, so
``ros2 param`` works in every state), then in :meth:`~SegmentationServer.configure` the engine and the
cameras' topics, in :meth:`~SegmentationServer.activate` the taking of frames. ``SegmentationNode``
runs configure and activate in its constructor; ``ManagedSegmentationNode`` runs them from its
lifecycle transitions. One implementation, two ways in.

Frames flow one of two ways:

* one camera (``cameras`` empty): a frame is handled on the thread that took it (``direct_io``) or on a
  latest-frame worker (rclpy), with the engine variant built for its size (``Segmenter.segment``);
* several cameras: each camera's frames are decoded on its own taking thread and wait, the newest per
  camera, in a :class:`~rtseg_ros.engines.serving.BatchScheduler`; its thread runs what waits as one batch
  (``Segmenter.segment_batch``) and publishes each frame on its own camera's topics.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from rtseg_ros.engines import Segmenter, SegmenterConfig, set_cpu_threads
from rtseg_ros.engines.segmenter import BatchFrame, SegmentationResult
from rtseg_ros.engines.serving import BatchScheduler, EngineSwapper, LatestFrameWorker
from rtseg_ros.engines.variant_build import build_batch_in_child, build_in_child
from rtseg_ros.io.images import ImageDecodeError
from rtseg_ros.names import Topics
from rtseg_ros.ros import rcl_direct
from rtseg_ros.ros.camera_stream import CameraStream, OutputSettings
from rtseg_ros.ros.diagnostics import device_name, diagnostic_status
from rtseg_ros.ros.frame_path import DecodedFrame
from rtseg_ros.ros.interfaces import VisionMsgsMissing, diagnostic_name, label_info_message, message_type, qos_profile
from rtseg_ros.ros.parameters import (
    ENGINE_PARAMETERS,
    ParameterError,
    declare_parameters,
    read_parameters,
    validate_parameters,
)

__all__ = ["SegmentationServer", "StartupError"]

# Bad-frame and inference-error logs repeat at most this often.
LOG_THROTTLE_S = 5.0
# What served a frame, in segmentation/timings: the backend's engine, or eager PyTorch while it builds.
SERVED_BY_EAGER = "eager"

Variant = tuple[tuple[int, int], bool]  # (frame or output size, with confidence)


class StartupError(RuntimeError):
    """The node cannot start (or be configured) with its parameters; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class _WaitingFrame:
    """A decoded frame of one camera waiting for a batch (its pixels owned, not a view of a reused buffer)."""

    frame: DecodedFrame
    received_ns: int
    started_ns: int
    decoded_ns: int


class SegmentationServer:
    """Parameters, one engine and one or more cameras, on ``node``.

    Args:
        node: the plain or managed node to wire.
        wait_for_engines: build the first engines inside :meth:`configure` (a managed node: configure
            means ready to serve) instead of in the background while the node already answers.

    Raises:
        StartupError: vision_msgs missing, or a parameter value of the wrong type given at start-up.
    """

    def __init__(self, node: Node, *, wait_for_engines: bool = False) -> None:
        self.node = node
        self._wait_for_engines = wait_for_engines
        try:
            message_type(Topics.LABEL_INFO)
        except VisionMsgsMissing as exc:
            raise StartupError(str(exc)) from None
        try:
            declare_parameters(node)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None
        # One callback that checks and then applies: Humble's rclpy has no post-set callback, and this
        # callback is the only one, so a change it accepts is the change rclpy makes.
        node.add_on_set_parameters_callback(self._on_set_parameters)
        self.fatal_error = ""
        self._active = False
        self._engine: EngineSwapper[SegmenterConfig, Segmenter] | None = None
        self._streams: list[CameraStream] = []
        self._scheduler: BatchScheduler[CameraStream, _WaitingFrame] | None = None
        self._worker: LatestFrameWorker[tuple[CameraStream, bytes | memoryview, int]] | None = None
        self._diagnostics_timer: Any = None
        self._diagnostics_pub: Any = None

    @property
    def configured(self) -> bool:
        return self._engine is not None

    @property
    def active(self) -> bool:
        return self._active

    @property
    def logger(self) -> Any:
        return self.node.get_logger()

    # Lifecycle -----------------------------------------------------------------------------

    def configure(self) -> None:
        """Validate the parameters, load the weights, build (or start building) the engine, create the topics.

        Raises:
            StartupError: invalid settings, weights that are missing or do not fit, or (with
                ``wait_for_engines``) no engine could be built; nothing is left half made.
        """
        if self.configured:
            return
        values = read_parameters(self.node)
        try:
            config = self._engine_config(validate_parameters(values), values)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None
        self.fatal_error = ""
        self._apply_node_settings(values)
        self._cameras: tuple[str, ...] = tuple(values["cameras"])
        strangers = sorted(set(values["compressed_cameras"]) - set(self._cameras))
        if strangers:
            raise StartupError(f"compressed_cameras {strangers} are not among cameras {list(self._cameras)}")
        camera_size = (int(values["camera_height"]), int(values["camera_width"]))
        first_size = camera_size if all(camera_size) else (config.input_height, config.input_width)
        # (frame size, with confidence) of every frame kind served or announced; each new engine builds them
        # all. With the camera's size known, its labels+confidence engine too (built after the labels one).
        self._variants: frozenset[Variant] = frozenset(
            {(first_size, False)} | ({(camera_size, True)} if all(camera_size) else set()))
        self._failed_variants: set[Variant] = set()
        self._last_requested: Variant = (first_size, False)
        self._fallbacks_logged: set[Variant] = set()
        self._served_by_logged: set[str] = set()
        # Several cameras: the (output size, with confidence) finishes the batches need.
        self._batch_variants: frozenset[Variant] = frozenset()

        self._direct_io = bool(values["direct_io"])
        if self._direct_io:
            try:
                rcl_direct.check_available()
            except rcl_direct.DirectIoUnavailable as exc:
                self.logger.warning(f"direct_io: {exc}; taking and publishing frames through rclpy instead")
                self._direct_io = False
        # Before the first engine: every backend takes its thread count from torch's.
        self._cpu_threads = set_cpu_threads(int(values["cpu_threads"]))
        if config.weights is None:
            self.logger.warning(
                "no 'weights' set: running with UNTRAINED random weights, the labels are meaningless. For real use "
                "set weights to a checkpoint (a path, a file in models/, or a models/manifest.yaml name such as "
                "mfaranet_cityscapes_train with model:=mfaranet, fetched first: docs/ros.md, Weights; synthetic_toy "
                "for the demo scenes) and the input size and backend for your camera and machine (`rtseg params`)")
        self._started_at = time.monotonic()
        self._ready_lock = threading.Lock()
        self._ready_after_s: float | None = None  # set once the first engine serves
        try:
            segmenter = Segmenter(config)
        except (ValueError, OSError) as exc:
            raise StartupError(_engine_error_message(config, exc)) from None
        self._hardware_id = device_name(segmenter.config.device)  # device 'auto' resolved
        self._engine = EngineSwapper(self._build_segmenter, config, on_swap=self._on_engine_swapped,
                                     on_failure=self._on_engine_failed, initial=segmenter)
        self._create_streams(values)
        self._diagnostics_pub = self.node.create_publisher(
            DiagnosticArray, Topics.DIAGNOSTICS.name, qos_profile(Topics.DIAGNOSTICS.qos))
        self._diagnostics_timer = self.node.create_timer(1.0, self._publish_diagnostics)
        # The first engines, in the background.
        if self._cameras:  # with the cameras' frame size known, the finish for it too
            self._request_batch_variants(
                segmenter, [segmenter.output_size(camera_size)] if all(camera_size) else [], False)
        else:
            self._request_variant(first_size, False)
        if self._wait_for_engines:
            self._engine.wait_idle()
            if self.fatal_error:
                message = self.fatal_error
                self.cleanup()
                raise StartupError(message)
        # Ready: eager PyTorch serves until the backend's engine is built, so label_info (latched) tells
        # clients at once that frames will be served.
        self._announce_ready()
        cameras = ", ".join(stream.image_topic for stream in self._streams)
        self.logger.info(
            f"serving {config.model} ({self._served_backend(config)}, {config.precision}, "
            f"{self._served_device(config)}) at "
            f"{config.input_height}x{config.input_width} (HxW) on {self._cpu_threads} CPU thread(s); subscribed to {cameras}"
            f"{f', batches of up to {len(self._cameras)}' if self._cameras else ''} "
            f"({'rcl serialised take and publish' if self._direct_io else 'rclpy executor'})")

    def activate(self) -> None:
        """Start taking frames and publishing (label_info too, once an engine serves)."""
        if not self.configured or self._active or self.fatal_error:  # a failed start-up build ends the node
            return
        self._active = True
        for stream in self._streams:
            stream.start()
        if self._ready_after_s is not None:
            self._publish_label_info()
        self.logger.info("active: taking frames")

    def deactivate(self, log: bool = True) -> None:
        """Stop taking frames (the cameras' messages are not taken; no CPU spent on them); keep the engines."""
        if not self._active:
            return
        self._active = False
        for stream in self._streams:
            stream.stop()
            if self._scheduler is not None:
                self._scheduler.discard(stream)
        if log:
            self.logger.info("inactive: no frames taken, engines kept")

    def cleanup(self) -> None:
        """Free the engines, the weights and the topics (back to what the parameters alone need)."""
        self.deactivate(log=False)
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        for stream in self._streams:
            stream.destroy()
        self._streams = []
        if self._diagnostics_timer is not None:
            self.node.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._diagnostics_pub is not None:
            self.node.destroy_publisher(self._diagnostics_pub)
            self._diagnostics_pub = None
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.wait_idle(timeout=60.0)
            del engine
        gc.collect()
        _return_freed_memory()

    def shutdown(self) -> None:
        """From any state: stop and free everything."""
        self.cleanup()

    # Set-up --------------------------------------------------------------------------------

    def _engine_config(self, config: SegmenterConfig, values: dict[str, Any]) -> SegmenterConfig:
        """The parameters' config, with what the node decides itself: batches as large as its cameras."""
        cameras = len(values["cameras"])
        return dataclasses.replace(config, max_batch=cameras) if cameras > 1 else config

    def _apply_node_settings(self, values: dict[str, Any]) -> None:
        """The node-only settings that may change while running."""
        self._outputs = OutputSettings(values["confidence_encoding"], bool(values["publish_overlay"]),
                                       float(values["overlay_alpha"]))
        self._image_timeout_s = float(values["image_timeout"])
        if self._scheduler is not None:
            self._scheduler.batch_wait_s = float(values["batch_wait_ms"]) / 1e3

    def _create_streams(self, values: dict[str, Any]) -> None:
        depth = int(values["qos_depth"])
        # The camera subscriptions take reliability and depth from the parameters, the outputs the depth;
        # camera_info keeps a few messages even at depth 1: each frame looks its own up by stamp.
        camera_qos = qos_profile(dataclasses.replace(Topics.IMAGE.qos, reliability=values["qos_reliability"]), depth)
        info_qos = qos_profile(dataclasses.replace(Topics.CAMERA_INFO.qos, reliability=values["qos_reliability"]),
                               max(depth, Topics.CAMERA_INFO.qos.depth))
        if self._cameras:
            handler = self._on_frame_for_batch
            self._scheduler = BatchScheduler(self._serve_batch, max_batch=len(self._cameras),
                                             batch_wait_s=float(values["batch_wait_ms"]) / 1e3)
        elif self._direct_io:
            handler = self._on_frame_direct
        else:
            handler = self._on_frame_rclpy
            self._worker = LatestFrameWorker(lambda item: self._serve_one(*item), depth=depth)
        self._streams = [
            CameraStream(self.node, camera, camera_qos=camera_qos,
                         transport="compressed" if camera in values["compressed_cameras"] else values["input_transport"],
                         info_qos=info_qos, output_depth=depth, direct_io=self._direct_io, on_frame=handler,
                         on_camera_info=self._on_camera_info)
            for camera in (self._cameras or ("",))]

    # Engine --------------------------------------------------------------------------------

    def _build_segmenter(self, config: SegmenterConfig) -> Segmenter:
        segmenter = Segmenter(config)
        if self._cameras:
            segmenter.prepare_batch()
            for with_confidence in (False, True):
                sizes = [size for size, confidence in sorted(self._batch_variants) if confidence == with_confidence]
                if sizes:
                    segmenter.prepare_batch(sizes, with_confidence)
        else:
            # Every kind of frame served so far (or announced), so that a new engine never builds in the frame path.
            for frame_size, with_confidence in sorted(self._variants):
                segmenter.warmup(frame_size, with_confidence)
        return segmenter

    def _request_batch_variants(self, segmenter: Segmenter, output_sizes: list[tuple[int, int]],
                                with_confidence: bool) -> None:
        """Have ``segmenter`` build, in the background, the batched network and the per-frame finish for
        ``output_sizes`` (eager PyTorch serves the frames that need them meanwhile)."""
        wanted = {(tuple(size), with_confidence) for size in output_sizes}
        if not wanted <= self._batch_variants:
            self._batch_variants = self._batch_variants | wanted  # a new set: the builder iterates the old one
        if self._engine is not None:
            self._engine.run_in_background(("batch", id(segmenter)), lambda: self._prepare_batches(segmenter),
                                           what="batched engine")

    def _prepare_batches(self, segmenter: Segmenter) -> None:
        """Build what batches of the cameras need, until nothing wanted is missing (a background thread)."""
        while True:
            missing = sorted(variant for variant in self._batch_variants
                             if not segmenter.is_batch_prepared([variant[0]], variant[1]))
            if segmenter.batch_prepared and not missing:
                if self._engine is not None and segmenter is self._engine.engine:
                    self._announce_ready()  # eager backends need no build: ready at once
                return
            start = time.monotonic()
            with_confidence = bool(missing) and missing[0][1]
            sizes = [size for size, confidence in missing if confidence == with_confidence]
            try:
                self._build(segmenter, "the batched engine",
                            lambda: build_batch_in_child(segmenter.config, sizes, with_confidence),
                            lambda: segmenter.prepare_batch(sizes, with_confidence))
            except Exception as exc:  # noqa: BLE001 - eager PyTorch keeps serving; reported
                if not segmenter.batch_prepared:
                    self._fail_start(f"building the batched engine failed: {exc}")
                else:
                    self.logger.error(f"building the batch finish for {sizes} failed: {exc}")
                    self._batch_variants = self._batch_variants - set(missing)
                return
            self.logger.info(f"batched engine for up to {segmenter.max_batch} frames"
                             f"{f', labels at {sizes}' if sizes else ''} ready after {time.monotonic() - start:.1f} s")
            if self._engine is not None and segmenter is self._engine.engine:
                self._announce_ready()

    def _request_variant(self, frame_size: tuple[int, int], with_confidence: bool) -> None:
        """Have the engine in service build what ``frame_size`` frames need, in the background, unless ready."""
        engine = self._engine
        if engine is None:
            return
        key = ((int(frame_size[0]), int(frame_size[1])), bool(with_confidence))
        if key not in self._variants:
            self._variants = self._variants | {key}  # a new set: the builders iterate over the old one
        self._last_requested = key
        segmenter = engine.engine
        if key in self._failed_variants or segmenter.is_prepared(segmenter.output_size(key[0]), key[1]):
            return
        engine.run_in_background(id(segmenter), lambda: self._prepare_variants(segmenter), what="engine variants")

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
            self.logger.info(f"building {what} in the background; the ready engines keep serving")
            start = time.monotonic()
            try:
                self._build(segmenter, what, lambda: build_in_child(segmenter.config, output_size, with_confidence),
                            lambda: segmenter.prepare(output_size, with_confidence))
            except Exception as exc:  # noqa: BLE001 - the engines already built keep serving
                self._failed_variants.add((frame_size, with_confidence))
                if not segmenter.prepared:  # nothing of the backend's engine: eager PyTorch must not serve for ever
                    self._fail_start(f"building {what} failed: {exc}")
                    return
                self.logger.error(f"building {what} failed: {exc}; serving from the engines already built")
                continue
            self.logger.info(f"{what} ready after {time.monotonic() - start:.1f} s")
            if self._engine is not None and segmenter is self._engine.engine:
                self._announce_ready()

    def _build(self, segmenter: Segmenter, what: str, in_child: Callable[[], None], load: Callable[[], None]) -> None:
        """Build ``what`` in a child process into the engine cache (``variant_build`` says why), then ``load`` it
        here, which is quick; where the child fails, ``load`` builds it in this process."""
        if segmenter.engine.builds_per_variant:
            try:
                in_child()
            except Exception as exc:  # noqa: BLE001 - fall back to building here
                self.logger.warning(f"building {what} in a child process failed ({exc}); building it in this process")
        load()

    def _announce_ready(self) -> bool:
        """The first engine serves: say so (log and, while active, the latched label_info), once."""
        with self._ready_lock:
            if self._ready_after_s is not None:
                return False
            self._ready_after_s = time.monotonic() - self._started_at
        self.logger.info(f"ready to serve {', '.join(stream.image_topic for stream in self._streams)}, "
                         f"{self._ready_after_s:.1f} s after start-up")
        if self._active:
            self._publish_label_info()
        return True

    def _fail_start(self, message: str) -> None:
        """No engine could be built at start-up: log it; a plain node ends (``main`` exits with 2), a managed
        one's configure fails."""
        self.fatal_error = message
        if self._wait_for_engines:
            self.logger.error(f"{message}; nothing to serve")
            return
        self.logger.fatal(f"{message}; nothing to serve, stopping")
        self.node.context.try_shutdown()

    def _served_backend(self, config: SegmenterConfig) -> str:
        """The backend of the engine in service, and ``config``'s if that was 'auto' (``openvino, from auto``)."""
        assert self._engine is not None
        served = self._engine.engine.config.backend  # the Segmenter's config has 'auto' resolved
        return served if served == config.backend else f"{served}, from {config.backend}"

    def _served_device(self, config: SegmenterConfig) -> str:
        """The device of the engine in service, and ``config``'s if that was 'auto' (``cuda from device auto``)."""
        assert self._engine is not None
        served = self._engine.engine.config.device  # the Segmenter's config has 'auto' resolved
        return served if served == config.device else f"{served} from device {config.device}"

    def _on_engine_swapped(self, config: SegmenterConfig) -> None:
        self.logger.info(
            f"now serving {config.model} ({self._served_backend(config)}, {config.precision}) at "
            f"{config.input_height}x{config.input_width}, scales {list(config.scales)}")
        assert self._engine is not None
        self._hardware_id = device_name(self._engine.engine.config.device)  # device 'auto' resolved
        if not self._announce_ready() and self._active:  # the new engine's label set and settings
            self._publish_label_info()

    def _on_engine_failed(self, config: SegmenterConfig, error: Exception) -> None:
        self.logger.error(f"{_engine_error_message(config, error)}; still serving the previous engine")
        if self._engine is None:
            return
        # Put the parameters back to what is serving, so reading them tells the truth.
        serving = self._engine.config
        reverted = {name: value for name, value in serving.to_parameters().items()
                    if self.node.get_parameter(name).value != value}
        self.node.set_parameters([Parameter(name, value=value) for name, value in reverted.items()])

    # Parameters ----------------------------------------------------------------------------

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Check a change against the whole set of values; if it fits, apply it (rclpy stores it next).

        Unconfigured, a change is only checked: configure reads the values.
        """
        values = read_parameters(self.node)
        values.update({parameter.name: parameter.value for parameter in parameters})
        try:
            config = self._engine_config(validate_parameters(values), values)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if self.configured:
            self._apply_node_settings(values)
            if any(parameter.name in ENGINE_PARAMETERS for parameter in parameters):
                self._rebuild_after_set(config)
        return SetParametersResult(successful=True)

    def _rebuild_after_set(self, config: SegmenterConfig) -> None:
        """Start the rebuild once rclpy has stored the accepted values (a one-shot timer runs after this
        callback): a build that fails at once then finds the new values to set back."""
        timer: list[Any] = []

        def start() -> None:
            timer[0].cancel()
            self.node.destroy_timer(timer[0])
            if self._engine is not None and self._engine.rebuild(config):
                self.logger.info("building a new engine in the background; the current one keeps serving")

        timer.append(self.node.create_timer(0.0, start))

    # Frames in -----------------------------------------------------------------------------

    def _on_frame_direct(self, stream: CameraStream, data: bytes | memoryview, received_ns: int, missed: int) -> None:
        """One camera, direct_io: handled on the taking thread (``data`` is valid during this call only)."""
        stream.stats.frame_received(displaced_pending=False, missed=missed)
        self._serve_one(stream, data, received_ns)

    def _on_frame_rclpy(self, stream: CameraStream, data: bytes | memoryview, received_ns: int, missed: int) -> None:
        """One camera through rclpy's executor: handed to the latest-frame worker."""
        assert self._worker is not None
        stream.stats.frame_received(displaced_pending=self._worker.submit((stream, data, received_ns)), missed=missed)

    def _on_frame_for_batch(self, stream: CameraStream, data: bytes | memoryview, received_ns: int,
                            missed: int) -> None:
        """Several cameras: decode on the camera's taking thread, then wait (newest per camera) for a batch."""
        started_ns = self.node.get_clock().now().nanoseconds
        frame = self._decode(stream, data)
        if frame is None:
            stream.stats.frame_received(missed=missed)
            return
        if isinstance(data, memoryview):  # the taker reuses its buffer for the next frame: keep the pixels
            frame = dataclasses.replace(frame, pixels=np.array(frame.pixels, copy=True))
        waiting = _WaitingFrame(frame, received_ns, started_ns, self.node.get_clock().now().nanoseconds)
        scheduler = self._scheduler
        if scheduler is None:
            return
        stream.stats.frame_received(displaced_pending=scheduler.submit(stream, waiting), missed=missed)

    def _on_camera_info(self, stream: CameraStream, msg: CameraInfo) -> None:
        # The frame size it announces (REP 104: the ROI, or the whole sensor, read out with binning):
        # build its engine now, before such frames arrive.
        width = msg.roi.width if msg.roi.width and msg.roi.height else msg.width
        height = msg.roi.height if msg.roi.width and msg.roi.height else msg.height
        frame_size = (height // max(msg.binning_y, 1), width // max(msg.binning_x, 1))
        if not all(frame_size) or self._engine is None:
            return
        if self._cameras:
            segmenter = self._engine.engine
            output_size = segmenter.output_size(frame_size)
            if (output_size, False) not in self._batch_variants:
                self._request_batch_variants(segmenter, [output_size], False)
        elif (frame_size, False) not in self._variants:
            self._request_variant(frame_size, False)

    def _decode(self, stream: CameraStream, data: bytes | memoryview) -> DecodedFrame | None:
        try:
            return stream.decode(data)
        except ImageDecodeError as exc:
            stream.stats.frame_bad()
            self.logger.warning(f"skipping bad frame{f' from {stream.name}' if stream.name else ''}: {exc}",
                                throttle_duration_sec=LOG_THROTTLE_S)
            return None

    # Serving -------------------------------------------------------------------------------

    def _serve_one(self, stream: CameraStream, data: bytes | memoryview, received_ns: int) -> None:
        """Decode, segment and publish one frame of the single-camera node (on the taking or worker thread)."""
        engine = self._engine
        if engine is None:
            return
        started_ns = self.node.get_clock().now().nanoseconds
        frame = self._decode(stream, data)
        if frame is None:
            return
        decoded_ns = self.node.get_clock().now().nanoseconds
        segmenter = engine.engine
        want_confidence = stream.wants_confidence()
        frame_size = tuple(frame.pixels.shape[:2])
        output_size = segmenter.output_size(frame_size)
        variant = self._ready_variant(segmenter, frame_size, output_size, want_confidence)
        # Nothing built yet (start-up): eager PyTorch serves meanwhile, never a build inside the frame.
        eager = variant is None
        run_size, run_confidence = variant or (output_size, want_confidence)
        try:
            result = segmenter.segment(frame.pixels, color_order=frame.color_order, want_confidence=run_confidence,
                                       output_size=run_size, eager=eager)
        except Exception as exc:  # noqa: BLE001 - one failing frame must not stop the stream
            stream.stats.frame_failed()
            self.logger.error(f"inference failed: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        labels = result.labels
        confidence = result.confidence if want_confidence else None
        if run_size != output_size:  # served by another size's engine while this size's builds
            size = (output_size[1], output_size[0])
            labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            if confidence is not None:
                confidence = cv2.resize(confidence, size, interpolation=cv2.INTER_LINEAR)
        served_by = SERVED_BY_EAGER if eager else segmenter.config.backend
        self._publish(stream, frame, labels, confidence, segmenter, result, served_by,
                      _WaitingFrame(frame, received_ns, started_ns, decoded_ns), run_size, run_confidence)

    def _serve_batch(self, batch: list[tuple[CameraStream, _WaitingFrame]]) -> Callable[[], None] | None:
        """Run the frames waiting from several cameras as one batch and publish each on its camera's topics.

        On a CPU only the network runs here: the rest (each frame's finish, publishing) is returned for
        the scheduler to run while the next batch's network runs (``BatchScheduler``'s two stages).
        """
        engine = self._engine
        if engine is None or not self._active:
            return None
        segmenter = engine.engine
        want_confidence = any(stream.wants_confidence() for stream, _ in batch)
        frames = [BatchFrame(waiting.frame.pixels, waiting.frame.color_order,
                             segmenter.output_size(tuple(waiting.frame.pixels.shape[:2])))
                  for _, waiting in batch]
        output_sizes = [frame.output_size for frame in frames]
        if not segmenter.is_batch_prepared(output_sizes, want_confidence):
            # The batched engine (or a frame size's finish) is being built: eager PyTorch serves meanwhile.
            self._request_batch_variants(segmenter, output_sizes, want_confidence)
            results = [self._segment_alone(segmenter, stream, frame, want_confidence, eager=True)
                       for (stream, _), frame in zip(batch, frames)]
            self._publish_batch(batch, frames, results, segmenter, SERVED_BY_EAGER, want_confidence)
            return None
        try:
            in_flight = segmenter.start_batch(frames, want_confidence)
        except Exception as exc:  # noqa: BLE001 - retried one by one, so only a bad frame fails
            self._batch_failed(batch, frames, segmenter, want_confidence, exc)
            return None

        def rest() -> None:
            try:
                results: list[SegmentationResult | None] = list(in_flight.finish())
            except Exception as exc:  # noqa: BLE001 - retried one by one, so only a bad frame fails
                self._batch_failed(batch, frames, segmenter, want_confidence, exc)
                return
            self._publish_batch(batch, frames, results, segmenter, segmenter.config.backend, want_confidence)

        if segmenter.device.type == "cpu":
            return rest
        rest()  # on a GPU the network is asynchronous already, and compiled graphs may reuse their outputs
        return None

    def _batch_failed(self, batch: list[tuple[CameraStream, _WaitingFrame]], frames: list[BatchFrame],
                      segmenter: Segmenter, want_confidence: bool, error: Exception) -> None:
        self.logger.warning(f"a batch of {len(frames)} failed ({error}); running its frames one by one",
                            throttle_duration_sec=LOG_THROTTLE_S)
        results = [self._segment_alone(segmenter, stream, frame, want_confidence)
                   for (stream, _), frame in zip(batch, frames)]
        self._publish_batch(batch, frames, results, segmenter, segmenter.config.backend, want_confidence)

    def _publish_batch(self, batch: list[tuple[CameraStream, _WaitingFrame]], frames: list[BatchFrame],
                       results: list[SegmentationResult | None], segmenter: Segmenter, served_by: str,
                       want_confidence: bool) -> None:
        for (stream, waiting), frame, result in zip(batch, frames, results):
            if result is None:
                continue
            confidence = result.confidence if stream.wants_confidence() else None
            self._publish(stream, waiting.frame, result.labels, confidence, segmenter, result, served_by, waiting,
                          frame.output_size, want_confidence, batch_size=len(batch))

    def _segment_alone(self, segmenter: Segmenter, stream: CameraStream, frame: BatchFrame, want_confidence: bool,
                       eager: bool = False) -> SegmentationResult | None:
        """One camera's frame on its own; a failure is that camera's alone (counted and logged)."""
        try:
            if eager:
                return segmenter.segment(frame.pixels, color_order=frame.color_order, want_confidence=want_confidence,
                                         output_size=frame.output_size, eager=True)
            return segmenter.segment_batch([frame], want_confidence)[0]
        except Exception as exc:  # noqa: BLE001 - one failing frame must not stop the other cameras
            stream.stats.frame_failed()
            self.logger.error(f"inference failed on a frame from {stream.name}: {exc}",
                              throttle_duration_sec=LOG_THROTTLE_S)
            return None

    def _ready_variant(self, segmenter: Segmenter, frame_size: tuple[int, int], output_size: tuple[int, int],
                       want_confidence: bool) -> Variant | None:
        """The (output size, confidence) to run a frame with: what it needs if that is built, else the
        closest built variant that gives the same outputs (what it needs gets built in the background);
        ``None`` while none is, and eager PyTorch serves (:func:`closest_variant` chooses)."""
        if segmenter.is_prepared(output_size, want_confidence):
            return output_size, want_confidence
        self._request_variant(frame_size, want_confidence)
        failed = ((frame_size[0], frame_size[1]), want_confidence) in self._failed_variants
        chosen = closest_variant(segmenter.prepared, output_size, want_confidence, failed)
        if chosen is None:
            return None
        size, confidence = chosen
        if (output_size, want_confidence) not in self._fallbacks_logged:
            self._fallbacks_logged.add((output_size, want_confidence))
            self.logger.info(
                f"{'labels+confidence' if want_confidence else 'labels'} at {output_size[0]}x{output_size[1]}: "
                f"served from the {size[0]}x{size[1]} {'labels+confidence' if confidence else 'labels'} engine"
                f"{', resized' if size != output_size else ''} until its own engine is built")
        return size, confidence

    def _publish(self, stream: CameraStream, frame: DecodedFrame, labels: np.ndarray, confidence: np.ndarray | None,
                 segmenter: Segmenter, result: SegmentationResult, served_by: str, waiting: _WaitingFrame,
                 run_size: tuple[int, int], run_confidence: bool, batch_size: int = 1) -> None:
        """A frame's outputs on its camera's topics, its statistics, and (if subscribed) its timings."""
        segmented_ns = self.node.get_clock().now().nanoseconds
        stream.publish_outputs(frame, labels, confidence, segmenter.label_set, self._outputs)
        published_ns = self.node.get_clock().now().nanoseconds
        stream.stats.frame_published((published_ns - frame.header.stamp_ns) * 1e-9)
        if served_by not in self._served_by_logged:
            self._served_by_logged.add(served_by)
            self.logger.info(f"first frame served by {served_by}"
                             f"{' while the engine builds' if served_by == SERVED_BY_EAGER else ''}")
        if stream.wants_timings():
            stream.publish_timings(json.dumps({
                "stamp_ns": frame.header.stamp_ns, "received_ns": waiting.received_ns,
                "started_ns": waiting.started_ns, "decoded_ns": waiting.decoded_ns, "segmented_ns": segmented_ns,
                "published_ns": published_ns,
                "segmenter_ms": {key: round(value, 3) for key, value in result.timings_ms.items()},
                "frame_size": list(frame.pixels.shape[:2]), "served_size": list(run_size),
                "served_confidence": run_confidence, "served_by": served_by, "batch_size": batch_size,
                "camera": stream.name}))

    # Status --------------------------------------------------------------------------------

    def _publish_label_info(self) -> None:
        """label_info (LabelInfo) and its companion label_info_meta (JSON) for the engine in service, per camera."""
        if self._engine is None or not self.node.context.ok():  # ending: a failed build shut ROS down
            return
        engine = self._engine.engine
        msg = label_info_message(engine.label_set.class_names)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        # The served engine's config: backend 'auto' appears as the backend it resolved to.
        meta = json.dumps(engine.config.label_info_fields(engine.weights_id, engine.label_set))
        for stream in self._streams:
            stream.publish_label_info(msg, meta)

    def _publish_diagnostics(self) -> None:
        if self._engine is None or not self._active or self._diagnostics_pub is None:
            return
        engine = self._engine.engine.config.diagnostic_fields()  # the backend 'auto' resolved to
        node_path = self.node.get_fully_qualified_name()
        statuses = [diagnostic_status(diagnostic_name(node_path, stream.name), stream.stats.report(), engine,
                                      self._engine.state, self._engine.last_error,
                                      image_timeout_s=self._image_timeout_s, hardware_id=self._hardware_id)
                    for stream in self._streams]
        header = Header(stamp=self.node.get_clock().now().to_msg())
        self._diagnostics_pub.publish(DiagnosticArray(header=header, status=statuses))


def closest_variant(prepared: Iterable[Variant], output_size: tuple[int, int], want_confidence: bool,
                    own_build_failed: bool = False) -> Variant | None:
    """The built variant to serve a frame with while its own (``output_size``, ``want_confidence``) builds.

    The same outputs first, then the same size, then the nearest area. A frame whose confidence is
    subscribed is never served by a labels-only variant (``None``: eager PyTorch serves it), because a
    consumer pairing labels with confidence by stamp (Nav2's layer) would drop every such frame; only
    when that frame's own build has failed (``own_build_failed``) do labels alone beat eager for ever.
    """
    prepared = list(prepared)
    candidates = [variant for variant in prepared if variant[1] or not want_confidence] or \
        (prepared if own_build_failed else [])
    if not candidates:
        return None
    area = output_size[0] * output_size[1]
    return min(candidates, key=lambda variant: (
        variant[1] != want_confidence, variant[0] != output_size, abs(variant[0][0] * variant[0][1] - area)))


def _engine_error_message(config: SegmenterConfig, error: Exception) -> str:
    if config.weights:
        return (f"cannot load weights {config.weights!r} into {config.model} ({config.label_set}): {error}. "
                f"Point 'weights' at a checkpoint for this model and label set, or set it to '' for random weights")
    return f"cannot build the {config.model} engine ({config.backend}, {config.precision}, {config.device}): {error}"


def _return_freed_memory() -> None:
    """Hand the heap that freed engines leave back to the operating system (glibc keeps it otherwise),
    so that a managed node's resident memory falls after cleanup. Does nothing where glibc is not there."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
