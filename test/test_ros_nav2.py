"""The Nav2 preset (config/nav2_semantic_layer.yaml) against the real message_filters synchronisers.

Nav2's semantic segmentation layer joins labels, confidence and the depth camera's organized cloud with
message_filters' ExactTime or ApproximateTime policy, and drops what does not pair. Here the node runs
the preset (a small network on this CPU), a camera publishes 1280x720 rgb8 frames and a depth camera a
640x480 cloud with each frame's stamp (or a few ms off it), and the test subscribes through
message_filters as the layer does: every labels message the node published must be paired.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ros_helpers import REPO, STARTUP_TIMEOUT_S, CameraInfo, Client, Image, NodeProcess, label_info_type, node_command

message_filters = pytest.importorskip(
    "message_filters", reason="the synchroniser test needs message_filters' Python module "
    "(bash ../shared/ros2-tools/install.sh installs it; on ROS: ros-$ROS_DISTRO-message-filters)")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from rtseg_ros.datasets.labels import get_label_set  # noqa: E402
from rtseg_ros.names import Topics  # noqa: E402
from rtseg_ros.ros.interfaces import LABEL_INFO_QOS  # noqa: E402

pytestmark = pytest.mark.ros

PRESET = REPO / "config" / "nav2_semantic_layer.yaml"
NAMESPACE = "/nav2"
NODE_PATH = f"{NAMESPACE}/segmentation_node"
CLOUD_TOPIC = f"{NAMESPACE}/depth/points"
FRAME_SIZE = (720, 1280)  # the colour camera, (height, width)
CLOUD_SIZE = (480, 640)  # the depth camera's organized cloud, as the preset's output_resolution says
# The preset's engine on this CPU: a small input, eager PyTorch, random weights (the node says so loudly).
CPU_OVERRIDES = {"weights": "", "backend": "torch", "input_height": 64, "input_width": 128}
FRAMES = 15
FRAME_PERIOD_S = 0.2
# The ApproximateTime case: the depth camera stamps its cloud this far from the colour frame.
CLOUD_OFFSET_NS = 3_000_000
SLOP_S = 0.05
SETTLE_S = 3.0
# Reliable at both ends, so a message the transport lost cannot pass for one the node never published.
OUTPUT_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def nav2_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, NodeProcess]]:
    """The node as the preset describes it (the CPU overrides aside), and a client beside it."""
    log = tmp_path_factory.mktemp("nav2") / "node.log"
    node = NodeProcess(node_command(None, node_settings=CPU_OVERRIDES, namespace=NAMESPACE, params_file=PRESET),
                       log)
    client = Client("rtseg_nav2_test")
    feeder = client.feeder(NAMESPACE)
    client.wait_for(lambda: feeder.connected, STARTUP_TIMEOUT_S, "the node to subscribe to the camera", node)
    yield client, node
    client.close()
    node.request_stop()
    node.stop()


def _cloud_data(height: int, width: int) -> bytes:
    """x, y, z float32 per pixel, row-major like a depth camera's organized cloud: a floor 1 m below."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    points = np.stack([np.full_like(rows, 2.0) + rows / height, (cols - width / 2) / width, np.full_like(rows, -1.0)],
                      axis=-1)
    return points.astype(np.float32).tobytes()


def _cloud(header: Header, data: bytes) -> PointCloud2:
    height, width = CLOUD_SIZE
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate("xyz")]
    return PointCloud2(header=header, height=height, width=width, fields=fields, is_bigendian=False, point_step=12,
                       row_step=12 * width, data=data, is_dense=True)


