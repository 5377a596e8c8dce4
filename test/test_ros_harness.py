"""The node harness: its command line, the node process, the shared feeder and listener, the interfaces.

Only what runs in seconds is here (no segmentation node: a stand-in process, or the feeder talking to the
listener); the real node through the same harness is in test_ros_node, test_ros_demo and test_eval_live.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.names import ENGINE_PARAMETERS, NODE_NAME, PARAMETERS, Topics
from rtseg_ros.ros.node_process import (
    NODE_MODULE,
    NodeExitedError,
    NodeProcess,
    NodeStartupTimeout,
    node_command,
    read_params_file,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]


def _parameters(command: list[str]) -> dict[str, object]:
    """The ``-p`` values of a command line, read as rcl reads them (YAML)."""
    values = {}
    for index, arg in enumerate(command):
        if arg == "-p":
            name, _, value = command[index + 1].partition(":=")
            assert name not in values, f"{name} given twice"
            values[name] = yaml.safe_load(value)
    return values


def _remaps(command: list[str]) -> list[str]:
    return [command[index + 1] for index, arg in enumerate(command) if arg == "-r"]


# Command line ---------------------------------------------------------------------------------


def test_node_command_gives_the_whole_config_by_parameter_name(tmp_path: Path) -> None:
    config = SegmenterConfig(model="atonet", weights=None, label_set="camvid", input_height=64, input_width=128,
                             backend="onnxruntime", output_resolution="network", cache_dir=str(tmp_path))
    command = node_command(config, node_settings={"publish_overlay": False, "qos_depth": 3})
    assert command[:4] == [sys.executable, "-m", NODE_MODULE, "--ros-args"]
    values = _parameters(command)
    assert values == {**config.to_parameters(), "publish_overlay": False, "qos_depth": 3}
    assert set(config.to_parameters()) == ENGINE_PARAMETERS
    # Typed as the node's parameters: None paths as "", scales as an integer list.
    assert values["weights"] == "" and values["scales"] == [1, 2, 3, 4] and values["engine_cache_dir"] == str(tmp_path)
    # The node parses the values back into the same config.
    assert SegmenterConfig.from_parameters(values) == config
    assert _remaps(command) == [] and "--params-file" not in command and "--log-level" not in command


def test_node_command_places_the_node() -> None:
    command = node_command(SegmenterConfig(), name="front_segmentation", namespace="robot1/",
                           remaps={"image": "/front/image_raw"}, params_file="/tmp/p.yaml", log_level="debug")
    assert _remaps(command) == ["__node:=front_segmentation", "__ns:=/robot1", "image:=/front/image_raw"]
    assert command[command.index("--params-file") + 1] == "/tmp/p.yaml"
    assert command[command.index("--log-level") + 1] == "debug"
    # The params file comes first: the -p values after it win.
    assert command.index("--params-file") < command.index("-p")
    assert "__node:=" not in " ".join(node_command(SegmenterConfig(), name=NODE_NAME))


def test_node_command_without_config_leaves_the_engine_to_the_params_file() -> None:
    command = node_command(None, node_settings={"input_height": 64}, params_file="/tmp/p.yaml")
    assert _parameters(command) == {"input_height": 64}


def test_node_command_rejects_what_is_not_a_node_parameter() -> None:
    with pytest.raises(ValueError, match="not parameters of segmentation_node: overlay, speed"):
        node_command(SegmenterConfig(), node_settings={"speed": 2, "overlay": True, "publish_overlay": True})


def test_read_params_file_takes_the_wildcard_then_the_node_section(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"model": "atonet", "input_width": 512}},
        NODE_NAME: {"ros__parameters": {"input_width": 256}},
        "other_node": {"ros__parameters": {"model": "mfaranet"}},
    }))
    assert read_params_file(path) == {"model": "atonet", "input_width": 256}
    assert read_params_file(REPO / "config" / "cpu.yaml").keys() <= PARAMETERS.keys()
    path.write_text("- just a list\n")
    with pytest.raises(ValueError, match="not a ROS params file"):
        read_params_file(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_params_file(tmp_path / "missing.yaml")


# Node process (a stand-in child) ------------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_node_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    code = """
        for i in range(30):
            print(f"line {i}")
        raise SystemExit(3)
    """
    with NodeProcess(_python(code), tmp_path / "node.log") as node:
        with pytest.raises(NodeExitedError) as raised:
            node.wait_ready(lambda: False, timeout_s=30, spin=time.sleep)
    message = str(raised.value)
    assert "exited with code 3" in message and str(tmp_path / "node.log") in message
    # The tail: the last lines, not the whole log.
    assert "line 29" in message and "line 15" in message and "line 14" not in message
    assert node.returncode == 3 and not node.running


def test_a_node_that_never_gets_ready_times_out_with_its_log(tmp_path: Path) -> None:
    code = """
        import time
        print("building the engine", flush=True)
        time.sleep(60)
    """
    with NodeProcess(_python(code), tmp_path / "node.log") as node:
        wait_until(lambda: "building" in node.log(), 30, time.sleep, "the first log line", node)
        with pytest.raises(NodeStartupTimeout, match="(?s)waiting for the engine.*building the engine"):
            node.wait_ready(lambda: False, timeout_s=0.3, spin=time.sleep, what="the engine")
        assert node.running
    assert not node.running  # the context stopped it


def test_ready_returns_once_the_condition_holds(tmp_path: Path) -> None:
    node = NodeProcess(_python("import time; time.sleep(60)"), tmp_path / "node.log")
    try:
        deadline = time.monotonic() + 0.2
        node.wait_ready(lambda: time.monotonic() > deadline, timeout_s=30, spin=time.sleep)
        node.check_running()
    finally:
        node.stop()


def test_stop_interrupts_first_and_kills_a_node_that_ignores_it(tmp_path: Path) -> None:
    code = """
        import signal, sys, time
        def finish(*_):
            print("finishing the frame", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGINT, finish)
        print("up", flush=True)
        time.sleep(60)
    """
    node = NodeProcess(_python(code), tmp_path / "clean.log")
    wait_until(lambda: "up" in node.log(), 30, time.sleep, "the stand-in", node)
    assert node.stop() == 0 and "finishing the frame" in node.log()

    stubborn = NodeProcess(_python("""
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("up", flush=True)
        time.sleep(60)
    """), tmp_path / "stubborn.log")
    wait_until(lambda: "up" in stubborn.log(), 30, time.sleep, "the stand-in", stubborn)
    started = time.monotonic()
    assert stubborn.stop(timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_a_missing_executable_raises_at_once(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        NodeProcess([str(tmp_path / "no_such_node")], tmp_path / "node.log")


# No torch in client processes -------------------------------------------------------------------


def test_clients_load_no_torch() -> None:
    pytest.importorskip("rclpy", reason="the client modules need rclpy")
    code = textwrap.dedent("""\
        import sys
        import rtseg_ros.ros.interfaces, rtseg_ros.ros.clients, rtseg_ros.ros.node_process
        import rtseg_ros.ros.demo_client
        from rtseg_ros.engines import SegmenterConfig
        from rtseg_ros.names import Topics
        from rtseg_ros.ros.interfaces import message_type, qos_profile
        from rtseg_ros.ros.node_process import node_command
        node_command(SegmenterConfig(), namespace="/x")
        qos_profile(Topics.LABELS.qos)
        [message_type(spec) for spec in (Topics.LABELS, Topics.LABEL_INFO, Topics.DIAGNOSTICS)]
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"torch modules loaded: {result.stdout}"


