"""Live evaluation: play a bag over DDS to a segmentation node and score what comes back.

The shared :class:`~rtseg_ros.ros.clients.CameraFeeder` publishes the bag's images on the camera
topic at the bag's own pace times a rate factor, each with a fresh header stamp (now), as a camera
driver would, preceded by the bag's camera info of that frame under the same stamp (the node
republishes it, scaled, as ``segmentation/camera_info``). The node's ``segmentation/labels``, heard
by the shared :class:`~rtseg_ros.ros.clients.OutputListener`, are matched to the frames by that
stamp and scored against the ground truth (:class:`rtseg_ros.evaluation.live.LiveScorer`): the
bag's own, or a data set folder's looked up by the file name the bag records, as offline. It
measures what a robot gets: the accuracy of the labels that actually arrive, end-to-end latency
(publish to receive, DDS both ways included), achieved throughput and dropped frames. With
``max_in_flight`` the player also waits for outputs, so that a slow node drops no frame and the
scores equal an offline evaluation's.

The node is started as a subprocess (:class:`~rtseg_ros.ros.node_process.NodeProcess` with the
evaluated settings), or an already running one is used. Only this module of the evaluation imports
rclpy.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.evaluation.evaluator import Evaluation, ReportWriter
from rtseg_ros.evaluation.live import LiveScorer
from rtseg_ros.evaluation.sources import BagSource, DatasetGroundTruth
from rtseg_ros.io.bags import IMAGE_TOPIC, stamp_ns
from rtseg_ros.io.images import ImageDecodeError, label_msg_to_array
from rtseg_ros.names import Topics
from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener
from rtseg_ros.ros.node_process import NodeProcess, loopback_dds_environment, node_command, wait_until

__all__ = ["LiveOptions", "camera_info_message", "live_node_command", "run_live_evaluation"]

PLAYER_FRAME_ID = "camera"
# Outputs of a fast bag arrive in bursts: the listener's history holds that many unread.
LABELS_DEPTH = 50


@dataclass
class LiveOptions:
    """How the bag is played and the node is reached.

    Attributes:
        rate_factor: playback speed relative to the bag's stamps (2.0 = twice as fast).
        start_node: start ``segmentation_node`` as a subprocess; else use one already running.
        namespace: the node's namespace (its outputs are ``<namespace>/segmentation/...``); a started
            node runs in it.
        image_topic: the camera topic the node listens on (relative names resolve in ``namespace``).
        startup_timeout_s: how long to wait for the node (engine build included).
        max_wait_s: an output later than this after its frame counts the frame as dropped.
        drain_s: after the last frame, how long to wait for outputs still in flight.
        max_frames: stop after this many frames.
        max_in_flight: if set, never more frames than this awaiting their output: the player waits
            (at most ``max_wait_s`` per frame) before the next one, so a slower node drops none.
            ``None``: the bag's timing alone sets the pace, as a camera would.
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
    max_in_flight: int | None = None
    overlays: int = 4
    node_parameters: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def live_node_command(config: SegmenterConfig, options: LiveOptions) -> list[str]:
    """The command line of the node live evaluation starts: ``config``, no overlay, the camera topic remapped."""
    return node_command(config, node_settings={"publish_overlay": False, **options.node_parameters},
                        namespace=options.namespace, remaps={Topics.IMAGE.name: options.image_topic})


def camera_info_message(recorded: Any, header: Any) -> Any:
    """An rclpy ``sensor_msgs/CameraInfo`` with the fields of ``recorded`` (read from a bag by
    rosbags) and ``header`` (the republished frame's)."""
    from sensor_msgs.msg import CameraInfo, RegionOfInterest

    roi = recorded.roi
    return CameraInfo(
        header=header, height=int(recorded.height), width=int(recorded.width),
        distortion_model=str(recorded.distortion_model), d=[float(v) for v in recorded.d],
        k=[float(v) for v in recorded.k], r=[float(v) for v in recorded.r], p=[float(v) for v in recorded.p],
        binning_x=int(recorded.binning_x), binning_y=int(recorded.binning_y),
        roi=RegionOfInterest(x_offset=int(roi.x_offset), y_offset=int(roi.y_offset), height=int(roi.height),
                             width=int(roi.width), do_rectify=bool(roi.do_rectify)))


class _Player:
    """The camera feeder and label listener of one live run, in a client session of their own."""

    def __init__(self, options: LiveOptions, scorer: LiveScorer) -> None:
        self.scorer = scorer
        self.bad_outputs = 0
        self.camera_info_published = 0
        self.camera_info_returned = 0
        self.session = ClientSession()
        context = self.session.context
        self.feeder = self.session.add(CameraFeeder(
            namespace=options.namespace, image_topic=options.image_topic, depth=10, frame_id=PLAYER_FRAME_ID,
            node_name="rtseg_eval_player", context=context))
        self.listener = self.session.add(OutputListener(
            namespace=options.namespace, outputs=(Topics.LABELS, Topics.OUTPUT_CAMERA_INFO), depth=LABELS_DEPTH,
            on_message=self._on_output, listener_name="rtseg_eval_listener", context=context))
        self._camera_info_output = self.listener.topic(Topics.OUTPUT_CAMERA_INFO)

    def _on_output(self, topic: str, msg: Any, received_s: float) -> None:
        if topic == self._camera_info_output:
            self.camera_info_returned += 1
            return
        try:
            labels = label_msg_to_array(msg)
        except ImageDecodeError as exc:
            self.bad_outputs += 1
            self.listener.get_logger().warning(f"unusable label image from the node: {exc}",
                                               throttle_duration_sec=5.0)
            return
        self.scorer.on_received(stamp_ns(msg.header), labels, received_s)

    @property
    def ready(self) -> bool:
        return self.listener.ready and self.feeder.connected

    def publish(self, image: np.ndarray, color_order: str, camera_info: Any | None = None) -> int:
        """Publish a frame stamped now, after its camera info if the bag has one; returns its stamp (ns)."""
        header = self.feeder.stamp_now()
        if camera_info is not None:
            self.feeder.publish(camera_info_message(camera_info, header))
            self.camera_info_published += 1
        return stamp_ns(self.feeder.publish_frame(image, color_order, header))

    def close(self) -> None:
        self.session.close()


