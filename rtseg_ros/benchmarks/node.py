"""``rtseg bench node``: what the segmentation node adds around its Segmenter, and the camera rate it keeps up with.

The real node runs in its own process (:func:`~rtseg_ros.ros.node_process.node_command`,
:class:`~rtseg_ros.ros.node_process.NodeProcess`) with the shipped loopback DDS profile. This process
plays the camera and the subscribers:

- the camera publishes **pre-serialised** frames (built once per case; per frame only the stamp is
  written and the bytes object made). What the camera itself spends, making that bytes object and the
  ``publish`` call (rclpy's copy and the DDS write, in the camera's thread), is timed and taken out of
  the overhead, so what is measured is the node, the middleware's delivery and the transport, not the
  test camera; the report keeps the figure with the publish call left in too
  (``overhead_incl_camera_publish_ms``);
- subscribers take the outputs with ``raw=True`` and read only their header stamp, so their own
  deserialisation is left out too;
- the node's ``segmentation/timings`` topic gives, per frame, the Segmenter's own time and when the node
  received, started, segmented and published it.

Per case (frame size, input encoding, outputs) the report has the Segmenter's time, the stamp-to-subscriber
latency of the labels (and of the last output of the frame), their difference, the **overhead**, p50 and
p95, and the overhead's parts (transport in, hand-off to the worker, decode + publish, transport out).
Latency frames are sent one at a time (the next once the previous one's outputs arrived), so no frame waits
for another. The rate search then sends frames at fixed rates and reports the highest one served with no
drop, against ``1000 / model latency``.

The network alone against the network inside the node: after the first rgb8 labels row, the node's own
Segmenter is built in this process too and run on the same pixels, one frame alone, one frame through the
node, in turn (:func:`_network_alone_vs_node`), so a network slowed by the node's threads shows, and so
does the user's figure, stamp-to-labels minus the network alone.

This module imports rclpy, and torch for the machine description and the network alone.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import struct
import threading
import time
from collections.abc import Iterable, Sequence
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtseg_ros.names import INPUT_TRANSPORTS, Topics

__all__ = ["NodeCase", "RateResult", "default_cases", "full_cases", "run_node_bench"]

INPUT_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "yuv422", "jpeg")
SUBSCRIBERS: tuple[str, ...] = ("rcl", "rclpy")
OUTPUT_SETS: tuple[str, ...] = ("labels", "labels+confidence", "labels+confidence+overlay")
FRAME_SIZES: tuple[tuple[int, int], ...] = ((1024, 2048), (720, 1280))
STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class NodeCase:
    """One row: frames of ``frame_size`` (height, width) in ``encoding``, the outputs subscribed to."""

    frame_size: tuple[int, int]
    encoding: str
    outputs: str = "labels"
    confidence_encoding: str = "32FC1"

    @property
    def transport(self) -> str:
        return "compressed" if self.encoding == "jpeg" else "raw"

    @property
    def label(self) -> str:
        outputs = self.outputs.replace("confidence", f"confidence({self.confidence_encoding})")
        return f"{self.frame_size[0]}x{self.frame_size[1]} {self.encoding} {outputs}"


def default_cases(frame_size: tuple[int, int] = FRAME_SIZES[0]) -> list[NodeCase]:
    """The short run: rgb8 at ``frame_size`` with labels, + mono8 confidence, + 32FC1 confidence, + overlay."""
    return [NodeCase(frame_size, "rgb8", "labels"),
            NodeCase(frame_size, "rgb8", "labels+confidence", "mono8"),
            NodeCase(frame_size, "rgb8", "labels+confidence", "32FC1"),
            NodeCase(frame_size, "rgb8", "labels+confidence+overlay", "32FC1")]


def preset_cases(params_file: str | Path, backend: str,
                 encodings: Iterable[str] = ("rgb8",)) -> tuple[Any, dict[str, Any], list[NodeCase]]:
    """The engine config, node-only settings and rows of a node params file (a preset): labels, and labels
    with the file's confidence encoding, at the file's camera size.

    Raises:
        click.BadParameter: the file is no params file or sets an unknown parameter.
    """
    import click

    from rtseg_ros.engines import SegmenterConfig
    from rtseg_ros.engines.config import ConfigError
    from rtseg_ros.names import PARAMETERS
    from rtseg_ros.ros.node_process import read_params_file

    try:
        values = read_params_file(params_file)
        config = SegmenterConfig.from_parameters({**values, "backend": backend})
    except (ValueError, ConfigError) as exc:
        raise click.BadParameter(str(exc), param_hint="--params-file") from None
    size = (int(values.get("camera_height", PARAMETERS["camera_height"].default) or FRAME_SIZES[0][0]),
            int(values.get("camera_width", PARAMETERS["camera_width"].default) or FRAME_SIZES[0][1]))
    confidence = str(values.get("confidence_encoding", PARAMETERS["confidence_encoding"].default))
    # The rows set confidence_encoding themselves; the camera size is the frames'.
    settings = {name: value for name, value in values.items() if not PARAMETERS[name].config_field
                and name not in ("confidence_encoding", "camera_height", "camera_width")}
    cases = [case for encoding in encodings for case in (
        NodeCase(size, encoding, "labels"), NodeCase(size, encoding, "labels+confidence", confidence))]
    return config, settings, cases


def full_cases(frame_sizes: Iterable[tuple[int, int]] = FRAME_SIZES,
               encodings: Iterable[str] = INPUT_ENCODINGS) -> list[NodeCase]:
    """Every frame size x input encoding x output set (both confidence encodings)."""
    cases = []
    for size in frame_sizes:
        for encoding in encodings:
            cases.append(NodeCase(size, encoding, "labels"))
            for confidence in ("mono8", "32FC1"):
                cases.append(NodeCase(size, encoding, "labels+confidence", confidence))
            cases.append(NodeCase(size, encoding, "labels+confidence+overlay", "32FC1"))
    return cases


def _frame_bytes(size: tuple[int, int], encoding: str, header: Any) -> bytes:
    """A serialised camera frame (a synthetic street scene) of ``size`` in ``encoding``."""
    import cv2
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from rtseg_ros.datasets.synthetic import make_scene

    rgb = make_scene(1, *size)[0]
    if encoding == "jpeg":
        ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        return serialize_message(CompressedImage(header=header, format="jpeg", data=jpeg.tobytes()))
    if encoding == "yuv422":
        yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)
        packed = np.empty((size[0], size[1], 2), np.uint8)  # UYVY: U Y0 V Y1 per pixel pair
        packed[:, 0::2, 0], packed[:, 1::2, 0] = yuv[:, 0::2, 1], yuv[:, 0::2, 2]
        packed[..., 1] = yuv[..., 0]
        pixels, channels = packed, 2
    else:
        pixels, channels = (rgb if encoding == "rgb8" else np.ascontiguousarray(rgb[..., ::-1])), 3
    import array

    data = array.array("B")
    data.frombytes(np.ascontiguousarray(pixels).tobytes())
    return serialize_message(Image(header=header, height=size[0], width=size[1], encoding=encoding, is_bigendian=0,
                                   step=size[1] * channels, data=data))


class _Recorder:
    """Arrival times (``time.time_ns``) of each output topic and the node's timings, by stamp."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[str, dict[int, int]] = {}
        self.timings: dict[int, dict[str, Any]] = {}

    def output(self, topic: str, data: bytes) -> None:
        now = time.time_ns()
        sec, nanosec = struct.unpack_from("<iI", data, 4)  # the header stamp, first field after the encapsulation
        with self.lock:
            self.arrivals.setdefault(topic, {})[sec * 1_000_000_000 + nanosec] = now

    def timing(self, msg: Any) -> None:
        record = json.loads(msg.data)
        with self.lock:
            self.timings[record["stamp_ns"]] = record

    def clear(self) -> None:
        with self.lock:
            self.arrivals.clear()
            self.timings.clear()


