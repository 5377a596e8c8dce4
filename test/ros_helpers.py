"""Shared helpers of the ROS tests: the node in its own process, and the package's own clients.

The tests start the node with the package's :func:`~rtseg_ros.ros.node_process.node_command` and
:class:`~rtseg_ros.ros.node_process.NodeProcess`, and talk to it through the shared
:class:`~rtseg_ros.ros.clients.CameraFeeder` and :class:`~rtseg_ros.ros.clients.OutputListener`, as
the demo and live evaluation do.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS tests need rclpy (pip install '.[ros]')")
# label_info is a vision_msgs/LabelInfo and the node does not start without it. It is not on PyPI:
# ../shared/ros2-tools/install.sh builds it (as .ci/run does), a ROS install has ros-$ROS_DISTRO-vision-msgs.
pytest.importorskip("vision_msgs.msg", reason="the node publishes vision_msgs/LabelInfo and needs vision_msgs "
                    "(bash ../shared/ros2-tools/install.sh builds it; on ROS: rosdep install)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

from rtseg_ros.names import Topics  # noqa: E402
from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener  # noqa: E402
from rtseg_ros.ros.interfaces import LABEL_INFO_QOS as LATCHED  # noqa: E402
from rtseg_ros.ros.interfaces import message_type, parse_label_info_meta  # noqa: E402
from rtseg_ros.ros.node_process import NodeProcess, node_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Generous: the node imports torch and builds its engine before it publishes label_info.
STARTUP_TIMEOUT_S = 90.0
OUTPUT_TIMEOUT_S = 20.0
# Every per-frame output of the node.
FRAME_OUTPUTS = (Topics.LABELS, Topics.CONFIDENCE, Topics.OVERLAY, Topics.OUTPUT_CAMERA_INFO)


def write_random_checkpoint(path: Path, model: str = "mfaranet", label_set: str = "cityscapes") -> Path:
    """A checkpoint of seeded random weights, so the node and the test can run the same network."""
    import torch

    from rtseg_ros.datasets.labels import get_label_set
    from rtseg_ros.nets import build_model, save_weights

    torch.manual_seed(0)
    network = build_model(model, num_classes=get_label_set(label_set).num_classes)
    return save_weights(network, path, model_name=model, label_set=label_set)


class Client:
    """The test side: the shared feeder and listener for each node namespace, and parameter services.

    Everything runs in one :class:`ClientSession` (a context of its own). Listeners keep every message,
    so a test can look outputs up by topic (the resolved name, ``/ns/segmentation/labels``) and stamp.
    """

    def __init__(self, name: str = "rtseg_test_client") -> None:
        self.name = name
        self.session = ClientSession()
        self.node = self.session.add(Node(name, context=self.session.context))
        self._listeners: dict[str, OutputListener] = {}
        self._feeders: dict[str, CameraFeeder] = {}
        self._services: dict[str, Any] = {}

    def close(self) -> None:
        self.session.close()

    def listener(self, namespace: str) -> OutputListener:
        """The listener to every output of the node in ``namespace`` (made on first use)."""
        if namespace not in self._listeners:
            self._listeners[namespace] = self.session.add(OutputListener(
                namespace=namespace, outputs=FRAME_OUTPUTS, keep_messages=True,
                listener_name=f"{self.name}_listener", context=self.session.context))
        return self._listeners[namespace]

    def feeder(self, namespace: str, transport: str = "raw") -> CameraFeeder:
        """The camera feeder of the node in ``namespace`` (made on first use)."""
        if namespace not in self._feeders:
            self._feeders[namespace] = self.session.add(CameraFeeder(
                namespace=namespace, transport=transport, node_name=f"{self.name}_camera",
                context=self.session.context))
        return self._feeders[namespace]

    def wait_ready(self, namespace: str, node: NodeProcess | None = None, transport: str = "raw") -> None:
        """Wait until the node in ``namespace`` is up and connected to this client's feeder and listener."""
        listener, feeder = self.listener(namespace), self.feeder(namespace, transport)
        self.wait_for(lambda: listener.ready and feeder.connected, STARTUP_TIMEOUT_S, f"{namespace} node start-up",
                      node)

    def _messages(self, topic: str) -> list[tuple[float, Any]]:
        for listener in self._listeners.values():
            if topic in listener.messages:
                return listener.messages[topic]
        return []

    def received(self, topic: str) -> list[tuple[float, Any]]:
        """(arrival time, message) of ``topic`` so far, oldest first."""
        return list(self._messages(topic))

    def messages(self, topic: str) -> list[Any]:
        return [msg for _, msg in self._messages(topic)]

    def by_stamp(self, topic: str, header: Header) -> Any | None:
        for msg in self.messages(topic):
            if msg.header.stamp == header.stamp:
                return msg
        return None

    def wait_for(self, condition: Callable[[], bool], timeout: float = OUTPUT_TIMEOUT_S, what: str = "",
                 node: NodeProcess | None = None) -> None:
        """Spin until ``condition()`` holds; fail with ``what`` after ``timeout`` seconds."""
        self.session.wait_until(condition, timeout, what, node)

    def spin_for(self, seconds: float) -> None:
        """Handle callbacks for ``seconds`` (lets messages on other topics land)."""
        self.session.spin_for(seconds)

    def send_and_collect(self, namespace: str, msg: Any, outputs: Iterable[str],
                         node: NodeProcess | None = None) -> list[Any]:
        """Publish ``msg`` (its header stamp must be unique) to the node in ``namespace`` and return its
        output on each topic."""
        outputs = list(outputs)
        self.feeder(namespace).publish(msg)
        self.wait_for(lambda: all(self.by_stamp(out, msg.header) is not None for out in outputs),
                      what=f"outputs {outputs} for a frame sent to {namespace}", node=node)
        return [self.by_stamp(out, msg.header) for out in outputs]

    def _service(self, kind: type, service: str) -> Any:
        if service not in self._services:
            self._services[service] = self.node.create_client(kind, service)
        client = self._services[service]
        self.wait_for(client.service_is_ready, STARTUP_TIMEOUT_S, f"the service {service}")
        return client

    def set_parameters(self, node_path: str, values: dict[str, Any]) -> list[SetParametersResult]:
        """Call the node's real SetParameters service."""
        service = f"{node_path}/set_parameters"
        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        future = self._service(SetParameters, service).call_async(request)
        self.wait_for(future.done, what=f"the response of {service}")
        return list(future.result().results)

    def get_parameters(self, node_path: str, names: list[str]) -> dict[str, Any]:
        """Current values through the node's real GetParameters service."""
        service = f"{node_path}/get_parameters"
        future = self._service(GetParameters, service).call_async(GetParameters.Request(names=names))
        self.wait_for(future.done, what=f"the response of {service}")
        return {name: parameter_value_to_python(value) for name, value in zip(names, future.result().values)}


