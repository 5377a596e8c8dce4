"""The demo's ROS side: the shared camera feeder and output listener, a fixed-rate loop, an overlay video."""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
from rclpy.time import Time

from rtseg_ros.io.images import image_msg_to_array, label_msg_to_array
from rtseg_ros.names import Topics
from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener
from rtseg_ros.ros.interfaces import message_type, qos_profile

__all__ = ["DemoClient"]

CAMERA_FRAME_ID = "rtseg_demo_camera"
# After the camera stops, outputs of frames still in flight are awaited this long at most.
DRAIN_S = 2.0
# A stalled node must not blow the video up: one overlay fills at most this many video frames.
MAX_VIDEO_REPEATS = 50
# Camera frames, labels and overlays kept (by stamp) to match the three of one frame.
MATCH_WINDOW = 16


class DemoClient:
    """Publishes camera frames at a fixed rate and measures what comes back from the node.

    Use as a context manager: it owns its own rclpy context, so it does not disturb others.

    Args:
        image_topic: where the node listens.
        frames: endless ``(image, color_order)`` frames.
        rate_hz: publishing rate.
        video: if given, every overlay received is appended to this mp4 file.
        namespace: the node's namespace.
    """

    def __init__(self, image_topic: str, frames: Iterator[tuple[np.ndarray, str]], rate_hz: float,
                 video: Path | None = None, namespace: str = "") -> None:
        self._session = ClientSession()
        context = self._session.context
        self.feeder = self._session.add(CameraFeeder(
            namespace=namespace, image_topic=image_topic, depth=2, frame_id=CAMERA_FRAME_ID,
            node_name="rtseg_demo_camera", context=context))
        self.listener = self._session.add(OutputListener(
            namespace=namespace, outputs=(Topics.LABELS, Topics.OVERLAY), on_message=self._on_output,
            listener_name="rtseg_demo_listener", context=context))
        self._labels = self.listener.stats(Topics.LABELS)
        self._labels_topic = self.listener.topic(Topics.LABELS)
        self._overlay_topic = self.listener.topic(Topics.OVERLAY)
        # By stamp: camera frames sent (RGB), labels and overlays received, until the three meet.
        self._pending: dict[str, dict[int, np.ndarray]] = {"camera": {}, "labels": {}, "overlay": {}}
        self.last_matched: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # camera, labels, overlay
        self._frames = frames
        self._period = 1.0 / rate_hz
        self._video_path = video
        self._video: cv2.VideoWriter | None = None
        self.video_frames = 0
        self._last_video_stamp: Time | None = None
        self.last_overlay: np.ndarray | None = None
        self._window_start = (0, 0, 0)  # published, received, latency count at the last report
        self.first_labels_s: float | None = None  # time.monotonic() when the first labels came
        # Frames per engine that served them ("eager" while the backend builds, then the backend), from
        # the node's segmentation/timings; "unknown" for a node that does not say.
        self.served_by: Counter[str] = Counter()
        self.listener.create_subscription(message_type(Topics.TIMINGS), self.listener.topic(Topics.TIMINGS),
                                          self._on_timings, qos_profile(Topics.TIMINGS.qos))

    def __enter__(self) -> DemoClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._video is not None:
            self._video.release()
        self._session.close()

    @property
    def ready(self) -> bool:
        """True once the node is up (label_info in, outputs connected) and takes the camera topic."""
        return self.listener.ready and self.feeder.connected

    @property
    def label_info_text(self) -> str:
        return self.listener.label_info_text

    def spin_once(self, timeout_s: float) -> None:
        self._session.spin_once(timeout_s)

    def run(self, duration_s: float, echo: Callable[[str], None], check: Callable[[], None] = lambda: None) -> None:
        """Publish for ``duration_s``, printing statistics every second, then drain the outputs.

        ``check`` is called on every turn of the loop and may raise to end the run (node gone).
        """
        start = time.monotonic()
        next_frame = last_report = start
        while (now := time.monotonic()) < start + duration_s:
            check()
            if now >= next_frame:
                image, order = next(self._frames)
                header = self.feeder.publish_frame(image, order)
                self._keep("camera", header.stamp, image if order == "rgb" else image[..., ::-1])
                # Skip missed ticks rather than bursting to catch up.
                next_frame = max(next_frame + self._period, now)
            if now >= last_report + 1.0:
                echo(self._report_line(now - start, now - last_report))
                last_report = now
            self.spin_once(min(next_frame, last_report + 1.0) - time.monotonic())
        drain_end = time.monotonic() + DRAIN_S
        while self._labels.count + self._dropped_by_node() < self.feeder.published and time.monotonic() < drain_end:
            self.spin_once(0.05)
        now = time.monotonic()
        echo(self._report_line(now - start, now - last_report))

    def figures(self) -> dict[str, Any]:
        """The run's totals, by the name of the ``DemoSummary`` field they fill."""
        feeder = self.feeder
        elapsed = 0.0  # from the first to the last frame published
        if feeder.first_published_s is not None and feeder.last_published_s is not None:
            elapsed = feeder.last_published_s - feeder.first_published_s
        elapsed = max(elapsed, 1e-6)
        p50, p95 = self._labels.latency_percentiles((50, 95))
        return {
            "frames_published": feeder.published,
            "frames_segmented": self._labels.count,
            "frames_dropped_by_node": self._dropped_by_node(),
            "frames_bad": int(self.listener.status.get("frames_bad", 0)),
            "input_fps": feeder.published / elapsed,
            "output_fps": self._labels.count / elapsed,
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "served_by": dict(self.served_by),
        }

    # Internals ------------------------------------------------------------------------------

    def _on_output(self, topic: str, msg: Any, received_s: float) -> None:
        if topic == self._overlay_topic:
            self._on_overlay(msg)
        elif topic == self._labels_topic:
            if self.first_labels_s is None:
                self.first_labels_s = time.monotonic()
            self._keep("labels", msg.header.stamp, label_msg_to_array(msg).copy())

    def _on_timings(self, msg: Any) -> None:
        try:
            served_by = json.loads(msg.data).get("served_by")
        except (ValueError, AttributeError):
            served_by = None
        self.served_by[str(served_by) if served_by else "unknown"] += 1

    def _keep(self, kind: str, stamp: Any, array: np.ndarray) -> None:
        """Keep one part of a frame by stamp; when camera, labels and overlay are in, that frame is the last matched."""
        key = Time.from_msg(stamp).nanoseconds
        parts = self._pending[kind]
        parts[key] = array
        while len(parts) > MATCH_WINDOW:
            parts.pop(next(iter(parts)))
        if all(key in self._pending[k] for k in ("camera", "labels", "overlay")):
            self.last_matched = (self._pending["camera"][key], self._pending["labels"][key],
                                 self._pending["overlay"][key])

    def _on_overlay(self, msg: Any) -> None:
        overlay, _ = image_msg_to_array(msg)
        self.last_overlay = overlay.copy()
        self._keep("overlay", msg.header.stamp, self.last_overlay)
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

    def _dropped_by_node(self) -> int:
        return int(self.listener.status.get("frames_dropped", 0))

    def _report_line(self, elapsed: float, period: float) -> str:
        """Rates and latency since the previous line, drops and bad frames since the start."""
        published, received, latency_count = self._window_start
        period = max(period, 1e-6)
        p50, p95 = self._labels.latency_percentiles((50, 95), since=latency_count)
        self._window_start = (self.feeder.published, self._labels.count, len(self._labels.latencies_ms))
        return (f"{elapsed:6.1f} s | camera {(self.feeder.published - published) / period:5.1f} fps | "
                f"segmented {(self._labels.count - received) / period:5.1f} fps | "
                f"latency p50 {p50:6.0f} ms  p95 {p95:6.0f} ms | "
                f"dropped {self._dropped_by_node()} | bad {self.listener.status.get('frames_bad', '0')}")