def run_live_evaluation(bag: str | Path, label_set: LabelSet, settings: dict[str, Any], json_path: str | Path,
                        options: LiveOptions | None = None,
                        ground_truth: DatasetGroundTruth | None = None) -> dict[str, Any]:
    """Play ``bag`` to a segmentation node, score its outputs, and write the report.

    Args:
        bag: the rosbag2 with camera frames and ground truth (or file names to find it by).
        label_set: the classes scored.
        settings: the report's ``model`` block (:meth:`SegmenterConfig.to_settings`); a started node
            serves the config it describes.
        json_path: the report.
        options: how the bag is played and the node reached.
        ground_truth: score against this data set folder's labels (matched by the file names the
            bag records) instead of the bag's.

    Returns:
        The report; its ``live`` section holds published/received/dropped counts and rates,
        ``latency_ms`` the end-to-end latency.

    Raises:
        rtseg_ros.ros.node_process.NodeExitedError: the started node exited early (a RuntimeError).
        TimeoutError: the node did not come up within ``options.startup_timeout_s``.
        rtseg_ros.io.bags.BagError: the bag cannot be read.
    """
    from tqdm import tqdm

    options = options or LiveOptions()
    os.environ.update(loopback_dds_environment(os.environ))
    evaluation = Evaluation(label_set)
    source = BagSource(bag, ground_truth, camera_info=True)
    total = source.total
    if options.max_frames is not None:
        total = min(total, options.max_frames)
    description = f"bag {bag} played over DDS"
    if ground_truth is not None:
        description += f" with {ground_truth.description}"
    header = {"mode": "live", "model": settings, "source": {"description": description, "bag": str(bag)}}
    writer = ReportWriter(json_path, header, overlays=options.overlays)
    scorer = LiveScorer(evaluation, writer, options.max_wait_s)
    node_log = writer.paths["json"].with_suffix(".node.log")
    # The node is told the set as it was given (a built-in name or a file path; empty: the checkpoint's).
    command = live_node_command(SegmenterConfig.from_settings(settings, label_set=label_set.source), options)
    process: NodeProcess | None = None
    player: _Player | None = None
    complete = False

    def extra() -> dict[str, Any]:
        live = scorer.summary(options.rate_factor)
        live.update({"node": "started" if options.start_node else "running", "bad_outputs": player.bad_outputs
                     if player else 0, "node_command": command if options.start_node else None,
                     "node_log": str(node_log) if options.start_node else None,
                     "max_in_flight": options.max_in_flight,
                     "camera_info_published": player.camera_info_published if player else 0,
                     "camera_info_returned": player.camera_info_returned if player else 0})
        fields = {"live": live, "throughput_fps": live["output_fps"]}
        if source.damage is not None:
            fields["source"] = {**header["source"], "damage": source.damage.as_dict()}
        return fields

    try:
        if options.start_node:
            process = NodeProcess(command, node_log)
        player = _Player(options, scorer)
        what = "segmentation_node to come up"
        if process is None:
            what += f" (is a node running with its outputs under '{options.namespace or '/'}'?)"
        wait_until(lambda: player.ready, options.startup_timeout_s, player.session.spin_once, what, process)

        bar = tqdm(total=total, desc="live", unit="frame", disable=not options.progress, dynamic_ncols=True)
        start_wall = first_stamp = None
        # What the bag reader skips is counted with everything else the evaluation skips.
        for frame in source.frames(evaluation.skipped):
            if options.max_frames is not None and scorer.published >= options.max_frames:
                break
            if first_stamp is None:
                start_wall, first_stamp = time.monotonic(), frame.stamp_ns
            target = start_wall + (frame.stamp_ns - first_stamp) / 1e9 / options.rate_factor
            player.session.spin_until(target)
            while options.max_in_flight and scorer.in_flight >= options.max_in_flight:
                player.session.spin_once(0.05)
                scorer.expire(time.monotonic())
            stamp = player.publish(frame.image, frame.color_order, frame.camera_info)
            keep = None
            if scorer.wants_overlay and frame.labels is not None:
                keep = np.array(frame.image if frame.color_order == "rgb" else frame.image[..., ::-1])
            scorer.on_published(stamp, frame.name, frame.labels, time.monotonic(), keep)
            scorer.expire(time.monotonic())
            writer.checkpoint(evaluation, extra())
            bar.update(1)
            bar.set_postfix(received=scorer.matched, dropped=scorer.dropped, refresh=False)
        bar.close()
        drain_deadline = time.monotonic() + options.drain_s
        while scorer.in_flight and time.monotonic() < drain_deadline:
            player.session.spin_until(min(drain_deadline, time.monotonic() + 0.1))
            scorer.expire(time.monotonic())
        scorer.expire(time.monotonic(), everything=True)
        complete = True
    finally:
        if player is not None:
            player.close()
        if process is not None:
            process.stop()
        report = writer.finish(evaluation, complete, extra())
    return report
