"""The demo's ROS side: a camera publisher that also listens to the segmentation outputs."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from rtseg_ros.io.images import array_to_image_fields, image_msg_to_array
from rtseg_ros.ros.demo import DemoSummary
from rtseg_ros.ros.segmentation_node import (
    LABEL_INFO_QOS,
    LABEL_INFO_TYPE,
    NODE_NAME,
    LabelInfo,
    diagnostic_name,
)

__all__ = ["DemoClient"]

CAMERA_FRAME_ID = "rtseg_demo_camera"
# After the camera stops, outputs of frames still in flight are awaited this long at most.
DRAIN_S = 2.0
# A stalled node must not blow the video up: one overlay fills at most this many video frames.
MAX_VIDEO_REPEATS = 50


class DemoClient:
    """Publishes camera frames at a fixed rate and measures what comes back from the node.

    Use as a context manager: it owns its own rclpy context, so it does not disturb others.

    Args:
        image_topic: where the node listens.
        frames: endless ``(image, color_order)`` frames.
        rate_hz: publishing rate.
        video: if given, every overlay received is appended to this mp4 file.
    """

    def __init__(self, image_topic: str, frames: Iterator[tuple[np.ndarray, str]], rate_hz: float,
                 video: Path | None = None) -> None:
        self._context = Context()
        # No rclpy signal handlers: Ctrl-C must reach the demo loop as KeyboardInterrupt.
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = Node("rtseg_demo_camera", context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._frames = frames
        self._period = 1.0 / rate_hz
        self._video_path = video
        self._video: cv2.VideoWriter | None = None
        self.video_frames = 0
        self._last_video_stamp: Time | None = None
        self.last_overlay: np.ndarray | None = None
        self.label_info_text = ""
        self._published = 0
        self._received = 0
        self._latencies_ms: list[float] = []
        self._first_publish: float | None = None
        self._elapsed = 0.0  # from the first to the last frame published
        self._window_start = (0, 0, 0)  # published, received, latency count at the last report
        self._node_values: dict[str, str] = {}

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._camera = self._node.create_publisher(Image, image_topic, reliable)
        node = self._node
        node.create_subscription(Image, "/segmentation/labels", self._on_labels, 10)
        node.create_subscription(Image, "/segmentation/overlay", self._on_overlay, 10)
        node.create_subscription(LABEL_INFO_TYPE, "/segmentation/label_info", self._on_label_info, LABEL_INFO_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def __enter__(self) -> DemoClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._video is not None:
            self._video.release()
        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)

    @property
    def node_ready(self) -> bool:
        """True once the node has published its label_info (its engine is built)."""
        return bool(self.label_info_text)

    def spin_once(self, timeout_s: float) -> None:
        self._executor.spin_once(timeout_sec=timeout_s)

    def run(self, duration_s: float, echo: Callable[[str], None], check: Callable[[], None] = lambda: None) -> None:
        """Publish for ``duration_s``, printing statistics every second, then drain the outputs.

        ``check`` is called on every turn of the loop and may raise to end the run (node gone).
        """
        start = time.monotonic()
        next_frame = last_report = start
        while (now := time.monotonic()) < start + duration_s:
            check()
            if now >= next_frame:
                self._publish_frame()
                # Skip missed ticks rather than bursting to catch up.
                next_frame = max(next_frame + self._period, now)
            if now >= last_report + 1.0:
                echo(self._report_line(now - start, now - last_report))
                last_report = now
            self.spin_once(max(0.0, min(next_frame, last_report + 1.0) - time.monotonic()))
        drain_end = time.monotonic() + DRAIN_S
        while self._received + self._dropped_by_node() < self._published and time.monotonic() < drain_end:
            self.spin_once(0.05)
        now = time.monotonic()
        echo(self._report_line(now - start, now - last_report))

    def fill(self, summary: DemoSummary) -> None:
        """Copy the run's totals into ``summary``."""
        elapsed = max(self._elapsed, 1e-6)
        summary.frames_published = self._published
        summary.frames_segmented = self._received
        summary.frames_dropped_by_node = self._dropped_by_node()
        summary.frames_bad = int(self._node_values.get("frames_bad", 0))
        summary.input_fps = self._published / elapsed
        summary.output_fps = self._received / elapsed
        if self._latencies_ms:
            summary.latency_p50_ms = float(np.percentile(self._latencies_ms, 50))
            summary.latency_p95_ms = float(np.percentile(self._latencies_ms, 95))

    # Internals ------------------------------------------------------------------------------

    def _publish_frame(self) -> None:
        image, color_order = next(self._frames)
        encoding = "rgb8" if color_order == "rgb" else "bgr8"
        header = Header(stamp=self._node.get_clock().now().to_msg(), frame_id=CAMERA_FRAME_ID)
        self._camera.publish(Image(header=header, **array_to_image_fields(image, encoding)))
        self._published += 1
        now = time.monotonic()
        if self._first_publish is None:
            self._first_publish = now
        self._elapsed = now - self._first_publish

    def _on_labels(self, msg: Image) -> None:
        latency = self._node.get_clock().now() - Time.from_msg(msg.header.stamp)
        self._received += 1
        self._latencies_ms.append(latency.nanoseconds * 1e-6)

    def _on_overlay(self, msg: Image) -> None:
        overlay, _ = image_msg_to_array(msg)
        self.last_overlay = overlay.copy()
        if self._video_path is None:
            return
        if self._video is None:
            height, width = overlay.shape[:2]
            self._video = cv2.VideoWriter(str(self._video_path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          1.0 / self._period, (width, height))
        # The video runs at the camera rate: each overlay stands until the next one, so the video
        # plays in real time whatever rate the node keeps up.
        stamp = Time.from_msg(msg.header.stamp)
        repeats = 1
        if self._last_video_stamp is not None:
            gap_s = (stamp - self._last_video_stamp).nanoseconds * 1e-9
            repeats = min(max(1, round(gap_s / self._period)), MAX_VIDEO_REPEATS)
        self._last_video_stamp = stamp
        frame = cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)
        for _ in range(repeats):
            self._video.write(frame)
        self.video_frames += repeats

    def _on_label_info(self, msg: object) -> None:
        if LabelInfo is not None and isinstance(msg, LabelInfo):
            self.label_info_text = f"{len(msg.class_map)} classes"
            return
        info = json.loads(msg.data)  # type: ignore[attr-defined]
        height, width = info["input_size"]
        self.label_info_text = (
            f"{info['model']} on {info['label_set']} ({info['num_classes']} classes), input {height}x{width}, "
            f"{info['backend']}/{info['precision']} on {info['device']}")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == diagnostic_name(f"/{NODE_NAME}"):
                self._node_values = {kv.key: kv.value for kv in status.values}

    def _dropped_by_node(self) -> int:
        return int(self._node_values.get("frames_dropped", 0))

    def _report_line(self, elapsed: float, period: float) -> str:
        """Rates and latency since the previous line, drops and bad frames since the start."""
        published, received, latency_count = self._window_start
        window = self._latencies_ms[latency_count:]
        period = max(period, 1e-6)
        self._window_start = (self._published, self._received, len(self._latencies_ms))
        p50, p95 = (np.percentile(window, [50, 95]) if window else (math.nan, math.nan))
        return (f"{elapsed:6.1f} s | camera {(self._published - published) / period:5.1f} fps | "
                f"segmented {(self._received - received) / period:5.1f} fps | "
                f"latency p50 {p50:6.0f} ms  p95 {p95:6.0f} ms | "
                f"dropped {self._dropped_by_node()} | bad {self._node_values.get('frames_bad', '0')}")