def label_info_type() -> type:
    """The message type of label_info: vision_msgs/LabelInfo."""
    return message_type(Topics.LABEL_INFO)


def label_info_json(msg: String) -> dict[str, Any]:
    """The JSON document of a label_info_meta message (the companion of the LabelInfo on label_info)."""
    assert isinstance(msg, String), f"label_info_meta is a std_msgs/String, got {type(msg).__name__}"
    return parse_label_info_meta(msg)


_stamp_counter = [0]


def make_header(frame_id: str = "test_camera") -> Header:
    """A header with a stamp no other frame of this test session uses."""
    _stamp_counter[0] += 1
    header = Header(frame_id=frame_id)
    now = time.time_ns() + _stamp_counter[0]
    header.stamp.sec, header.stamp.nanosec = divmod(now, 1_000_000_000)
    return header


def image_msg(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    from rtseg_ros.io.images import array_to_image_fields

    return Image(header=header or make_header(), **array_to_image_fields(pixels, encoding))


def raw_image_msg(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """An Image with the bytes of ``pixels`` as they are (for encodings we do not publish)."""
    import array

    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    return Image(header=header or make_header(), height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=rows.shape[1], data=array.array("B", rows.tobytes()))


def labels_of(msg: Image) -> np.ndarray:
    assert msg.encoding == "mono8"
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)


__all__ = [
    "CameraInfo", "Client", "CompressedImage", "DiagnosticArray", "FRAME_OUTPUTS", "Image", "LATCHED", "NodeProcess",
    "ParameterMsg", "String", "image_msg", "label_info_json", "label_info_type", "labels_of", "make_header",
    "node_command", "raw_image_msg", "write_random_checkpoint",
]