# Interfaces and the shared clients (in this process, no segmentation node) ----------------------


@pytest.fixture
def ros() -> None:
    pytest.importorskip("rclpy", reason="the client nodes need rclpy")


def test_every_topic_has_its_message_type_and_qos(ros: None) -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from rtseg_ros.names import QosSpec
    from rtseg_ros.ros.interfaces import LABEL_INFO_QOS, message_type, qos_profile

    pytest.importorskip("vision_msgs.msg", reason="label_info is a vision_msgs/LabelInfo; vision_msgs is missing")
    specs = [value for name, value in vars(Topics).items() if not name.startswith("_")]
    for spec in specs:
        msg_type = message_type(spec)
        assert f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}" == spec.msg_type
        profile = qos_profile(spec.qos)
        assert profile.depth == spec.qos.depth
        assert profile.reliability == (ReliabilityPolicy.RELIABLE if spec.qos.reliability == "reliable"
                                       else ReliabilityPolicy.BEST_EFFORT)
    assert Topics.LABEL_INFO.msg_type == "vision_msgs/msg/LabelInfo"  # always, on every machine
    assert Topics.LABEL_INFO_META.qos == Topics.LABEL_INFO.qos
    assert LABEL_INFO_QOS.durability == DurabilityPolicy.TRANSIENT_LOCAL  # latched for late joiners
    assert qos_profile(Topics.LABELS.qos, depth=50).depth == 50
    with pytest.raises(ValueError, match="unknown QoS setting 'sometimes'"):
        qos_profile(QosSpec(depth=1, reliability="sometimes"))