def camera_topic(transport: str) -> str:
    """The bench camera's topic for ``transport`` (relative): one per message type, as image_transport
    names them, since one DDS participant cannot hold a topic name with two types."""
    return f"{Topics.IMAGE.name}/compressed" if transport == "compressed" else Topics.IMAGE.name


class _RclListener:
    """A subscriber that takes output images through rcl (rcl_direct), like a C++ subscriber, on its own thread.

    rclpy's ``raw=True`` take would copy each message once more into a ``bytes`` object, a cost of the
    Python binding that neither the node nor a C++ subscriber (RViz, rosbag2) pays.
    """

    def __init__(self, node: Any, topic: str, qos: Any, record: Any) -> None:
        from sensor_msgs.msg import Image

        from rtseg_ros.ros.rcl_direct import FrameTaker, SerializedSubscription

        self._taker = FrameTaker(SerializedSubscription(node, Image, topic, qos),
                                 lambda data, received_ns, missed: record(data), time.time_ns, name=f"bench-{topic}")

    def destroy(self) -> None:
        self._taker.stop()


class _Camera:
    """Publishes pre-serialised frames with fresh stamps; the stamping copy is timed and taken out."""

    def __init__(self, node: Any, frame: bytes, transport: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        kind = CompressedImage if transport == "compressed" else Image
        self.publisher = node.create_publisher(kind, camera_topic(transport),
                                               QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.buffer = bytearray(frame)
        self.prepare_ns: dict[int, int] = {}  # stamp -> ns spent making the bytes after stamping
        self.publish_ns: dict[int, int] = {}  # stamp -> ns the publish call took (rclpy's copy, the DDS write)

    def publish(self) -> int:
        stamp = time.time_ns()
        struct.pack_into("<iI", self.buffer, 4, *divmod(stamp, 1_000_000_000))
        data = bytes(self.buffer)
        before = time.time_ns()
        self.prepare_ns[stamp] = before - stamp
        self.publisher.publish(data)
        self.publish_ns[stamp] = time.time_ns() - before
        return stamp


@dataclass
class RateResult:
    """One rate tried: frames sent, labels received, drops and the Segmenter's time meanwhile."""

    rate_hz: float
    sent: int
    served: int
    segmenter_ms_p50: float

    @property
    def dropped(self) -> int:
        return self.sent - self.served


@dataclass
class _Session:
    node: Any
    executor: Any
    context: Any
    recorder: _Recorder
    subscriptions: dict[str, Any] = field(default_factory=dict)
    spinning: bool = True
    thread: threading.Thread | None = None


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "n": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "n": len(values)}


class NodeBench:
    """The camera and subscriber side of the benchmark, in an rclpy context of its own."""

    def __init__(self, namespace: str, subscriber: str = "rcl") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        context = Context()
        rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
        node = Node("rtseg_bench_node_client", namespace=namespace, context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        self.session = _Session(node, executor, context, _Recorder())
        self.subscriber = subscriber
        self.session.thread = threading.Thread(target=self._spin, daemon=True, name="bench-spin")
        self.session.thread.start()
        from std_msgs.msg import String

        from rtseg_ros.ros.interfaces import qos_profile
        self.timings = node.create_subscription(String, Topics.TIMINGS.name, self.session.recorder.timing,
                                                qos_profile(Topics.TIMINGS.qos))
        from diagnostic_msgs.msg import DiagnosticArray

        from rtseg_ros.ros.interfaces import diagnostic_name
        self._status_name = diagnostic_name(f"{namespace.rstrip('/')}/segmentation_node")
        self._engine_state: str | None = None
        self._diagnostics = node.create_subscription(DiagnosticArray, Topics.DIAGNOSTICS.name, self._on_diagnostics,
                                                     qos_profile(Topics.DIAGNOSTICS.qos))
        self.camera: _Camera | None = None

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == self._status_name:
                self._engine_state = next((kv.value for kv in status.values if kv.key == "engine_state"), None)

    def engine_idle(self) -> bool:
        """The node's last /diagnostics said that no engine is being built (its builds would share the cores)."""
        from rtseg_ros.engines.serving import EngineState

        return self._engine_state == EngineState.SERVING

    def _spin(self) -> None:
        while self.session.spinning:
            self.session.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        import rclpy

        self.subscribe([])
        self.session.spinning = False
        if self.session.thread is not None:
            self.session.thread.join(2.0)
        self.session.executor.shutdown()
        self.session.node.destroy_node()
        rclpy.try_shutdown(context=self.session.context)

    def subscribe(self, topics: Iterable[str]) -> None:
        """Subscribe (raw) to exactly ``topics`` of the node's image outputs."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        wanted = set(topics)
        for topic in list(self.session.subscriptions):
            if topic not in wanted:
                subscription = self.session.subscriptions.pop(topic)
                if isinstance(subscription, _RclListener):
                    subscription.destroy()
                else:
                    self.session.node.destroy_subscription(subscription)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for topic in wanted - set(self.session.subscriptions):
            record = functools.partial(self.session.recorder.output, topic)
            self.session.subscriptions[topic] = (
                _RclListener(self.session.node, topic, qos, record) if self.subscriber == "rcl" else
                self.session.node.create_subscription(Image, topic, record, qos, raw=True))

    def use_frame(self, frame: bytes, transport: str) -> None:
        if self.camera is not None:
            self.session.node.destroy_publisher(self.camera.publisher)
        self.camera = _Camera(self.session.node, frame, transport)

    def wait(self, condition: Any, timeout_s: float, what: str, process: Any = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if process is not None:
                process.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.01)

    def connected(self) -> bool:
        # Publishers counted by topic in the graph (Humble's rclpy Subscription has no get_publisher_count).
        node = self.session.node
        topics = [*self.session.subscriptions, node.resolve_topic_name(Topics.TIMINGS.name)]
        return (self.camera is not None and self.camera.publisher.get_subscription_count() > 0
                and all(node.count_publishers(topic) > 0 for topic in topics))

    def set_parameter(self, node_path: str, name: str, value: Any, timeout_s: float = 10.0) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.session.node.create_client(SetParameters, f"{node_path}/set_parameters")
        try:
            self.wait(client.service_is_ready, timeout_s, f"{node_path}/set_parameters")
            future = client.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
            self.wait(future.done, timeout_s, f"setting {name}")
            result = future.result().results[0]
            if not result.successful:
                raise RuntimeError(f"the node refused {name}={value!r}: {result.reason}")
        finally:
            self.session.node.destroy_client(client)


def _latency_case(bench: NodeBench, topics: list[str], frames: int, warmup: int, process: Any,
                  timeout_s: float) -> dict[str, Any]:
    """Frames one at a time; per frame the outputs' latencies and the node's timings."""
    recorder, camera = bench.session.recorder, bench.camera
    assert camera is not None
    recorder.clear()
    stamps = []
    for index in range(warmup + frames):
        stamp = camera.publish()

        def arrived(stamp: int = stamp) -> bool:
            with recorder.lock:
                return stamp in recorder.timings and all(stamp in recorder.arrivals.get(t, {}) for t in topics)
        try:
            bench.wait(arrived, timeout_s, "the frame's outputs", process)
        except TimeoutError:
            continue  # a frame lost on the way (best-effort input): not a latency sample
        if index >= warmup:
            stamps.append(stamp)
        time.sleep(0.02)  # let the node's last publishes and the timings settle
    labels_topic = topics[0]
    rows: dict[str, list[float]] = {k: [] for k in (
        "segmenter_ms", "labels_latency_ms", "all_outputs_latency_ms", "overhead_ms", "all_outputs_overhead_ms",
        "overhead_incl_camera_publish_ms",
        "transport_in_ms", "handoff_ms", "decode_ms", "around_segmenter_ms", "publish_ms", "transport_out_ms",
        "camera_copy_ms", "camera_publish_call_ms")}
    with recorder.lock:
        for stamp in stamps:
            timing = recorder.timings[stamp]
            copy_ns = camera.prepare_ns.get(stamp, 0)
            publish_ns = camera.publish_ns.get(stamp, 0)
            # What the camera spends making and publishing its message is not the node's.
            sent = stamp + copy_ns + publish_ns
            labels_at = recorder.arrivals[labels_topic][stamp]
            last_at = max(recorder.arrivals[t][stamp] for t in topics)
            segmenter = timing["segmenter_ms"]["total"]
            rows["segmenter_ms"].append(segmenter)
            rows["labels_latency_ms"].append((labels_at - sent) / 1e6)
            rows["all_outputs_latency_ms"].append((last_at - sent) / 1e6)
            rows["overhead_ms"].append((labels_at - sent) / 1e6 - segmenter)
            rows["all_outputs_overhead_ms"].append((last_at - sent) / 1e6 - segmenter)
            rows["overhead_incl_camera_publish_ms"].append((labels_at - sent + publish_ns) / 1e6 - segmenter)
            rows["transport_in_ms"].append((timing["received_ns"] - sent) / 1e6)
            rows["handoff_ms"].append((timing["started_ns"] - timing["received_ns"]) / 1e6)
            rows["decode_ms"].append((timing["decoded_ns"] - timing["started_ns"]) / 1e6)
            rows["around_segmenter_ms"].append((timing["segmented_ns"] - timing["decoded_ns"]) / 1e6 - segmenter)
            rows["publish_ms"].append((timing["published_ns"] - timing["segmented_ns"]) / 1e6)
            rows["transport_out_ms"].append((last_at - timing["published_ns"]) / 1e6)
            rows["camera_copy_ms"].append(copy_ns / 1e6)
            rows["camera_publish_call_ms"].append(publish_ns / 1e6)
    return {key: _percentiles(values) for key, values in rows.items()}


def _network_alone_vs_node(bench: NodeBench, labels_topic: str, config: Any, node_settings: dict[str, Any],
                           frame_size: tuple[int, int], frames: int, warmup: int, process: Any,
                           timeout_s: float) -> dict[str, Any]:
    """The same Segmenter alone (in this process) and inside the node, interleaved frame by frame.

    This process builds the node's Segmenter (same config, weights and engine cache, the node's thread
    count) and, per frame, runs it once on the very pixels the camera sends, then sends the frame to the
    node and waits for its labels, so both figures come from the same minutes of the machine. While the
    network runs alone here the node is idle, and while the node runs this process only waits. Reports
    both Segmenter times, their ratio, and the user's figure: stamp-to-labels minus the network alone.
    """
    from rtseg_ros.datasets.synthetic import make_scene
    from rtseg_ros.engines import Segmenter, set_cpu_threads

    threads = set_cpu_threads(int(node_settings.get("cpu_threads", 0)))  # the node's own rule for its count
    segmenter = Segmenter(config)
    rgb = make_scene(1, *frame_size)[0]  # the pixels of the camera's rgb8 frame (_frame_bytes)
    for _ in range(max(warmup, 1)):
        segmenter.segment(rgb)
    recorder, camera = bench.session.recorder, bench.camera
    assert camera is not None
    recorder.clear()
    alone, inside, latency, minus_alone = [], [], [], []
    for index in range(warmup + frames):
        alone_ms = segmenter.segment(rgb).timings_ms["total"]
        stamp = camera.publish()

        def arrived(stamp: int = stamp) -> bool:
            with recorder.lock:
                return stamp in recorder.timings and stamp in recorder.arrivals.get(labels_topic, {})
        try:
            bench.wait(arrived, timeout_s, "the frame's labels", process)
        except TimeoutError:
            continue
        if index < warmup:
            continue
        with recorder.lock:
            sent = stamp + camera.prepare_ns.get(stamp, 0) + camera.publish_ns.get(stamp, 0)
            labels_ms = (recorder.arrivals[labels_topic][stamp] - sent) / 1e6
            inside_ms = recorder.timings[stamp]["segmenter_ms"]["total"]
        alone.append(alone_ms)
        inside.append(inside_ms)
        latency.append(labels_ms)
        minus_alone.append(labels_ms - alone_ms)
        time.sleep(0.02)
    if not alone:
        raise RuntimeError("no frame came back from the node while timing the network alone against it")
    ratio = statistics.median(inside) / statistics.median(alone)
    return {"frame_size": list(frame_size), "threads": threads, "config": config.diagnostic_fields(),
            "segmenter_alone_ms": _percentiles(alone), "segmenter_in_node_ms": _percentiles(inside),
            "in_node_over_alone": round(ratio, 4), "labels_latency_ms": _percentiles(latency),
            "labels_latency_minus_alone_ms": _percentiles(minus_alone)}


def format_alone_vs_node(result: dict[str, Any]) -> str:
    """One line: the network alone and inside the node, and stamp-to-labels minus the network alone."""
    height, width = result["frame_size"]
    return (f"network alone vs inside the node ({height}x{width} rgb8 labels, {result['threads']} thread(s), "
            f"interleaved): alone p50 {result['segmenter_alone_ms']['p50']:.1f} ms, in the node p50 "
            f"{result['segmenter_in_node_ms']['p50']:.1f} ms ({result['in_node_over_alone']:.3f}x); stamp-to-labels "
            f"minus the network alone p50 {result['labels_latency_minus_alone_ms']['p50']:.1f} / p95 "
            f"{result['labels_latency_minus_alone_ms']['p95']:.1f} ms")


def _rate_trial(bench: NodeBench, labels_topic: str, rate_hz: float, duration_s: float, process: Any) -> RateResult:
    recorder, camera = bench.session.recorder, bench.camera
    assert camera is not None
    recorder.clear()
    period = 1.0 / rate_hz
    count = max(int(duration_s * rate_hz), 10)
    stamps = []
    start = time.monotonic()
    for index in range(count):
        delay = start + index * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stamps.append(camera.publish())
    time.sleep(1.0)
    process.check_running()
    with recorder.lock:
        served = sum(1 for stamp in stamps if stamp in recorder.arrivals.get(labels_topic, {}))
        segmenter = [recorder.timings[s]["segmenter_ms"]["total"] for s in stamps if s in recorder.timings]
    return RateResult(rate_hz, count, served, float(statistics.median(segmenter)) if segmenter else float("nan"))


def _rate_search(bench: NodeBench, labels_topic: str, model_ms: float, duration_s: float, process: Any,
                 fractions: Sequence[float], refinements: int = 2) -> dict[str, Any]:
    """Rates at ``fractions`` of 1000 / model latency, rising, until one drops a frame; then
    ``refinements`` halvings of the gap between the last rate with no drop and the first with one.
    Returns the highest rate with no drop, against the model rate measured alone (``model_ms``) and
    against the Segmenter's own time during that trial (the camera's and the middleware's work on the
    same cores slows the network down)."""
    tried = []

    def attempt(fraction: float) -> RateResult:
        result = _rate_trial(bench, labels_topic, fraction * 1000.0 / model_ms, duration_s, process)
        tried.append({**asdict(result), "dropped": result.dropped, "fraction_of_model_rate": round(fraction, 4)})
        return result

    best: RateResult | None = None
    passed, failed = None, None
    for fraction in fractions:
        result = attempt(fraction)
        if result.dropped == 0:
            best, passed = result, fraction
        else:
            failed = fraction
            if best is not None:
                break
    if passed is not None and failed is not None and failed > passed:
        for _ in range(refinements):
            middle = (passed + failed) / 2
            result = attempt(middle)
            if result.dropped == 0:
                best, passed = result, middle
            else:
                failed = middle
    model_rate = 1000.0 / model_ms
    return {"model_latency_ms": round(model_ms, 2), "model_rate_hz": round(model_rate, 2),
            "highest_zero_drop_rate_hz": round(best.rate_hz, 2) if best else None,
            "ratio_to_model_rate": round(best.rate_hz / model_rate, 3) if best else None,
            "segmenter_ms_p50_at_that_rate": round(best.segmenter_ms_p50, 2) if best else None,
            "ratio_to_segmenter_rate_at_that_rate": (round(best.rate_hz * best.segmenter_ms_p50 / 1000.0, 3)
                                                     if best else None),
            "tried": tried}


def run_node_bench(config: Any, cases: Sequence[NodeCase], *, frames: int = 10, warmup: int = 2,
                   rate_config: Any = None, rate_frame_size: tuple[int, int] = (720, 1280),
                   rate_duration_s: float = 4.0,
                   rate_fractions: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05),
                   log_dir: str | Path = ".", namespace: str = "/rtseg_bench",
                   frame_timeout_s: float = 60.0, node_settings: dict[str, Any] | None = None,
                   subscriber: str = "rcl", alone_frames: int = 0, echo: Any = print) -> dict[str, Any]:
    """Run the latency cases on a node serving ``config``, then (if ``rate_config``) the rate search.

    Args:
        config: the node's :class:`~rtseg_ros.engines.SegmenterConfig` for the latency cases.
        cases: the rows; one node per input transport (``input_transport`` is read-only).
        frames / warmup: timed and untimed frames per row.
        rate_config: the config of the rate search (one where the model is faster than the camera, e.g. a
            small network size), or ``None`` to skip it.
        rate_frame_size: the frames of the rate search (rgb8, labels only).
        node_settings: node-only parameters of both nodes (``cpu_threads``, ``qos_depth`` ...), by name.
        subscriber: how this process takes the node's outputs: ``rcl`` (rcl's serialised take into a
            reused buffer, about what a C++ subscriber pays) or ``rclpy`` (a ``raw=True`` subscription,
            which copies each message once more into ``bytes``).
        alone_frames: after the first rgb8 labels-only row, this many frames of the same Segmenter alone
            interleaved with the node's (:func:`_network_alone_vs_node`); 0 skips it.
    """
    from rtseg_ros.ros.node_process import NodeProcess, loopback_dds_environment, node_command

    os.environ.update(loopback_dds_environment(os.environ))  # this process's DDS too, before rclpy starts
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    node_path = f"{namespace}/segmentation_node"
    labels_topic = f"{namespace}/{Topics.LABELS.name}"
    topic_of = {"labels": labels_topic, "confidence": f"{namespace}/{Topics.CONFIDENCE.name}",
                "overlay": f"{namespace}/{Topics.OVERLAY.name}"}
    bench = NodeBench(namespace, subscriber)
    alone = None
    try:
        for transport in INPUT_TRANSPORTS:
            group = [case for case in cases if case.transport == transport]
            if not group:
                continue
            height, width = group[0].frame_size
            settings = {**(node_settings or {}), "input_transport": transport, "camera_height": height,
                        "camera_width": width}
            command = node_command(config, node_settings=settings, namespace=namespace,
                                   remaps={Topics.IMAGE.name: camera_topic(transport)})
            with NodeProcess(command, log_dir / f"bench_node_{transport}.log") as process:
                for case in group:
                    topics = [topic_of[name] for name in case.outputs.split("+")]
                    bench.subscribe(topics)
                    frame = _frame_bytes(case.frame_size, case.encoding, _header())
                    bench.use_frame(frame, transport)
                    bench.wait(bench.connected, STARTUP_TIMEOUT_S, "the node to come up", process)
                    # The start-up builds of the other variants (camera_width/height) would be timed too.
                    bench.wait(bench.engine_idle, STARTUP_TIMEOUT_S, "the node's engine builds to end", process)
                    bench.set_parameter(node_path, "confidence_encoding", case.confidence_encoding)
                    time.sleep(0.5)  # discovery of the new subscriptions settles
                    result = _latency_case(bench, topics, frames, warmup, process, frame_timeout_s)
                    row = {"case": case.label, **asdict(case), **result}
                    rows.append(row)
                    echo(f"{case.label}: segmenter {result['segmenter_ms']['p50']:.1f} ms, labels latency "
                         f"{result['labels_latency_ms']['p50']:.1f} ms, overhead p50 {result['overhead_ms']['p50']:.1f} "
                         f"/ p95 {result['overhead_ms']['p95']:.1f} ms, with the camera's publish call "
                         f"{result['overhead_incl_camera_publish_ms']['p50']:.1f} ms (all outputs p50 "
                         f"{result['all_outputs_overhead_ms']['p50']:.1f} ms; in {result['transport_in_ms']['p50']:.1f}"
                         f", hand-off {result['handoff_ms']['p50']:.1f}, decode {result['decode_ms']['p50']:.1f}, "
                         f"around the Segmenter {result['around_segmenter_ms']['p50']:.1f}, publish "
                         f"{result['publish_ms']['p50']:.1f}, out {result['transport_out_ms']['p50']:.1f})")
                    if alone_frames and alone is None and case.encoding == "rgb8" and case.outputs == "labels":
                        alone = _network_alone_vs_node(bench, labels_topic, config, dict(node_settings or {}),
                                                       case.frame_size, alone_frames, warmup, process,
                                                       frame_timeout_s)
                        echo(format_alone_vs_node(alone))
        rate = None
        if rate_config is not None:
            height, width = rate_frame_size
            settings = {**(node_settings or {}), "camera_height": height, "camera_width": width}
            command = node_command(rate_config, node_settings=settings, namespace=namespace)
            with NodeProcess(command, log_dir / "bench_node_rate.log") as process:
                bench.subscribe([labels_topic])
                bench.use_frame(_frame_bytes(rate_frame_size, "rgb8", _header()), "raw")
                bench.wait(bench.connected, STARTUP_TIMEOUT_S, "the node to come up", process)
                bench.wait(bench.engine_idle, STARTUP_TIMEOUT_S, "the node's engine builds to end", process)
                time.sleep(0.5)
                latency = _latency_case(bench, [labels_topic], frames, warmup, process, frame_timeout_s)
                model_ms = latency["segmenter_ms"]["p50"]
                rate = _rate_search(bench, labels_topic, model_ms, rate_duration_s, process, rate_fractions)
                rate["frame_size"] = list(rate_frame_size)
                rate["config"] = rate_config.diagnostic_fields()
                echo(f"rate search at {height}x{width} rgb8, labels: model {model_ms:.1f} ms alone "
                     f"({rate['model_rate_hz']:.1f} Hz); highest zero-drop rate {rate['highest_zero_drop_rate_hz']} Hz "
                     f"({rate['ratio_to_model_rate']} of the model rate; the Segmenter took "
                     f"{rate['segmenter_ms_p50_at_that_rate']} ms p50 meanwhile, "
                     f"{rate['ratio_to_segmenter_rate_at_that_rate']} of its rate then)")
    finally:
        bench.close()
    return {"rows": rows, "rate_search": rate, "network_alone_vs_node": alone, "config": config.diagnostic_fields(),
            "node_settings": dict(node_settings or {}), "subscriber": subscriber,
            "dds_profile": "config/fastdds_localhost.xml"}


def _header() -> Any:
    from std_msgs.msg import Header

    return Header(frame_id="bench_camera")


def machine_state() -> dict[str, Any]:
    """The machine block of the report (``rtseg bench``'s), with the load average now."""
    from rtseg_ros.benchmarks.engines import machine_info

    return machine_info()


def write_report(path: str | Path, report: dict[str, Any], command: str, machine: dict[str, Any],
                 machine_after: dict[str, Any] | None = None) -> None:
    """The JSON report: the command, the machine (load average before and after) and the results."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    document = {"command": command, "date_utc": now, "machine": machine,
                "load_average_after": (machine_after or {}).get("load_average"), **report}
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the latency rows."""
    lines = ["| case | Segmenter ms p50 | labels latency ms p50 | overhead ms p50 / p95 | all outputs overhead p50 "
             "| overhead with the camera's publish call p50 |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['segmenter_ms']['p50']:.1f} | {row['labels_latency_ms']['p50']:.1f} | "
                     f"{row['overhead_ms']['p50']:.1f} / {row['overhead_ms']['p95']:.1f} | "
                     f"{row['all_outputs_overhead_ms']['p50']:.1f} | "
                     f"{row['overhead_incl_camera_publish_ms']['p50']:.1f} |")
    return "\n".join(lines)


def _node_settings(items: Iterable[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` texts -> node-only parameter values (:func:`rtseg_ros.cli.options.parse_parameter`).

    Raises:
        click.BadParameter: not a node parameter, or one that sets the engine (those come from the
            benchmark's own options).
    """
    import click

    from rtseg_ros.cli.options import parse_parameter
    from rtseg_ros.names import PARAMETERS

    settings = dict(parse_parameter(item) for item in items)
    for name in settings:
        if PARAMETERS[name].rebuilds_engine:
            raise click.BadParameter(f"{name} sets the engine: use the benchmark's own options", param_hint="-p")
    return settings


def _cli() -> Any:
    """The ``rtseg bench node`` click command (made on demand: click is only needed here)."""
    import shlex
    import sys

    import click

    from rtseg_ros.cli.options import output_resolution_callback, parse_size
    from rtseg_ros.names import BACKENDS, MODEL_NAMES, OUTPUT_RESOLUTIONS

    @click.command("node", context_settings={"show_default": True})
    @click.option("--model", default="atonet", type=click.Choice(MODEL_NAMES), help="Network of the latency rows.")
    @click.option("--resolution", default="256x512", help="Network input size of the latency rows, HEIGHTxWIDTH.")
    @click.option("--backend", default="torch", type=click.Choice(BACKENDS), help="Backend of both nodes.")
    @click.option("--weights", default="",
                  help="Weights of every node (a path or a manifest name such as synthetic_toy; empty: the "
                       "fixed-seed random weights). The network's time does not depend on them; labels by cells "
                       "do (a trained model's labels come in regions, random weights' change from pixel to pixel).")
    @click.option("--output-resolution", default=OUTPUT_RESOLUTIONS[0], callback=output_resolution_callback,
                  help="Labels at the camera frame's size (input), the network's, or WIDTHxHEIGHT (a depth "
                       "camera's, as the Nav2 preset: --output-resolution 640x480 -p confidence_encoding=mono8).")
    @click.option("--frame-size", "frame_sizes", multiple=True, default=("1024x2048",),
                  help="Camera frame size(s) of the latency rows (repeatable); --full: 1024x2048 and 720x1280.")
    @click.option("--encoding", "encodings", multiple=True, type=click.Choice(INPUT_ENCODINGS), default=("rgb8",),
                  help="Input encoding(s) (repeatable; jpeg is sensor_msgs/CompressedImage).")
    @click.option("--full", is_flag=True, help="Every frame size x encoding x output set (a long run).")
    @click.option("--frames", default=10, type=click.IntRange(min=1), help="Timed frames per row.")
    @click.option("--warmup", default=2, type=click.IntRange(min=0), help="Untimed frames per row.")
    @click.option("--rate-resolution", default="64x128",
                  help="Network size of the rate search (a model faster than the camera); 'none' skips it.")
    @click.option("--rate-frame-size", default="720x1280", help="Camera frame size of the rate search.")
    @click.option("--rate-duration", default=4.0, type=click.FloatRange(min=0.5), help="Seconds per rate tried.")
    @click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
                  help="A node-only parameter of both nodes (repeatable), e.g. -p cpu_threads=1 -p qos_depth=2.")
    @click.option("--subscriber", default="rcl", type=click.Choice(SUBSCRIBERS),
                  help="How the bench takes the node's outputs: rcl's serialised take (about a C++ subscriber's "
                       "cost) or an rclpy raw=True subscription (one more copy of each message).")
    @click.option("--alone-frames", default=10, type=click.IntRange(min=0),
                  help="Frames of the node's Segmenter run alone in this process, interleaved with the node's, "
                       "after the rgb8 labels row (0: skip).")
    @click.option("--cameras", default=0, type=click.IntRange(min=0),
                  help="N > 0: instead of the rows above, one N-camera node against N single-camera nodes on the "
                       "same frames (network at --rate-resolution, --backend): memory, engine builds, served rates, "
                       "latency, batch sizes.")
    @click.option("--camera-rate", default=15.0, type=click.FloatRange(min=0.1), help="--cameras: Hz per camera.")
    @click.option("--camera-frame-size", default="480x640", help="--cameras: each camera's frame size, HxW.")
    @click.option("--camera-duration", default=10.0, type=click.FloatRange(min=1.0),
                  help="--cameras: seconds measured per layout (after 3 s of warm-up).")
    @click.option("--params-file", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="A node params file (a preset such as config/nav2_semantic_layer.yaml): its model, input "
                       "size and output_resolution replace the options above, its camera size is the frame size, "
                       "its node-only parameters apply, and the rows are labels and labels + its confidence "
                       "encoding. --backend still picks the backend.")
    @click.option("--log-dir", type=click.Path(file_okay=False), default=".", help="Where the node logs go.")
    @click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON here.")
    def node(model, resolution, backend, weights, output_resolution, frame_sizes, encodings, full, frames, warmup,
             rate_resolution, rate_frame_size, rate_duration, params, subscriber, alone_frames, cameras, camera_rate,
             camera_frame_size, camera_duration, params_file, log_dir, json_path) -> None:
        """Overhead of the segmentation node around its Segmenter, and the highest camera rate it serves.

        Starts the real node, feeds it pre-serialised frames and reports, per row, the Segmenter's time,
        the stamp-to-subscriber latency and their difference (the overhead), p50 and p95; then the highest
        camera rate served with no drop against 1000 / model latency.

        \b
        rtseg bench node --json node.json
        rtseg bench node --full --json node_full.json
        rtseg bench node --cameras 4 --backend onnxruntime --json cameras4.json
        """
        from rtseg_ros.engines import SegmenterConfig

        if cameras:
            _multi_camera_cli(click, cameras, model, weights, rate_resolution, backend, output_resolution, camera_rate,
                              camera_frame_size, camera_duration, params, log_dir, json_path)
            return

        node_settings = _node_settings(params)
        if params_file:
            config, preset_settings, cases = preset_cases(params_file, backend, encodings)
            node_settings = {**preset_settings, **node_settings}
            model = config.model
            if weights:
                config = dataclasses.replace(config, weights=weights)
        else:
            height, width = parse_size(resolution)
            config = SegmenterConfig(model=model, weights=weights or None, input_height=height, input_width=width,
                                     backend=backend, output_resolution=output_resolution)
            sizes = [parse_size(size) for size in frame_sizes]
            if full:
                cases = full_cases()
            else:
                cases = [NodeCase(size, encoding, case.outputs, case.confidence_encoding)
                         for size in sizes for encoding in encodings for case in default_cases(size)]
        rate_config = None
        if rate_resolution != "none":
            rate_height, rate_width = parse_size(rate_resolution)
            rate_config = SegmenterConfig(model=model, weights=config.weights, input_height=rate_height,
                                          input_width=rate_width, backend=backend, output_resolution="network")
        machine = machine_state()
        click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores; load average "
                   f"{', '.join(f'{v:.2f}' for v in machine['load_average'])}")
        from rtseg_ros.machine import busy_warning

        for warning in (busy_warning(machine["load_average"], machine["cores"]),):
            if warning:
                click.echo(f"WARNING: {warning}", err=True)
        report = run_node_bench(config, cases, frames=frames, warmup=warmup, rate_config=rate_config,
                                rate_frame_size=parse_size(rate_frame_size), rate_duration_s=rate_duration,
                                log_dir=log_dir, node_settings=node_settings, subscriber=subscriber,
                                alone_frames=alone_frames, echo=click.echo)
        after = machine_state()
        click.echo("")
        click.echo(format_table(report["rows"]))
        click.echo(f"load average after: {', '.join(f'{v:.2f}' for v in after['load_average'])}")
        if json_path:
            args = sys.argv[1:]
            args = args[2:] if args[:2] == ["bench", "node"] else args  # rtseg bench node / python -m
            command = " ".join(["rtseg bench node", *(shlex.quote(a) for a in args)])
            write_report(json_path, report, command, machine, after)
            click.echo(f"wrote {json_path}")

    return node


def _multi_camera_cli(click: Any, cameras: int, model: str, weights: str, resolution: str, backend: str,
                      output_resolution: str, rate_hz: float, frame_size: str, duration_s: float, params: Iterable[str], log_dir: str,
                      json_path: str | None) -> None:
    """``rtseg bench node --cameras N``: run :mod:`rtseg_ros.benchmarks.multi_camera` and report it."""
    import shlex
    import sys

    from rtseg_ros.benchmarks.multi_camera import format_multi_camera, run_multi_camera_bench
    from rtseg_ros.cli.options import parse_size
    from rtseg_ros.engines import SegmenterConfig
    from rtseg_ros.machine import busy_warning

    height, width = parse_size(resolution)
    config = SegmenterConfig(model=model, weights=weights or None, input_height=height, input_width=width,
                             backend=backend, output_resolution=output_resolution)
    machine = machine_state()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores; load average "
               f"{', '.join(f'{v:.2f}' for v in machine['load_average'])}")
    warning = busy_warning(machine["load_average"], machine["cores"])
    if warning:
        click.echo(f"WARNING: {warning}", err=True)
    report = run_multi_camera_bench(config, cameras, frame_size=parse_size(frame_size), rate_hz=rate_hz,
                                    duration_s=duration_s, node_settings=_node_settings(params),
                                    log_dir=Path(log_dir) / f"cameras{cameras}")
    after = machine_state()
    click.echo(format_multi_camera(report))
    click.echo(f"load average after: {', '.join(f'{v:.2f}' for v in after['load_average'])}")
    if json_path:
        args = sys.argv[1:]
        args = args[2:] if args[:2] == ["bench", "node"] else args
        write_report(json_path, report, " ".join(["rtseg bench node", *(shlex.quote(a) for a in args)]), machine,
                     after)
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    _cli()()
