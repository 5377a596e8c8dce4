"""Shared helpers of the ROS tests: the node in its own process and a client with its own context."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS tests need rclpy (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NODE_NAME = "segmentation_node"
# Generous: the node imports torch and builds its engine before it publishes label_info.
STARTUP_TIMEOUT_S = 90.0
OUTPUT_TIMEOUT_S = 20.0

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def write_random_checkpoint(path: Path, model: str = "mfaranet", label_set: str = "cityscapes") -> Path:
    """A checkpoint of seeded random weights, so the node and the test can run the same network."""
    import torch

    from rtseg_ros.datasets.labels import get_label_set
    from rtseg_ros.nets import build_model, save_weights

    torch.manual_seed(0)
    network = build_model(model, num_classes=get_label_set(label_set).num_classes)
    return save_weights(network, path, model_name=model, label_set=label_set)


def node_command(namespace: str, parameters: dict[str, Any], params_file: Path | None = None) -> list[str]:
    """The node's command line with ``-p`` overrides, under ``namespace`` (outputs move with it)."""
    command = [sys.executable, "-m", "rtseg_ros.ros.segmentation_node", "--ros-args", "-r", f"__ns:={namespace}"]
    if params_file is not None:
        command += ["--params-file", str(params_file)]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={json.dumps(value)}"]
    return command


class NodeProcess:
    """The segmentation node in its own process, its output kept in a log file."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text()

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"node exited with {self.process.returncode}:\n{self.log()[-3000:]}")

    def request_stop(self) -> None:
        """Send SIGINT without waiting (to stop several nodes at once, then ``stop`` each)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def stop(self) -> int:
        """Stop the node (SIGINT, then SIGKILL after 15 s) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Client:
    """A test-side node with its own context: publishes frames, collects outputs by topic."""

    def __init__(self, name: str = "rtseg_test_client") -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._publishers: dict[tuple[str, type], Any] = {}
        self._services: dict[str, Any] = {}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def subscribe(self, topic: str, msg_type: type, qos: QoSProfile = RELIABLE) -> None:
        """Keep every message of ``topic`` in ``received[topic]`` with its arrival time."""
        self.node.create_subscription(
            msg_type, topic, lambda msg: self.received[topic].append((time.monotonic(), msg)), qos)

    def publisher(self, topic: str, msg_type: type) -> Any:
        key = (topic, msg_type)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, RELIABLE)
        return self._publishers[key]

    def wait_for(self, condition: Callable[[], bool], timeout: float = OUTPUT_TIMEOUT_S, what: str = "",
                 node: NodeProcess | None = None) -> None:
        """Spin until ``condition()`` holds; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if node is not None:
                node.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        """Handle callbacks for ``seconds`` (lets messages on other topics land)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def wait_for_subscriber(self, topic: str, msg_type: type, node: NodeProcess | None = None) -> None:
        publisher = self.publisher(topic, msg_type)
        self.wait_for(lambda: publisher.get_subscription_count() > 0, STARTUP_TIMEOUT_S,
                      f"a subscriber on {topic}", node)

    def messages(self, topic: str) -> list[Any]:
        return [msg for _, msg in self.received[topic]]

    def by_stamp(self, topic: str, header: Header) -> Any | None:
        for msg in self.messages(topic):
            if msg.header.stamp == header.stamp:
                return msg
        return None

    def send_and_collect(self, topic: str, msg: Any, outputs: Iterable[str],
                         node: NodeProcess | None = None) -> list[Any]:
        """Publish ``msg`` (its header stamp must be unique) and return its output on each topic."""
        outputs = list(outputs)
        self.publisher(topic, type(msg)).publish(msg)
        self.wait_for(lambda: all(self.by_stamp(out, msg.header) is not None for out in outputs),
                      what=f"outputs {outputs} for a frame on {topic}", node=node)
        return [self.by_stamp(out, msg.header) for out in outputs]

    def set_parameters(self, node_path: str, values: dict[str, Any]) -> list[SetParametersResult]:
        """Call the node's real SetParameters service."""
        service = f"{node_path}/set_parameters"
        if service not in self._services:
            self._services[service] = self.node.create_client(SetParameters, service)
        client = self._services[service]
        self.wait_for(client.service_is_ready, STARTUP_TIMEOUT_S, f"the service {service}")
        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        future = client.call_async(request)
        self.wait_for(future.done, what=f"the response of {service}")
        return list(future.result().results)

    def get_parameters(self, node_path: str, names: list[str]) -> dict[str, Any]:
        """Current values through the node's real GetParameters service."""
        service = f"{node_path}/get_parameters"
        if service not in self._services:
            self._services[service] = self.node.create_client(GetParameters, service)
        client = self._services[service]
        self.wait_for(client.service_is_ready, STARTUP_TIMEOUT_S, f"the service {service}")
        future = client.call_async(GetParameters.Request(names=names))
        self.wait_for(future.done, what=f"the response of {service}")
        return {name: parameter_value_to_python(value) for name, value in zip(names, future.result().values)}

    def diagnostics(self, node_path: str) -> list[dict[str, str]]:
        """Values of every /diagnostics status of the node at ``node_path`` received so far, oldest first."""
        from rtseg_ros.ros.segmentation_node import diagnostic_name

        return [{kv.key: kv.value for kv in status.values} for _, msg in self.received["/diagnostics"]
                for status in msg.status if status.name == diagnostic_name(node_path)]


def label_info_type() -> type:
    """The message type the node publishes label_info as on this machine."""
    from rtseg_ros.ros.segmentation_node import LabelInfo

    return LabelInfo if LabelInfo is not None else String


def label_info_json(msg: Any) -> dict[str, Any]:
    """The JSON label_info document; skips the test where the node publishes vision_msgs/LabelInfo."""
    if not isinstance(msg, String):
        pytest.skip("vision_msgs is installed, so label_info is vision_msgs/LabelInfo, not the JSON document")
    return json.loads(msg.data)


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
    "CameraInfo", "Client", "CompressedImage", "DiagnosticArray", "Image", "LATCHED", "NodeProcess", "ParameterMsg",
    "String", "image_msg", "label_info_json", "label_info_type", "labels_of", "make_header", "node_command",
    "raw_image_msg", "write_random_checkpoint",
]
