"""``rtseg bench node --cameras N``: one N-camera node against N single-camera nodes, same frames, same run.

Both layouts serve cameras ``cam0`` ... ``camN-1`` on the same topics (``/camK/image`` in,
``/camK/segmentation/labels`` out): the one node has ``cameras: [cam0, ...]`` at the root namespace,
each separate node runs in namespace ``camK``. The same synthetic frames are played to both at the same
rate per camera; for each layout the bench reports the resident memory of its process(es), the engine
builds at start (from the nodes' logs, each layout with an empty engine cache of its own), the served
frames per second per camera and in all, p50/p95 latency per camera (stamp to the labels' arrival) and,
for the one node, the batch sizes that ran (from ``segmentation/timings``).
"""
from __future__ import annotations

import collections
import json
import math
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rtseg_ros.engines.config import SegmenterConfig
from rtseg_ros.names import Topics, camera_topic

__all__ = ["camera_names", "format_multi_camera", "run_multi_camera_bench"]

STARTUP_TIMEOUT_S = 300.0
# Log lines of the node that say an engine (or a batched engine) is built and serving.
_BUILD_LINE = re.compile(r"(engine for [^\n]* ready after|batched engine for up to [^\n]* ready after) ([0-9.]+) s")


def camera_names(count: int) -> list[str]:
    """The bench's camera names: ``cam0`` ... ``cam<count-1>``."""
    return [f"cam{index}" for index in range(count)]


