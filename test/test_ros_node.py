"""The segmentation node over real rclpy on loopback, the node in its own process.

One node (raw input) and one with compressed input serve the whole module; a test client in this
process publishes frames and checks what comes back.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros_helpers import (
    STARTUP_TIMEOUT_S,
    CameraInfo,
    Client,
    CompressedImage,
    Image,
    NodeProcess,
    image_msg,
    label_info_json,
    labels_of,
    make_header,
    node_command,
    raw_image_msg,
    write_random_checkpoint,
)
from rtseg_ros.datasets.labels import CITYSCAPES
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.io.images import image_msg_to_array
from rtseg_ros.names import Topics

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RAW = "/raw"  # namespaces of the two nodes
COMPRESSED = "/compressed"
NETWORK_SIZE = (64, 128)  # height, width
FRAME_SIZE = (72, 120)  # deliberately not the network size


def start_node(weights: Path, namespace: str, log: Path, **node_settings: object) -> NodeProcess:
    config = SegmenterConfig(model="mfaranet", weights=str(weights), input_height=NETWORK_SIZE[0],
                             input_width=NETWORK_SIZE[1])
    settings = {"qos_reliability": "reliable", "qos_depth": 1, **node_settings}
    return NodeProcess(node_command(config, node_settings=settings, namespace=namespace), log)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("weights") / "mfaranet_random.pth")


@pytest.fixture(scope="module")
def nodes(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    processes = {
        RAW: start_node(weights, RAW, logs / "raw.log"),
        COMPRESSED: start_node(weights, COMPRESSED, logs / "compressed.log", input_transport="compressed"),
    }
    yield processes
    for process in processes.values():
        process.request_stop()
    for process in processes.values():
        process.stop()


@pytest.fixture(scope="module")
def client(nodes: dict[str, NodeProcess]) -> Iterator[Client]:
    client = Client()
    for ns, process in nodes.items():
        client.wait_ready(ns, process, transport="compressed" if ns == COMPRESSED else "raw")
    yield client
    client.close()


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return make_scene(11, *FRAME_SIZE)[0]


def segment(client: Client, nodes: dict[str, NodeProcess], msg: Image, ns: str = RAW) -> np.ndarray:
    (labels,) = client.send_and_collect(ns, msg, [f"{ns}/segmentation/labels"], nodes[ns])
    return labels_of(labels)


def test_outputs_carry_the_input_header(client: Client, nodes: dict[str, NodeProcess], scene: np.ndarray) -> None:
    info = CameraInfo(header=make_header(), height=FRAME_SIZE[0], width=FRAME_SIZE[1],
                      k=[50.0, 0, 60, 0, 50, 36, 0, 0, 1])
    feeder = client.feeder(RAW)
    client.wait_for(lambda: feeder.camera_info_subscribers > 0, STARTUP_TIMEOUT_S, "the node's camera_info input",
                    nodes[RAW])
    feeder.publish(info)
    client.spin_for(0.3)  # camera_info and image are separate topics: let the info land first
    header = make_header("front_camera")
    outputs = [f"{RAW}/segmentation/{name}" for name in ("labels", "confidence", "overlay", "camera_info")]
    labels, confidence, overlay, camera_info = client.send_and_collect(
        RAW, image_msg(scene, "rgb8", header), outputs, nodes[RAW])

    for msg in (labels, confidence, overlay, camera_info):
        assert msg.header.stamp == header.stamp and msg.header.frame_id == "front_camera"
    height, width = FRAME_SIZE
    assert (labels.encoding, labels.height, labels.width) == ("mono8", height, width)
    assert labels_of(labels).max() < CITYSCAPES.num_classes
    assert (confidence.encoding, confidence.height, confidence.width) == ("32FC1", height, width)
    probabilities = np.frombuffer(confidence.data, np.float32)
    assert probabilities.min() >= 1.0 / CITYSCAPES.num_classes - 1e-6 and probabilities.max() <= 1.0
    assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", height, width)
    # Labels at the frame's size: camera_info goes out unscaled.
    assert (camera_info.width, camera_info.height) == (width, height) and list(camera_info.k) == list(info.k)


def _equivalents(scene: np.ndarray) -> list[tuple[str, Image, np.ndarray]]:
    """(name, message, the rgb8 frame with the same pixels) for every raw encoding."""
    rgba = np.concatenate([scene, np.full(scene.shape[:2] + (1,), 255, np.uint8)], axis=2)
    grey = cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY)
    mono16 = grey.astype(np.uint16) * 257
    packed = np.ascontiguousarray(scene[..., :2])  # any bytes are a valid YUV 4:2:2 image
    mosaic = grey
    cases = [
        ("bgr8", image_msg(np.ascontiguousarray(scene[..., ::-1]), "bgr8"), scene),
        ("rgba8", image_msg(rgba, "rgba8"), scene),
        ("bgra8", image_msg(np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]), "bgra8"), scene),
        ("mono8", image_msg(grey, "mono8"), np.repeat(grey[..., None], 3, 2)),
        ("mono16", image_msg(mono16, "mono16"), np.repeat(grey[..., None], 3, 2)),
    ]
    for encoding in ("yuv422", "yuv422_yuy2", "uyvy", "yuyv"):
        cases.append((encoding, raw_image_msg(packed, encoding), None))
    for encoding in ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"):
        cases.append((encoding, raw_image_msg(mosaic, encoding), None))
    resolved = []
    for name, msg, rgb in cases:
        if rgb is None:
            # The equivalent frame of a converted encoding is its conversion (checked in test_io_images).
            rgb = np.ascontiguousarray(image_msg_to_array(msg)[0])
        resolved.append((name, msg, rgb))
    return resolved


def test_every_encoding_matches_its_rgb8_equivalent(client: Client, nodes: dict[str, NodeProcess],
                                                    scene: np.ndarray) -> None:
    tested = set()
    for name, msg, rgb in _equivalents(scene):
        expected = segment(client, nodes, image_msg(rgb, "rgb8"))
        got = segment(client, nodes, msg)
        np.testing.assert_array_equal(got, expected, err_msg=name)
        tested.add(name)
    from rtseg_ros.io.images import SUPPORTED_ENCODINGS

    assert tested | {"rgb8"} == set(SUPPORTED_ENCODINGS)


def test_compressed_input_matches_rgb8(client: Client, nodes: dict[str, NodeProcess], scene: np.ndarray) -> None:
    bgr = np.ascontiguousarray(scene[..., ::-1])
    _, png = cv2.imencode(".png", bgr)
    from_png = segment(client, nodes, CompressedImage(header=make_header(), format="png", data=png.tobytes()),
                       COMPRESSED)
    np.testing.assert_array_equal(from_png, segment(client, nodes, image_msg(scene, "rgb8")))

    # JPEG is lossy: the equivalent rgb8 frame is the decoded JPEG.
    _, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    decoded = np.ascontiguousarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1])
    from_jpeg = segment(client, nodes, CompressedImage(header=make_header(), format="jpeg", data=jpeg.tobytes()),
                        COMPRESSED)
    np.testing.assert_array_equal(from_jpeg, segment(client, nodes, image_msg(decoded, "rgb8")))


def _fresh_diagnostics(client: Client, nodes: dict[str, NodeProcess]) -> dict[str, str]:
    """Values of a diagnostics status of the raw node published after this call."""
    listener = client.listener(RAW)
    seen = listener.status_count
    client.wait_for(lambda: listener.status_count > seen, what="fresh diagnostics", node=nodes[RAW])
    return listener.status


def test_malformed_frames_are_counted_and_skipped(client: Client, nodes: dict[str, NodeProcess],
                                                 scene: np.ndarray) -> None:
    bad_before = int(_fresh_diagnostics(client, nodes)["frames_bad"])
    truncated = image_msg(scene, "rgb8")
    truncated.data = truncated.data[: len(truncated.data) // 2]
    wrong_step = image_msg(scene, "rgb8")
    wrong_step.step = 7
    unknown = raw_image_msg(scene, "rgb8")
    unknown.encoding = "32FC3"
    empty = Image(header=make_header(), encoding="rgb8", height=0, width=0, step=0)
    broken = [truncated, wrong_step, unknown, empty]
    feeder = client.feeder(RAW)
    for msg in broken:
        feeder.publish(msg)
        client.spin_for(0.2)  # with a history depth of 1, a frame right behind would replace it
        # A good frame after each bad one: once its labels are back the worker is idle again, so the
        # next bad frame is looked at instead of being replaced while pending (a drop, not a bad frame).
        assert segment(client, nodes, image_msg(scene, "rgb8")).shape == FRAME_SIZE
    broken_compressed = CompressedImage(header=make_header(), format="jpeg", data=b"\xff\xd8 broken")
    client.feeder(COMPRESSED).publish(broken_compressed)
    client.wait_for(lambda: "skipping bad frame" in nodes[COMPRESSED].log(), what="the compressed node's log line")

    for msg in broken:
        assert client.by_stamp(f"{RAW}/segmentation/labels", msg.header) is None
    client.wait_for(lambda: int(_fresh_diagnostics(client, nodes)["frames_bad"]) >= bad_before + len(broken),
                    what=f"{len(broken)} bad frames in the diagnostics")
    nodes[RAW].check_running()
    nodes[COMPRESSED].check_running()


def test_shared_clients_reach_the_node_in_its_namespace(nodes: dict[str, NodeProcess], client: Client,
                                                       scene: np.ndarray) -> None:
    """The package's own feeder and listener, made with the node's namespace, find its relative topics."""
    from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener

    with ClientSession() as session:
        feeder = session.add(CameraFeeder(namespace=RAW, frame_id="ns_camera", node_name="rtseg_ns_feeder",
                                          context=session.context))
        listener = session.add(OutputListener(namespace=RAW, outputs=(Topics.LABELS,), keep_messages=True,
                                              listener_name="rtseg_ns_listener", context=session.context))
        labels_topic = listener.topic(Topics.LABELS)
        assert (feeder.image_topic, labels_topic) == (f"{RAW}/image", f"{RAW}/segmentation/labels")
        nodes[RAW].wait_ready(lambda: listener.ready and feeder.connected, STARTUP_TIMEOUT_S, session.spin_once)
        assert listener.label_info_text  # the latched label_info of the node under /raw
        header = feeder.publish_frame(scene, "rgb")
        session.wait_until(lambda: listener.by_stamp(labels_topic, header) is not None, 20.0,
                           f"labels on {labels_topic}", nodes[RAW])
        labels = listener.by_stamp(labels_topic, header)
        assert labels.header.frame_id == "ns_camera" and labels_of(labels).max() < CITYSCAPES.num_classes
        stats = listener.stats(Topics.LABELS)
        assert stats.count == 1 and 0 < stats.latencies_ms[0] < 20_000
        # The node's /diagnostics status is picked out by its full path, /raw/segmentation_node.
        session.wait_until(lambda: listener.status_count > 0, 5.0, "the /raw node's diagnostics", nodes[RAW])
        assert listener.node_path == f"{RAW}/segmentation_node" and "frames_dropped" in listener.status


def test_label_info_reaches_late_joiners(nodes: dict[str, NodeProcess], client: Client) -> None:
    late = Client("rtseg_late_joiner")
    try:
        listener = late.listener(RAW)
        late.wait_for(lambda: listener.label_info is not None and listener.label_info_meta is not None,
                      what="latched label_info and label_info_meta")
        class_map = [(c.class_id, c.class_name) for c in listener.label_info.class_map]
        threshold = listener.label_info.threshold
        info = label_info_json(late.messages(f"{RAW}/segmentation/label_info_meta")[-1])
    finally:
        late.close()
    assert class_map == list(enumerate(CITYSCAPES.class_names)) and threshold == 0.0
    assert info["format"] == "rtseg_ros/label_info/1"
    assert info["label_set"] == "cityscapes" and info["num_classes"] == 19
    assert [c["name"] for c in info["classes"]] == list(CITYSCAPES.class_names)
    assert [tuple(c["color"]) for c in info["classes"]] == list(CITYSCAPES.colors)
    assert info["model"] == "mfaranet" and info["input_size"] == list(NETWORK_SIZE)


def test_fast_publisher_gets_no_backlog(client: Client, nodes: dict[str, NodeProcess], scene: np.ndarray) -> None:
    topic = f"{RAW}/segmentation/labels"
    dropped_before = int(_fresh_diagnostics(client, nodes)["frames_dropped"])
    feeder = client.feeder(RAW)
    burst = [image_msg(scene, "rgb8") for _ in range(150)]
    first_output = len(client.received(topic))
    for msg in burst:
        feeder.publish(msg)
        client.session.spin_once(0.002)
    burst_end = time.monotonic()
    last = burst[-1].header
    # The newest frame is always segmented in the end ...
    client.wait_for(lambda: client.by_stamp(topic, last) is not None, what="the last frame of the burst")
    client.spin_for(1.0)  # anything still queued would arrive now
    outputs = client.received(topic)[first_output:]
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in outputs}
    burst_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in burst}
    assert stamps <= burst_stamps
    # ... and after the burst only the frames in hand and pending remain (plus one in the middleware
    # queue), not a backlog of the 150 published.
    after_burst = [arrival for arrival, _ in outputs if arrival > burst_end]
    assert len(after_burst) <= 3, f"{len(after_burst)} outputs after the burst ended"
    assert len(outputs) < len(burst)
    dropped = int(_fresh_diagnostics(client, nodes)["frames_dropped"])
    assert dropped > dropped_before


def test_diagnostics_report_rates_and_engine(client: Client, nodes: dict[str, NodeProcess]) -> None:
    values = _fresh_diagnostics(client, nodes)
    for key in ("input_rate_hz", "output_rate_hz", "latency_p50_ms", "latency_p95_ms", "frames_dropped",
                "frames_bad", "engine_state"):
        assert key in values
    assert (values["backend"], values["precision"], values["model"]) == ("torch", "fp32", "mfaranet")
    assert values["input_size"] == f"{NETWORK_SIZE[0]}x{NETWORK_SIZE[1]}"


def test_runtime_parameter_changes_rebuild_the_engine(client: Client, nodes: dict[str, NodeProcess],
                                                     scene: np.ndarray, weights: Path) -> None:
    from rtseg_ros.engines import Segmenter, SegmenterConfig

    label_info = f"{RAW}/segmentation/label_info_meta"
    infos = len(client.messages(label_info))

    def swapped() -> dict:
        """The JSON label_info_meta document the node re-publishes after a swap."""
        client.wait_for(lambda: len(client.messages(label_info)) > infos, what="the engine swap", node=nodes[RAW])
        return label_info_json(client.messages(label_info)[-1])

    # Invalid values are rejected with a reason and change nothing.
    rejected = client.set_parameters(f"{RAW}/segmentation_node", {"model": "unet"})
    assert not rejected[0].successful and "model must be one of" in rejected[0].reason
    rejected = client.set_parameters(f"{RAW}/segmentation_node", {"scales": [2, 5]})
    assert not rejected[0].successful and "scales" in rejected[0].reason
    rejected = client.set_parameters(f"{RAW}/segmentation_node", {"backend": "tensorrt"})
    assert not rejected[0].successful and "needs CUDA" in rejected[0].reason
    rejected = client.set_parameters(f"{RAW}/segmentation_node", {"input_width": 100})
    assert not rejected[0].successful

    # Labels at the network size, now 64x96.
    results = client.set_parameters(f"{RAW}/segmentation_node", {"output_resolution": "network", "input_width": 96})
    assert all(r.successful for r in results), [r.reason for r in results]
    info = swapped()
    assert info["input_size"] == [64, 96] and info["output_resolution"] == "network"
    # The swap replaced the engine only: the node's camera subscription is the one it always had.
    assert client.feeder(RAW).subscribers == 1
    header = make_header()
    labels, camera_info = client.send_and_collect(
        RAW, image_msg(scene, "rgb8", header),
        [f"{RAW}/segmentation/labels", f"{RAW}/segmentation/camera_info"], nodes[RAW])
    assert (labels.height, labels.width) == (64, 96)
    assert (camera_info.height, camera_info.width) == (64, 96)
    assert camera_info.k[0] == pytest.approx(50.0 * 96 / FRAME_SIZE[1])

    # Pruning MFARANet to scale 2 gives what a Segmenter with scale 2 gives.
    infos = len(client.messages(label_info))
    results = client.set_parameters(f"{RAW}/segmentation_node", {"scales": [2]})
    assert results[0].successful, results[0].reason
    assert swapped()["scales"] == [2]
    pruned = segment(client, nodes, image_msg(scene, "rgb8"))
    expected = Segmenter(SegmenterConfig(model="mfaranet", weights=str(weights), input_height=64, input_width=96,
                                         scales=(2,), output_resolution="network")).segment(scene).labels
    np.testing.assert_array_equal(pruned, expected)
    nodes[RAW].check_running()


def test_a_failed_rebuild_keeps_serving_and_restores_the_parameters(client: Client, nodes: dict[str, NodeProcess],
                                                                     scene: np.ndarray, tmp_path: Path) -> None:
    node_path = f"{RAW}/segmentation_node"
    serving = client.get_parameters(node_path, ["weights"])["weights"]
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    # The file exists, so the change is accepted; loading it fails in the background.
    (result,) = client.set_parameters(node_path, {"weights": str(broken)})
    assert result.successful, result.reason
    client.wait_for(lambda: _fresh_diagnostics(client, nodes).get("engine_state") == "rebuild failed",
                    what="the failed rebuild in the diagnostics")
    assert client.get_parameters(node_path, ["weights"])["weights"] == serving
    assert str(broken) in nodes[RAW].log() and "still serving the previous engine" in nodes[RAW].log()
    assert segment(client, nodes, image_msg(scene, "rgb8")).shape == (64, 96)


def test_output_options_change_at_once(client: Client, nodes: dict[str, NodeProcess], scene: np.ndarray) -> None:
    node_path = f"{RAW}/segmentation_node"
    results = client.set_parameters(node_path, {"confidence_encoding": "mono8", "publish_overlay": False})
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        header = make_header()
        labels, confidence = client.send_and_collect(
            RAW, image_msg(scene, "rgb8", header),
            [f"{RAW}/segmentation/labels", f"{RAW}/segmentation/confidence"], nodes[RAW])
        assert confidence.encoding == "mono8" and (confidence.height, confidence.width) == (labels.height, labels.width)
        # 255 x the probability, which is at least 1/19 for the winning class.
        assert np.frombuffer(confidence.data, np.uint8).min() >= 255 // CITYSCAPES.num_classes
        client.spin_for(0.5)  # an overlay would have been published with the labels
        assert client.by_stamp(f"{RAW}/segmentation/overlay", header) is None
    finally:
        client.set_parameters(node_path, {"confidence_encoding": "32FC1", "publish_overlay": True})


# Start-up builds in the background ------------------------------------------------------------------


def test_the_node_answers_while_its_first_engine_builds(weights: Path, tmp_path: Path, scene: np.ndarray) -> None:
    """An exporting backend at start-up: parameters are answered and /diagnostics says 'building engine'
    while the engine builds; the node is ready at once (label_info), eager PyTorch serving the first frames."""
    pytest.importorskip("onnxruntime")
    config = SegmenterConfig(model="mfaranet", weights=str(weights), input_height=NETWORK_SIZE[0],
                             input_width=NETWORK_SIZE[1], backend="onnxruntime", cache_dir=str(tmp_path / "cache"))
    namespace = "/startup"
    command = node_command(config, node_settings={"qos_reliability": "reliable"}, namespace=namespace)
    client = Client("rtseg_startup_client")
    try:
        with NodeProcess(command, tmp_path / "node.log") as node:
            listener = client.listener(namespace)
            client.wait_for(lambda: listener.status.get("engine_state") == "building engine", STARTUP_TIMEOUT_S,
                            "a 'building engine' status", node)
            values = client.get_parameters(f"{namespace}/segmentation_node", ["backend", "input_width"])
            assert values == {"backend": "onnxruntime", "input_width": NETWORK_SIZE[1]}
            client.wait_ready(namespace, node)
            (labels,) = client.send_and_collect(namespace, image_msg(scene, "rgb8"),
                                                [f"{namespace}/segmentation/labels"], node)
            assert labels_of(labels).shape == FRAME_SIZE
            assert "after start-up" in node.log()
            # The export takes seconds: the first frame was served by the eager network meanwhile.
            client.wait_for(lambda: "first frame served by eager while the engine builds" in node.log(), 10.0,
                            "the log line of the first (eager) frame", node)
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while "first frame served by onnxruntime" not in node.log():  # then the built engine takes over
                assert time.monotonic() < deadline, node.log()
                client.feeder(namespace).publish_frame(scene)
                client.spin_for(0.5)
    finally:
        client.close()


def test_a_first_engine_that_cannot_be_built_ends_the_node_with_exit_code_2(tmp_path: Path) -> None:
    """The settings and weights pass, but the engine build fails (as a TensorRT build can): nothing to serve."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from rtseg_ros.engines.segmenter import Segmenter\n"
        "def refuse(self, *args, **kwargs):\n"
        "    raise RuntimeError('this engine cannot be built')\n"
        "Segmenter.prepare = refuse\n"
        "import rtseg_ros.ros.segmentation_server as server\n"
        "import rtseg_ros.ros.segmentation_node as node\n"
        "server.build_in_child = refuse\n"
        "sys.exit(node.main(['--ros-args', '-p', 'backend:=onnxruntime', '-p', 'input_height:=64', "
        "'-p', 'input_width:=128', '-p', 'cache_dir:=" + str(tmp_path) + "']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "this engine cannot be built" in result.stderr and "nothing to serve" in result.stderr
