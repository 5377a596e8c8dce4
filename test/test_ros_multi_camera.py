"""One node, three cameras, one engine: the multi-camera node over real rclpy on loopback.

Three cameras of different sizes and encodings (one compressed) are served by one node with batched
inference; each output keeps its own camera's header, size and frame_id. A camera sending malformed
frames loses only its own frames, and a camera that goes silent gets its own WARN while the others
stay OK.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from ros_helpers import Client, CompressedImage, DiagnosticArray, NodeProcess, image_msg, labels_of, make_header, \
    node_command, raw_image_msg
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.names import Topics
from rtseg_ros.ros.interfaces import diagnostic_name

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# camera: (frame size HxW, encoding); "side" sends JPEG through CompressedImage.
CAMERAS = {"front": ((72, 120), "rgb8"), "rear": ((96, 160), "bgr8"), "side": ((60, 100), "jpeg")}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    config = SegmenterConfig(model="atonet", input_height=64, input_width=128)
    settings = {"cameras": list(CAMERAS), "compressed_cameras": ["side"], "qos_reliability": "reliable",
                "image_timeout": 1.0}
    process = NodeProcess(node_command(config, node_settings=settings),
                          tmp_path_factory.mktemp("logs") / "multi_camera.log")
    yield process
    process.request_stop()
    process.stop()


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> Iterator[Client]:
    client = Client("rtseg_multi_camera_client")
    for camera, (_, encoding) in CAMERAS.items():
        client.wait_ready(camera, node, transport="compressed" if encoding == "jpeg" else "raw")
    diagnostics: list[DiagnosticArray] = []
    client.node.create_subscription(DiagnosticArray, Topics.DIAGNOSTICS.name, diagnostics.append, 10)
    client.diagnostics = diagnostics  # type: ignore[attr-defined]
    yield client
    client.close()


def frame_message(camera: str, frame_id: str | None = None) -> object:
    (height, width), encoding = CAMERAS[camera]
    pixels = make_scene(len(camera), height, width)[0]
    header = make_header(frame_id or f"{camera}_optical")
    if encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", pixels[..., ::-1])
        assert ok
        return CompressedImage(header=header, format="jpeg", data=data.tobytes())
    if encoding == "bgr8":
        return image_msg(np.ascontiguousarray(pixels[..., ::-1]), "bgr8", header)
    return image_msg(pixels, encoding, header)


def labels_topic(camera: str) -> str:
    return f"/{camera}/{Topics.LABELS.name}"


def statuses(client: Client) -> dict[str, dict[str, object]]:
    """The newest /diagnostics status of each camera: level, message and values."""
    latest: dict[str, dict[str, object]] = {}
    for array in client.diagnostics:  # type: ignore[attr-defined]
        for status in array.status:
            for camera in CAMERAS:
                if status.name == diagnostic_name("/segmentation_node", camera):
                    latest[camera] = {"level": int.from_bytes(status.level, "little") if isinstance(
                        status.level, bytes) else int(status.level), "message": status.message,
                        **{kv.key: kv.value for kv in status.values}}
    return latest


def test_each_camera_is_served_with_its_own_header_and_size(client: Client, node: NodeProcess) -> None:
    messages = {camera: frame_message(camera) for camera in CAMERAS}
    for camera, msg in messages.items():  # all three at once, so they can share a batch
        client.feeder(camera).publish(msg)
    client.wait_for(lambda: all(client.by_stamp(labels_topic(camera), msg.header) is not None
                                for camera, msg in messages.items()), what="labels of all three cameras", node=node)
    for camera, msg in messages.items():
        labels = client.by_stamp(labels_topic(camera), msg.header)
        (height, width), _ = CAMERAS[camera]
        assert labels.header.frame_id == f"{camera}_optical"
        assert (labels.height, labels.width, labels.encoding) == (height, width, "mono8")
        assert labels_of(labels).max() < 19
    assert "batches of up to 3" in node.log()


def test_malformed_frames_of_one_camera_leave_the_others_served(client: Client, node: NodeProcess) -> None:
    good = {camera: frame_message(camera) for camera in ("front", "side")}
    truncated = raw_image_msg(np.zeros((96, 160, 3), np.uint8), "rgb8", make_header("rear_optical"))
    truncated.data = truncated.data[: len(truncated.data) // 2]
    for _ in range(3):
        client.feeder("rear").publish(truncated)
    for camera, msg in good.items():
        client.feeder(camera).publish(msg)
    client.wait_for(lambda: all(client.by_stamp(labels_topic(camera), msg.header) is not None
                                for camera, msg in good.items()), what="labels of the good cameras", node=node)
    client.wait_for(lambda: int(statuses(client).get("rear", {}).get("frames_bad", 0)) >= 1,
                    what="rear's bad frames on /diagnostics", node=node)
    assert int(statuses(client)["front"]["frames_bad"]) == 0
    assert node.running


def test_a_silent_camera_warns_alone(client: Client, node: NodeProcess) -> None:
    # front and rear keep sending; side has been silent since the tests above (image_timeout 1 s).
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        for camera in ("front", "rear"):
            client.feeder(camera).publish(frame_message(camera))
        client.spin_for(0.3)
        latest = statuses(client)
        if (latest.get("side", {}).get("level") == 1 and "no image" in str(latest["side"]["message"])
                and latest.get("front", {}).get("level") == 0 and latest.get("rear", {}).get("level") == 0):
            break
    latest = statuses(client)
    assert latest["side"]["level"] == 1 and "no image" in str(latest["side"]["message"]), latest["side"]
    assert latest["front"]["level"] == 0, latest["front"]
    assert latest["rear"]["level"] == 0, latest["rear"]