def _label_info_messages(num_classes: int):
    """What the node latches: label_info (LabelInfo) and its label_info_meta (JSON)."""
    from std_msgs.msg import String

    from rtseg_ros.ros.interfaces import label_info_message

    meta = String(data=json.dumps(SegmenterConfig(input_height=64, input_width=128).label_info_fields("x")))
    return label_info_message([str(i) for i in range(num_classes)]), meta


def test_feeder_and_listener_resolve_in_the_namespace_and_measure(ros: None) -> None:
    """A feeder standing in for the node's labels publisher: the listener counts, times and stamps."""
    from rclpy.node import Node

    from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener
    from rtseg_ros.ros.interfaces import LABEL_INFO_QOS, message_type

    pytest.importorskip("vision_msgs.msg", reason="label_info is a vision_msgs/LabelInfo; vision_msgs is missing")
    with ClientSession() as session:
        context = session.context
        fake_labels = session.add(CameraFeeder(namespace="/robot7", image_topic=Topics.LABELS.name,
                                               frame_id="front", node_name="fake_node", context=context))
        fake_node = session.add(Node("segmentation_node", namespace="/robot7", context=context))
        label_info = fake_node.create_publisher(message_type(Topics.LABEL_INFO), Topics.LABEL_INFO.name,
                                                LABEL_INFO_QOS)
        label_info_meta = fake_node.create_publisher(message_type(Topics.LABEL_INFO_META),
                                                     Topics.LABEL_INFO_META.name, LABEL_INFO_QOS)
        info, meta = _label_info_messages(19)
        label_info.publish(info)  # before the listener exists: both are latched
        label_info_meta.publish(meta)
        seen = []
        listener = session.add(OutputListener(namespace="robot7", outputs=(Topics.LABELS,), keep_messages=True,
                                              on_message=lambda topic, msg, at: seen.append(topic), context=context))
        assert fake_labels.image_topic == "/robot7/segmentation/labels" == listener.topic(Topics.LABELS)
        assert listener.node_path == "/robot7/segmentation_node"
        session.wait_until(lambda: listener.ready and fake_labels.connected, 20, "the listener to connect")
        assert listener.label_info_count == 1 and listener.label_info_text
        assert listener.label_info_meta_count == 1 and len(listener.label_info.class_map) == 19

        headers = []
        for _ in range(3):
            headers.append(fake_labels.publish_frame(np.zeros((4, 6, 3), np.uint8), "bgr"))
            session.spin_for(0.05)
        stats = listener.stats(Topics.LABELS)
        session.wait_until(lambda: stats.count == 3, 10, "three messages")
        assert fake_labels.published == 3 and seen == [listener.topic(Topics.LABELS)] * 3
        assert all(listener.by_stamp(listener.topic(Topics.LABELS), h).header.frame_id == "front" for h in headers)
        assert len(stats.latencies_ms) == 3 and all(0 <= value < 10_000 for value in stats.latencies_ms)
        assert stats.rate_hz is not None and stats.rate_hz > 0
        p50, p95 = stats.latency_percentiles()
        assert p50 <= p95
        assert all(np.isnan(stats.latency_percentiles(since=3)))
        with pytest.raises(KeyError, match="not listening to /robot7/segmentation/overlay"):
            listener.stats(Topics.OVERLAY)


def test_feeder_refuses_messages_of_another_transport(ros: None) -> None:
    from sensor_msgs.msg import CompressedImage, Image

    from rtseg_ros.ros.clients import CameraFeeder, ClientSession

    with ClientSession() as session:
        raw = session.add(CameraFeeder(context=session.context, node_name="raw_feeder"))
        # One participant cannot carry two types on one topic: the compressed feeder gets its own.
        compressed = session.add(CameraFeeder(transport="compressed", image_topic="compressed/image",
                                              context=session.context, node_name="compressed_feeder"))
        with pytest.raises(TypeError, match="publishes Image"):
            raw.publish(CompressedImage())
        with pytest.raises(ValueError, match="publish_frame sends raw frames"):
            compressed.publish_frame(np.zeros((2, 2, 3), np.uint8))
        with pytest.raises(TypeError, match="publishes CompressedImage"):
            compressed.publish(Image())
        with pytest.raises(ValueError, match="transport must be one of"):
            CameraFeeder(transport="h264", context=session.context)
        assert raw.published == compressed.published == 0
