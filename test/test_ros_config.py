"""Every parameter file in config/ starts the real node; bad weights stop it with a clear error."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ros_helpers import (
    REPO,
    STARTUP_TIMEOUT_S,
    Client,
    NodeProcess,
    label_info_json,
    node_command,
    write_random_checkpoint,
)
from rtseg_ros.engines import SegmenterConfig
from rtseg_ros.names import DEFAULT_LABEL_SET, PARAMETERS

pytestmark = pytest.mark.ros

CONFIGS = sorted((REPO / "config").glob("*.yaml"))
# Run each file on this CPU: random weights, eager PyTorch, a small input.
CPU_OVERRIDES = {"weights": "", "backend": "torch", "precision": "fp32", "device": "cpu",
                 "input_height": 64, "input_width": 128}
EXIT_TIMEOUT_S = 60.0


DEFAULTS = {name: spec.default for name, spec in PARAMETERS.items()}


def _parameters(path: Path) -> dict:
    """What the file sets (only what differs from the defaults)."""
    document = yaml.safe_load(path.read_text())
    assert list(document) == ["/**"], f"{path.name}: use the '/**:' wildcard so any node name picks it up"
    return document["/**"]["ros__parameters"]


def test_the_shipped_settings_exist() -> None:
    names = {path.name for path in CONFIGS}
    assert {"mfaranet_cityscapes.yaml", "mfaranet_cityscapes_pruned.yaml", "atonet_cityscapes.yaml",
            "atonet_camvid.yaml", "cpu.yaml"} <= names
    assert (REPO / "config" / "fastdds_localhost.xml").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_sets_declared_parameters_with_their_types(path: Path) -> None:
    values = _parameters(path)
    unknown = set(values) - set(PARAMETERS)
    assert not unknown, f"{path.name} sets undeclared parameters {unknown} (the node would ignore them)"
    for name, value in values.items():
        assert type(value) is type(PARAMETERS[name].default), f"{path.name}: {name}={value!r}"
        # A default repeated in a file would hide a later change of the default.
        assert value != PARAMETERS[name].default, f"{path.name} repeats the default {name}={value!r}; leave it out"
    # As shipped (GPU settings included) the engine settings are consistent; this machine may not run them.
    # Weight files are not shipped, so only their absence is allowed to differ.
    SegmenterConfig.from_parameters({**values, "weights": ""}).validate()


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, dict[str, NodeProcess]]]:
    """One node per config file, all started at once, each in its own namespace."""
    logs = tmp_path_factory.mktemp("config_logs")
    # No config: the engine is the file's, with only the CPU overrides on top.
    nodes = {path.stem: NodeProcess(node_command(None, node_settings=CPU_OVERRIDES, namespace=f"/{path.stem}",
                                                 params_file=path), logs / f"{path.stem}.log")
             for path in CONFIGS}
    client = Client("rtseg_config_test")
    for name in nodes:
        client.listener(f"/{name}")
    yield client, nodes
    client.close()
    for node in nodes.values():
        node.request_stop()
    for node in nodes.values():
        node.stop()


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_node_starts_with_config(path: Path, started: tuple[Client, dict[str, NodeProcess]]) -> None:
    client, nodes = started
    topic = f"/{path.stem}/segmentation/label_info_meta"
    client.wait_for(lambda: bool(client.messages(topic)), STARTUP_TIMEOUT_S, f"{path.name} to start", nodes[path.stem])
    info = label_info_json(client.messages(topic)[-1])
    values = {**DEFAULTS, **_parameters(path)}
    # An empty label_set (the default) serves the checkpoint's set; without weights, the default set.
    assert info["model"] == values["model"] and info["label_set"] == (values["label_set"] or DEFAULT_LABEL_SET)
    assert info["input_size"] == [CPU_OVERRIDES["input_height"], CPU_OVERRIDES["input_width"]]


def _exit(command: list[str], log: Path) -> tuple[int, str]:
    node = NodeProcess(command, log)
    node.process.wait(EXIT_TIMEOUT_S)
    node.stop()
    return node.process.returncode, node.log()


def test_missing_weights_stop_the_node_with_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.pth"
    code, log = _exit(node_command(None, node_settings={"weights": str(missing)}, namespace="/missing"),
                      tmp_path / "node.log")
    assert code == 2
    assert str(missing) in log and "not found" in log
    assert "set 'weights' to '' to run with untrained random weights" in log
    assert "Traceback" not in log


def test_mismatched_weights_stop_the_node_with_a_clear_error(tmp_path: Path) -> None:
    camvid = write_random_checkpoint(tmp_path / "atonet_camvid.pth", "atonet", "camvid")
    config = SegmenterConfig(model="atonet", weights=str(camvid), label_set="cityscapes", input_height=64,
                             input_width=128)
    code, log = _exit(node_command(config, namespace="/mismatched"), tmp_path / "node.log")
    assert code == 2
    assert f"cannot load weights '{camvid}'" in log and "Point 'weights' at a checkpoint" in log
    assert "Traceback" not in log


def test_a_wrong_typed_parameter_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    # rclpy itself refuses an integer for a boolean parameter; the node says which and what it takes.
    code, log = _exit(node_command(None, node_settings={"publish_overlay": 1}, namespace="/typed"),
                      tmp_path / "node.log")
    assert code == 2
    assert "publish_overlay" in log and "takes true or false" in log
    assert "Traceback" not in log


def test_a_wrong_label_size_stops_the_node_with_the_reason(tmp_path: Path) -> None:
    # The type is right (text), the form is not: the parameter table's own check says why.
    code, log = _exit(node_command(None, node_settings={"output_resolution": "640x"}, namespace="/sized"),
                      tmp_path / "node.log")
    assert code == 2
    assert "output_resolution '640x' is not input, network or WIDTHxHEIGHT such as 640x480" in log
    assert "Traceback" not in log


def test_without_vision_msgs_the_node_stops_with_a_clear_error(tmp_path: Path) -> None:
    # A vision_msgs that cannot be imported, first on the path, stands for one that is not installed.
    hidden = tmp_path / "hide" / "vision_msgs"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named vision_msgs (hidden by the test)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden.parent), os.environ.get("PYTHONPATH", "")])}
    node = NodeProcess(node_command(None, namespace="/no_vision_msgs"), tmp_path / "node.log", env=env)
    node.process.wait(EXIT_TIMEOUT_S)
    node.stop()
    log = node.log()
    assert node.process.returncode == 2, log
    assert "vision_msgs is not installed" in log and "vision_msgs/msg/LabelInfo" in log and "rosdep" in log
    assert "Traceback" not in log