def _camera_info(header: Header) -> CameraInfo:
    height, width = FRAME_SIZE
    return CameraInfo(header=header, height=height, width=width, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[900.0, 0.0, 640.0, 0.0, 900.0, 360.0, 0.0, 0.0, 1.0],
                      p=[900.0, 0.0, 640.0, 0.0, 0.0, 900.0, 360.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def _nanoseconds(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _stamp(nanoseconds: int) -> Time:
    sec, nanosec = divmod(nanoseconds, 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


@dataclass
class SyncRun:
    """What one synchroniser saw: the labels the node published and the triples the synchroniser paired."""

    labels: dict[int, Image] = field(default_factory=dict)
    matched: list[tuple[Image, Image, PointCloud2]] = field(default_factory=list)
    camera_infos: dict[int, CameraInfo] = field(default_factory=dict)


def _run(client: Client, node: NodeProcess, approximate: bool) -> tuple[SyncRun, list[int]]:
    """Play FRAMES camera frames with their clouds through a synchroniser; returns what it saw and the
    frames' stamps (ns). Frames before the node serves confidence are sent first and left out."""
    ros_node = client.node
    labels_sub = message_filters.Subscriber(ros_node, Image, f"{NAMESPACE}/{Topics.LABELS.name}",
                                            qos_profile=OUTPUT_QOS)
    confidence_sub = message_filters.Subscriber(ros_node, Image, f"{NAMESPACE}/{Topics.CONFIDENCE.name}",
                                                qos_profile=OUTPUT_QOS)
    cloud_sub = message_filters.Subscriber(ros_node, PointCloud2, CLOUD_TOPIC, qos_profile=OUTPUT_QOS)
    subscribers = (labels_sub, confidence_sub, cloud_sub)
    if approximate:
        sync = message_filters.ApproximateTimeSynchronizer(subscribers, queue_size=50, slop=SLOP_S)
    else:
        sync = message_filters.TimeSynchronizer(subscribers, queue_size=50)
    run = SyncRun()
    labels_sub.registerCallback(lambda msg: run.labels.__setitem__(_nanoseconds(msg.header.stamp), msg))
    sync.registerCallback(lambda labels, confidence, cloud: run.matched.append((labels, confidence, cloud)))
    info_sub = ros_node.create_subscription(
        CameraInfo, f"{NAMESPACE}/{Topics.OUTPUT_CAMERA_INFO.name}",
        lambda msg: run.camera_infos.__setitem__(_nanoseconds(msg.header.stamp), msg), OUTPUT_QOS)
    cloud_pub = ros_node.create_publisher(PointCloud2, CLOUD_TOPIC, OUTPUT_QOS)
    feeder = client.feeder(NAMESPACE)
    frame = np.random.default_rng(0).integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8)
    data = _cloud_data(*CLOUD_SIZE)
    sent: list[int] = []

    def send() -> int:
        header = feeder.stamp_now()
        header.frame_id = "camera_color_optical_frame"
        stamp = _nanoseconds(header.stamp)
        cloud_stamp = stamp + (CLOUD_OFFSET_NS if approximate else 0)
        feeder.publish(_camera_info(header))
        cloud_pub.publish(_cloud(Header(stamp=_stamp(cloud_stamp), frame_id="camera_depth_optical_frame"), data))
        feeder.publish_frame(frame, header=header)
        return stamp

    try:
        client.wait_for(lambda: all(sub.sub.get_publisher_count() > 0 for sub in subscribers), STARTUP_TIMEOUT_S,
                        "labels, confidence and cloud publishers", node)
        # The node computes confidence once it sees a subscriber; frames until then carry labels only.
        deadline_frames = int(STARTUP_TIMEOUT_S / FRAME_PERIOD_S)
        for _ in range(deadline_frames):
            send()
            client.spin_for(FRAME_PERIOD_S)
            if run.matched:
                break
        assert run.matched, f"no synchronised triple while warming up; node log:\n{node.log_tail()}"
        for _ in range(FRAMES):
            sent.append(send())
            client.spin_for(FRAME_PERIOD_S)
        last = sent[-1]
        client.wait_for(lambda: last in run.labels, STARTUP_TIMEOUT_S, "the labels of the last frame", node)
        client.spin_for(SETTLE_S)  # lets every pairing that will happen happen
    finally:
        for sub in subscribers:
            ros_node.destroy_subscription(sub.sub)
        ros_node.destroy_subscription(info_sub)
        ros_node.destroy_publisher(cloud_pub)
    return run, sent


@pytest.mark.slow
@pytest.mark.parametrize("approximate", [False, True], ids=["exact_time", "approximate_time"])
def test_every_published_label_pairs_with_its_confidence_and_cloud(nav2_node: tuple[Client, NodeProcess],
                                                                   approximate: bool) -> None:
    client, node = nav2_node
    run, sent = _run(client, node, approximate)
    published = {stamp: msg for stamp, msg in run.labels.items() if stamp in set(sent)}
    # The node may drop a frame (one is served at a time); a dropped frame has no labels to pair.
    assert len(published) >= FRAMES // 2, f"{len(published)} of {FRAMES} frames served; log:\n{node.log_tail()}"
    matched = {_nanoseconds(labels.header.stamp): (labels, confidence, cloud)
               for labels, confidence, cloud in run.matched}
    unmatched = sorted(set(published) - set(matched))
    assert not unmatched, f"labels the synchroniser never paired: {unmatched}"
    height, width = CLOUD_SIZE
    for stamp in published:
        labels, confidence, cloud = matched[stamp]
        assert _nanoseconds(confidence.header.stamp) == stamp
        assert _nanoseconds(cloud.header.stamp) == stamp + (CLOUD_OFFSET_NS if approximate else 0)
        assert (labels.width, labels.height) == (confidence.width, confidence.height) == (cloud.width, cloud.height) \
            == (width, height)
        assert labels.encoding == confidence.encoding == "mono8"
        assert len(labels.data) == len(confidence.data) == width * height
        assert labels.header.frame_id == confidence.header.frame_id == "camera_color_optical_frame"
    # camera_info follows the labels: the colour camera's intrinsics scaled to 640x480.
    infos = [run.camera_infos[stamp] for stamp in published if stamp in run.camera_infos]
    assert infos, "no segmentation/camera_info for the served frames"
    for info in infos:
        assert (info.width, info.height) == (width, height)
        np.testing.assert_allclose(info.k[[0, 2, 4, 5]], [900.0 * 640 / 1280, 640.0 * 640 / 1280,
                                                          900.0 * 480 / 720, 360.0 * 480 / 720], rtol=1e-3)


def test_label_info_is_latched_and_sent_once(nav2_node: tuple[Client, NodeProcess]) -> None:
    client, node = nav2_node
    received: list[Any] = []
    # A late subscriber, as the layer is when Nav2 activates its costmaps after the node started.
    subscription = client.node.create_subscription(label_info_type(), f"{NAMESPACE}/{Topics.LABEL_INFO.name}",
                                                   received.append, LABEL_INFO_QOS)
    try:
        client.wait_for(lambda: bool(received), STARTUP_TIMEOUT_S, "the latched label_info", node)
        client.spin_for(1.0)
    finally:
        client.node.destroy_subscription(subscription)
    assert len(received) == 1
    names = [entry.class_name for entry in received[0].class_map]
    assert names == list(get_label_set("cityscapes").class_names)
    assert [entry.class_id for entry in received[0].class_map] == list(range(len(names)))


@pytest.mark.parametrize(("value", "reason"), [
    ("640x", "'640x' is not input, network or WIDTHxHEIGHT such as 640x480"),
    ("abc", "'abc' is not input, network or WIDTHxHEIGHT"),
    ("0x480", "width and height must be in 1..16384"),
])
def test_a_wrong_label_size_is_refused_with_the_reason(nav2_node: tuple[Client, NodeProcess], value: str,
                                                       reason: str) -> None:
    # What `ros2 param set /nav2/segmentation_node output_resolution 640x` does: the node's SetParameters service.
    client, _ = nav2_node
    (result,) = client.set_parameters(NODE_PATH, {"output_resolution": value})
    assert not result.successful and reason in result.reason
    assert client.get_parameters(NODE_PATH, ["output_resolution"]) == {"output_resolution": "640x480"}


def test_the_preset_sets_what_the_layer_needs() -> None:
    import yaml

    values = yaml.safe_load(Path(PRESET).read_text())["/**"]["ros__parameters"]
    assert values["confidence_encoding"] == "mono8"  # the layer reads confidence bytes as 0..255
    assert values["output_resolution"] == f"{CLOUD_SIZE[1]}x{CLOUD_SIZE[0]}"
    assert (values["camera_height"], values["camera_width"]) == FRAME_SIZE
