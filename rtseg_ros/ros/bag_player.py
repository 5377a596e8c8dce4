"""Live evaluation: play a bag over DDS to a segmentation node and score what comes back.

The player publishes the bag's images on the camera topic at the bag's own pace times a rate
factor, each with a fresh header stamp (now), as a camera driver would; the node's
``segmentation/labels`` are matched to the frames by that stamp and scored against the bag's
ground truth (:class:`rtseg_ros.evaluation.live.LiveScorer`). It measures what a robot gets: the
accuracy of the labels that actually arrive, end-to-end latency (publish to receive, DDS both
ways included), achieved throughput and dropped frames.

The node is started as a subprocess (``segmentation_node`` with the evaluated settings), or an
already running one is used. Only this module of the evaluation imports rclpy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.evaluation.evaluator import Evaluation, ReportWriter
from rtseg_ros.evaluation.live import LiveScorer
from rtseg_ros.io.bags import IMAGE_TOPIC, BagFrameReader, SkipTally, stamp_ns
from rtseg_ros.io.images import (
    ImageDecodeError,
    array_to_image_fields,
    label_msg_to_array,
)
from rtseg_ros.ros.demo import loopback_dds_environment
from rtseg_ros.ros.node_process import stop_node_process
from rtseg_ros.ros.segmentation_node import LABEL_INFO_QOS, LABEL_INFO_TYPE

__all__ = ["LiveOptions", "run_live_evaluation", "node_command"]

PLAYER_FRAME_ID = "camera"


@dataclass
class LiveOptions:
    """How the bag is played and the node is reached.

    Attributes:
        rate_factor: playback speed relative to the bag's stamps (2.0 = twice as fast).
        start_node: start ``segmentation_node`` as a subprocess; else use one already running.
        namespace: the running node's namespace (its outputs are ``<namespace>/segmentation/...``).
        image_topic: the camera topic the node listens on.
        startup_timeout_s: how long to wait for the node (engine build included).
        max_wait_s: an output later than this after its frame counts the frame as dropped.
        drain_s: after the last frame, how long to wait for outputs still in flight.
        max_frames: stop after this many frames.
        overlays: how many prediction/ground-truth overlay pictures to save.
        node_parameters: extra ``-p name:=value`` settings for a started node.
        progress: show a progress bar.
    """

    rate_factor: float = 1.0
    start_node: bool = True
    namespace: str = ""
    image_topic: str = IMAGE_TOPIC
    startup_timeout_s: float = 120.0
    max_wait_s: float = 5.0
    drain_s: float = 5.0
    max_frames: int | None = None
    overlays: int = 4
    node_parameters: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def node_command(settings: dict[str, Any], label_set: str, image_topic: str,
                 extra: dict[str, Any] | None = None) -> list[str]:
    """The command line that starts ``segmentation_node`` with the evaluated model settings."""
    height, width = settings["input_size"]
    parameters: dict[str, Any] = {
        "model": settings["name"], "weights": settings.get("weights") or "", "label_set": label_set,
        "input_height": height, "input_width": width, "scales": list(settings["scales"]),
        "backend": settings["backend"], "precision": settings["precision"], "device": settings["device"],
        "output_resolution": settings["output_resolution"], "publish_overlay": False,
        **(extra or {}),
    }
    command = [sys.executable, "-m", "rtseg_ros.ros.segmentation_node", "--ros-args", "-r", f"image:={image_topic}"]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={json.dumps(value)}"]
    return command


class _Player:
    """The player's own rclpy context and node: camera publisher plus label subscriber."""

    def __init__(self, options: LiveOptions, scorer: LiveScorer) -> None:
        self.scorer = scorer
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("rtseg_eval_player", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.label_info_seen = False
        self.bad_outputs = 0
        prefix = options.namespace.rstrip("/")
        # Reliable out so that no frame is lost before it reaches the node's own (best-effort or
        # reliable) subscription; best effort in, which matches either kind of node publisher.
        self.camera = self.node.create_publisher(
            Image, options.image_topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.labels = self.node.create_subscription(
            Image, f"{prefix}/segmentation/labels", self._on_labels,
            QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.node.create_subscription(LABEL_INFO_TYPE, f"{prefix}/segmentation/label_info", self._on_label_info,
                                      LABEL_INFO_QOS)

    def _on_label_info(self, msg: Any) -> None:
        self.label_info_seen = True

    def _on_labels(self, msg: Image) -> None:
        now = time.monotonic()
        stamp = stamp_ns(msg.header)
        try:
            labels = label_msg_to_array(msg)
        except ImageDecodeError as exc:
            self.bad_outputs += 1
            self.node.get_logger().warning(f"unusable label image from the node: {exc}",
                                           throttle_duration_sec=5.0)
            return
        self.scorer.on_received(stamp, labels, now)

    @property
    def ready(self) -> bool:
        return (self.label_info_seen and self.labels.get_publisher_count() > 0
                and self.camera.get_subscription_count() > 0)

    def spin_until(self, deadline: float) -> None:
        """Handle callbacks until the monotonic time ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.executor.spin_once(timeout_sec=min(remaining, 0.05))

    def publish(self, image: np.ndarray, color_order: str) -> int:
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=PLAYER_FRAME_ID)
        msg = Image(header=header, **array_to_image_fields(image, "rgb8" if color_order == "rgb" else "bgr8"))
        self.camera.publish(msg)
        return stamp_ns(header)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)



def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_live_evaluation(bag: str | Path, label_set: LabelSet, settings: dict[str, Any], json_path: str | Path,
                        options: LiveOptions | None = None) -> dict[str, Any]:
    """Play ``bag`` to a segmentation node, score its outputs, and write the report.

    Returns:
        The report; its ``live`` section holds published/received/dropped counts and rates,
        ``latency_ms`` the end-to-end latency.

    Raises:
        RuntimeError: the started node exited early.
        TimeoutError: the node did not come up within ``options.startup_timeout_s``.
        rtseg_ros.io.bags.BagError: the bag cannot be read.
    """
    from tqdm import tqdm

    options = options or LiveOptions()
    os.environ.update(loopback_dds_environment(os.environ))
    reader = BagFrameReader(bag)
    total = reader.frame_count()
    if options.max_frames is not None:
        total = min(total, options.max_frames)
    evaluation = Evaluation(label_set)
    header = {"mode": "live", "model": settings,
              "source": {"description": f"bag {bag} played over DDS", "bag": str(bag)}}
    writer = ReportWriter(json_path, header, overlays=options.overlays)
    scorer = LiveScorer(evaluation, writer, options.max_wait_s)
    node_log = writer.paths["json"].with_suffix(".node.log")
    command = node_command(settings, label_set.name, options.image_topic, options.node_parameters)
    process: subprocess.Popen | None = None
    player: _Player | None = None
    complete = False

    def extra() -> dict[str, Any]:
        live = scorer.summary(options.rate_factor)
        live.update({"node": "started" if options.start_node else "running", "bad_outputs": player.bad_outputs
                     if player else 0, "node_command": command if options.start_node else None,
                     "node_log": str(node_log) if options.start_node else None})
        return {"live": live, "frames_read": evaluation.frames_read,
                "skipped": dict(SkipTally.merged(reader.tally, evaluation.skipped).counts),
                "errors": SkipTally.merged(reader.tally, evaluation.skipped, evaluation.issues).messages,
                "throughput_fps": live["output_fps"]}

    try:
        if options.start_node:
            with open(node_log, "w") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        player = _Player(options, scorer)
        deadline = time.monotonic() + options.startup_timeout_s
        while not player.ready:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"segmentation_node exited with code {process.returncode} before it was ready:\n"
                                   + _log_tail(node_log))
            if time.monotonic() > deadline:
                where = f"see {node_log}" if process is not None else \
                    f"is a node running with its outputs under '{options.namespace or '/'}'?"
                raise TimeoutError(f"segmentation_node was not ready within {options.startup_timeout_s:.0f} s; {where}")
            player.spin_until(time.monotonic() + 0.1)

        bar = tqdm(total=total, desc="live", unit="frame", disable=not options.progress, dynamic_ncols=True)
        start_wall = first_stamp = None
        for frame in reader:
            if options.max_frames is not None and scorer.published >= options.max_frames:
                break
            if first_stamp is None:
                start_wall, first_stamp = time.monotonic(), frame.stamp_ns
            target = start_wall + (frame.stamp_ns - first_stamp) / 1e9 / options.rate_factor
            player.spin_until(target)
            stamp = player.publish(frame.image, frame.color_order)
            keep = None
            if scorer.wants_overlay and frame.labels is not None:
                keep = np.array(frame.image if frame.color_order == "rgb" else frame.image[..., ::-1])
            scorer.on_published(stamp, frame.name or f"frame_{frame.stamp_ns}", frame.labels, time.monotonic(), keep)
            scorer.expire(time.monotonic())
            writer.checkpoint(evaluation, extra())
            bar.update(1)
            bar.set_postfix(received=scorer.matched, dropped=scorer.dropped, refresh=False)
        bar.close()
        drain_deadline = time.monotonic() + options.drain_s
        while scorer.in_flight and time.monotonic() < drain_deadline:
            player.spin_until(min(drain_deadline, time.monotonic() + 0.1))
            scorer.expire(time.monotonic())
        scorer.expire(time.monotonic(), everything=True)
        complete = True
    finally:
        if player is not None:
            player.close()
        if process is not None:
            stop_node_process(process)
        report = writer.finish(evaluation, complete, extra())
    return report