def _resident(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak, MiB, of process ``pid`` (Linux /proc)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = int(rest.split()[0]) / 1024
    return values


def frame_stages_ms(timings: Mapping[str, Any]) -> dict[str, float]:
    """One frame's ``segmentation/timings`` as stages, ms: taken to decode start (``to_thread``), ``decode``,
    waiting for the engine (``queued``), the Segmenter's ``preprocess``, ``inference`` (the network of the
    batch) and ``postprocess`` (each frame's resize and argmax), and ``publish``."""
    segmenter = timings.get("segmenter_ms", {})
    segmenting_ms = (timings["segmented_ns"] - timings["decoded_ns"]) * 1e-6
    return {
        "to_thread": (timings["started_ns"] - timings["received_ns"]) * 1e-6,
        "decode": (timings["decoded_ns"] - timings["started_ns"]) * 1e-6,
        "queued": max(segmenting_ms - float(segmenter.get("total", 0.0)), 0.0),
        "preprocess": float(segmenter.get("preprocess", 0.0)),
        "inference": float(segmenter.get("inference", 0.0)),
        "postprocess": float(segmenter.get("postprocess", 0.0)),
        "publish": (timings["published_ns"] - timings["segmented_ns"]) * 1e-6,
    }


class _Feed:
    """Plays one frame per camera at ``rate_hz`` from a thread, with fresh stamps; records the labels that come
    back (arrival, latency) and the batch sizes the node reports in ``segmentation/timings``."""

    def __init__(self, cameras: list[str], frames: Mapping[str, np.ndarray], rate_hz: float) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String

        from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener

        self.cameras = cameras
        self.session = ClientSession()
        self.feeders = {camera: self.session.add(CameraFeeder(
            namespace=f"/{camera}", frame_id=f"{camera}_optical", node_name=f"rtseg_bench_feed_{camera}",
            context=self.session.context)) for camera in cameras}
        self.listeners = {camera: self.session.add(OutputListener(
            namespace=f"/{camera}", outputs=(Topics.LABELS,), depth=50, listener_name=f"rtseg_bench_out_{camera}",
            on_message=lambda topic, msg, received_s, camera=camera: self._on_labels(camera, msg, received_s),
            context=self.session.context)) for camera in cameras}
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.stages: list[dict[str, float]] = []  # frame_stages_ms of every frame served in the window
        # The newest engine_state of every /diagnostics status (one per camera in either layout).
        self.engine_states: dict[str, str] = {}
        # Each camera's node-side totals from /diagnostics (1 Hz): frames dropped, of them missed.
        self.node_counts: dict[str, dict[str, int]] = {}
        self.listeners[cameras[0]].create_subscription(DiagnosticArray, Topics.DIAGNOSTICS.name,
                                                       self._on_diagnostics, 50)
        for camera, listener in self.listeners.items():
            listener.create_subscription(String, f"/{camera_topic(camera, Topics.TIMINGS)}", self._on_timings, 50)
        self._frames = frames
        self._period_s = 1.0 / rate_hz
        self._lock = threading.Lock()
        self._window: tuple[float, float] | None = None
        self.arrivals: dict[str, list[tuple[float, float]]] = {camera: [] for camera in cameras}
        self.sent: dict[str, int] = {camera: 0 for camera in cameras}
        self._stop = threading.Event()
        self._playing = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-feed")
        self._thread.start()

    def _on_labels(self, camera: str, msg: Any, received_s: float) -> None:
        from rclpy.time import Time

        latency_ms = (self.listeners[camera].get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-6
        self.arrivals[camera].append((received_s, latency_ms))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "engine_state" in values:
                self.engine_states[status.name] = values["engine_state"]
            # "...: segmentation (cam0)" in the one node, "/cam0/segmentation_node: ..." in the others.
            camera = next((c for c in self.cameras if f"({c})" in status.name or f"/{c}/" in status.name), None)
            if camera is not None:
                self.node_counts[camera] = {key: int(values.get(f"frames_{key}", 0))
                                            for key in ("dropped", "missed")}

    def engines_idle(self) -> bool:
        """Every camera's status says its engine serves, none is being built (call with the lock held)."""
        return (len(self.engine_states) >= len(self.cameras)
                and all(state == "serving" for state in self.engine_states.values()))

    def _on_timings(self, msg: Any) -> None:
        if self._window is not None and self._window[0] <= time.monotonic() <= self._window[1]:
            timings = json.loads(msg.data)
            self.batch_sizes[int(timings.get("batch_size", 1))] += 1
            self.stages.append(frame_stages_ms(timings))

    def _run(self) -> None:
        # Free-running cameras: each at the rate, their frames spread evenly over the period. Sent all at
        # once instead, the camera published first lost about half its frames in the middleware (in both
        # layouts: replaced in the node's subscription queue) and the one published last almost none.
        offsets = {camera: index * self._period_s / len(self.cameras) for index, camera in enumerate(self.cameras)}
        start = time.monotonic()
        next_s = {camera: start + offset for camera, offset in offsets.items()}
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                for camera, due in next_s.items():
                    if not self._playing.is_set() or now < due:
                        continue
                    self.feeders[camera].publish_frame(self._frames[camera], "rgb")
                    self.sent[camera] += 1
                    # Fell behind: keep the rate and the camera's phase, do not burst.
                    next_s[camera] = due + self._period_s * max(1, math.ceil((now - due) / self._period_s))
                self.session.spin_once(0.002)

    def wait(self, condition: Any, timeout_s: float, what: str, processes: list[Any]) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if condition():
                    return
            for process in processes:
                process.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.05)

    def measure(self, warmup_s: float, duration_s: float) -> dict[str, Any]:
        """Play for ``warmup_s``, then count what arrives during ``duration_s``."""
        self._playing.set()
        time.sleep(warmup_s)
        start = time.monotonic()
        self._window = (start, start + duration_s)
        sent_before = dict(self.sent)
        with self._lock:
            counts_before = {camera: dict(counts) for camera, counts in self.node_counts.items()}
        time.sleep(duration_s)
        end = time.monotonic()
        with self._lock:
            self._playing.clear()
            sent = {camera: self.sent[camera] - sent_before[camera] for camera in self.cameras}
            per_camera = {}
            for camera in self.cameras:
                window = [latency for received, latency in self.arrivals[camera] if start <= received <= end]
                per_camera[camera] = {
                    "sent": sent[camera],
                    "served": len(window),
                    "served_fps": round(len(window) / (end - start), 3),
                    "latency_p50_ms": round(float(np.percentile(window, 50)), 1) if window else None,
                    "latency_p95_ms": round(float(np.percentile(window, 95)), 1) if window else None,
                }
                if camera in counts_before and camera in self.node_counts:
                    # Whole seconds of /diagnostics: about the window, not to the frame.
                    for key in ("dropped", "missed"):
                        per_camera[camera][f"node_{key}"] = (self.node_counts[camera][key]
                                                             - counts_before[camera][key])
        return {"duration_s": round(end - start, 2), "cameras": per_camera,
                "aggregate_served_fps": round(sum(c["served_fps"] for c in per_camera.values()), 3)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.session.close()


def _run_layout(layout: str, config: SegmenterConfig, cameras: list[str], frames: Mapping[str, np.ndarray],
                rate_hz: float, warmup_s: float, duration_s: float, node_settings: Mapping[str, Any],
                log_dir: Path) -> dict[str, Any]:
    """Start the layout's node(s) with an empty engine cache, play the frames, measure, stop."""
    import dataclasses

    from rtseg_ros.ros.node_process import NodeProcess, node_command

    cache = Path(tempfile.mkdtemp(prefix=f"rtseg_bench_{layout}_cache_", dir=log_dir))
    layout_config = dataclasses.replace(config, cache_dir=str(cache))
    # The cameras' frame size is known, as on a robot: each layout builds its engines for it at start.
    height, width = next(iter(frames.values())).shape[:2]
    settings = {"qos_reliability": "reliable", "camera_height": height, "camera_width": width, **node_settings}
    if layout == "one_node":
        commands = {"segmentation_node": node_command(layout_config, node_settings={**settings, "cameras": cameras})}
    else:
        commands = {camera: node_command(layout_config, node_settings=settings, namespace=camera) for camera in cameras}
    started = time.monotonic()
    processes = [NodeProcess(command, log_dir / f"{layout}_{name}.log") for name, command in commands.items()]
    feed = _Feed(cameras, frames, rate_hz)
    try:
        feed.wait(lambda: all(listener.ready for listener in feed.listeners.values())
                  and all(feeder.connected for feeder in feed.feeders.values()),
                  STARTUP_TIMEOUT_S, f"the {layout} layout to serve", processes)
        ready_s = time.monotonic() - started
        # Frames are served (eagerly) while the engines build: measure the built engines only.
        feed.wait(feed.engines_idle, STARTUP_TIMEOUT_S, f"the {layout} layout's engines to be built", processes)
        engines_s = time.monotonic() - started
        result = feed.measure(warmup_s, duration_s)
        memory = [_resident(process.process.pid) for process in processes]
        result["ready_s"] = round(ready_s, 1)
        result["engines_built_s"] = round(engines_s, 1)
        result["processes"] = len(processes)
        result["rss_mib"] = round(sum(m.get("rss_mib", 0.0) for m in memory), 1)
        result["peak_rss_mib"] = round(sum(m.get("peak_rss_mib", 0.0) for m in memory), 1)
        if feed.stages:
            # Where a frame's time went, median per stage (ms): what a faster layout must shorten.
            result["stages_p50_ms"] = {stage: round(float(np.median([s[stage] for s in feed.stages])), 2)
                                       for stage in feed.stages[0]}
        if feed.batch_sizes:
            # The node reports each frame with its batch's size: a batch of k is k reports.
            result["batches_by_size"] = {str(size): count // size for size, count in sorted(feed.batch_sizes.items())}
    finally:
        feed.close()
        for process in processes:
            process.request_stop()
        for process in processes:
            process.stop()
    builds = [float(seconds) for process in processes for _, seconds in _BUILD_LINE.findall(process.log())]
    result["engine_builds"] = len(builds)
    result["engine_build_s"] = round(sum(builds), 1)
    return result


def run_multi_camera_bench(config: SegmenterConfig, cameras: int, *, frame_size: tuple[int, int] = (480, 640),
                           rate_hz: float = 15.0, warmup_s: float = 3.0, duration_s: float = 10.0,
                           node_settings: Mapping[str, Any] | None = None,
                           log_dir: str | Path | None = None) -> dict[str, Any]:
    """One ``cameras``-camera node, then ``cameras`` single-camera nodes, on the same frames at ``rate_hz`` each.

    Returns a report: the settings, each layout's figures and the ratios the issue asks about
    (memory of the one node against one single-camera node and against all of them, aggregate served
    rate, the spread of per-camera served rates, engine builds).
    """
    from rtseg_ros.datasets.synthetic import make_scene

    names = camera_names(cameras)
    frames = {camera: make_scene(100 + index, *frame_size)[0] for index, camera in enumerate(names)}
    folder = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="rtseg_bench_cameras_"))
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(node_settings or {})
    one = _run_layout("one_node", config, names, frames, rate_hz, warmup_s, duration_s, settings, folder)
    separate = _run_layout("separate_nodes", config, names, frames, rate_hz, warmup_s, duration_s, settings, folder)
    served = [camera["served_fps"] for camera in one["cameras"].values()]
    return {
        "settings": {**config.to_bench_fields(), "weights": config.weights or "random (fixed seed)", "cameras": cameras, "frame_size": list(frame_size),
                     "rate_hz_per_camera": rate_hz, "warmup_s": warmup_s, "duration_s": duration_s,
                     "node_settings": settings},
        "one_node": one,
        "separate_nodes": separate,
        "comparison": {
            "memory_one_node_vs_one_single_node": round(one["rss_mib"] / (separate["rss_mib"] / cameras), 2),
            "memory_one_node_vs_all_single_nodes": round(one["rss_mib"] / separate["rss_mib"], 2),
            "aggregate_fps_one_node_vs_single_nodes": round(
                one["aggregate_served_fps"] / max(separate["aggregate_served_fps"], 1e-9), 2),
            "per_camera_fps_spread": round((max(served) - min(served)) / max(np.mean(served), 1e-9), 3),
            "engine_builds": {"one_node": one["engine_builds"], "separate_nodes": separate["engine_builds"]},
        },
    }


def _node_drops(camera: Mapping[str, Any]) -> str:
    """``dropped (missed)`` of one camera's row, ``-`` where /diagnostics gave none."""
    return f"{camera.get('node_dropped', '-')} ({camera.get('node_missed', '-')})"


def format_multi_camera(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table, one row per layout."""
    rows = ["| layout | processes | RSS MiB | engine builds (s) | aggregate served fps | per camera fps "
            "| latency p50/p95 ms per camera | node drops (missed) per camera | batches by size |",
            "|---|---|---|---|---|---|---|---|---|"]
    for layout in ("one_node", "separate_nodes"):
        result = report[layout]
        cameras = result["cameras"].values()
        rows.append(
            f"| {layout.replace('_', ' ')} | {result['processes']} | {result['rss_mib']:.0f} "
            f"| {result['engine_builds']} ({result['engine_build_s']:.0f}) | {result['aggregate_served_fps']:.1f} "
            f"| {' / '.join(format(c['served_fps'], '.1f') for c in cameras)} "
            f"| {' / '.join(str(c['latency_p50_ms']) + '/' + str(c['latency_p95_ms']) for c in cameras)} "
            f"| {' / '.join(_node_drops(c) for c in cameras)} "
            f"| {result.get('batches_by_size', '-')} |")
    comparison = report["comparison"]
    for layout in ("one_node", "separate_nodes"):
        stages = report[layout].get("stages_p50_ms")
        if stages:
            rows.append("")
            rows.append(f"{layout.replace('_', ' ')}, median ms per frame: "
                        + ", ".join(f"{stage} {value}" for stage, value in stages.items()))
    rows.append("")
    rows.append(f"one node's memory = {comparison['memory_one_node_vs_one_single_node']}x one single-camera node's, "
                f"{comparison['memory_one_node_vs_all_single_nodes']}x all of them; aggregate served rate "
                f"{comparison['aggregate_fps_one_node_vs_single_nodes']}x; per-camera spread "
                f"{comparison['per_camera_fps_spread'] * 100:.1f}%")
    return "\n".join(rows)
