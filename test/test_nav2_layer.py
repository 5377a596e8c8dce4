"""The Nav2 layer block (rtseg_ros.ros.nav2_layer) and docs/nav2.md, which shows its output: no rclpy, no torch."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtseg_ros.datasets.labels import get_label_set
from rtseg_ros.names import Topics
from rtseg_ros.ros.nav2_layer import EXAMPLE_TYPES, PLUGIN, layer_block, layer_yaml, main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "nav2.md"
OWN_CLASSES_DOC = REPO / "docs" / "own-classes.md"
COMMAND = "python -m rtseg_ros.ros.nav2_layer "
# A ```bash block holding one command of the module, then the ```yaml block of its output.
_EXAMPLE = re.compile(r"```bash\n(python -m rtseg_ros\.ros\.nav2_layer [^\n]*)\n```\n\n```yaml\n(.*?)```", re.S)


def _classes_of(block: dict) -> list[str]:
    camera = block[block["observation_sources"]]
    return [name for type_name in camera["class_types"] for name in camera[type_name]["classes"]]


@pytest.mark.parametrize("label_set", ["cityscapes", "camvid"])
def test_every_class_is_in_exactly_one_class_type(label_set: str) -> None:
    classes = get_label_set(label_set)
    block = layer_block(classes, {"traversable": ["sidewalk"], "caution": ["road"]})
    assert sorted(_classes_of(block)) == sorted(classes.class_names)
    camera = block["camera"]
    assert camera["class_types"] == ["traversable", "caution", "obstacle"]
    assert camera["traversable"]["classes"] == ["sidewalk"] and camera["caution"]["classes"] == ["road"]
    assert camera["obstacle"]["base_cost"] == EXAMPLE_TYPES["obstacle"].base_cost
    assert block["plugin"] == PLUGIN and block["use_approximate_time_sync"] is False


def test_topics_follow_the_node_namespace_and_the_cloud_is_the_callers() -> None:
    block = layer_block(get_label_set("camvid"), {}, namespace="/front/", cloud_topic="/front/depth/points",
                        approximate_sync=True)
    camera = block["camera"]
    assert camera["segmentation_topic"] == f"/front/{Topics.LABELS.name}"
    assert camera["confidence_topic"] == f"/front/{Topics.CONFIDENCE.name}"
    assert camera["labels_topic"] == f"/front/{Topics.LABEL_INFO.name}"
    assert camera["pointcloud_topic"] == "/front/depth/points" and block["use_approximate_time_sync"] is True
    # No group: every class is an obstacle, and empty class types are left out (the layer skips them with an error).
    assert camera["class_types"] == ["obstacle"]
    assert yaml.safe_load(layer_yaml(get_label_set("camvid"), {}))["semantic_segmentation_layer"]["camera"] \
        == layer_block(get_label_set("camvid"), {})["camera"]


@pytest.mark.parametrize(("groups", "message"), [
    ({"traversable": ["pavement"]}, "has no class 'pavement'"),
    ({"traversable": ["road"], "caution": ["road"]}, "'road' is in both 'traversable' and 'caution'"),
    ({"slippery": ["road"]}, "no costs for class types ['slippery']"),
])
def test_bad_groups_are_refused_with_the_reason(groups: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        layer_block(get_label_set("cityscapes"), groups)


def test_the_command_refuses_an_unknown_class(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--label-set", "camvid", "--traversable", "grass"])
    assert info.value.code == 2 and "has no class 'grass'" in capsys.readouterr().err


def test_the_guide_shows_what_its_commands_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """docs/nav2.md: each layer block is the output of the command above it (rerun them to update the page)."""
    # The user label set of the page is the one of docs/own-classes.md.
    own = [block for block in re.findall(r"```yaml\n(.*?)```", OWN_CLASSES_DOC.read_text(), flags=re.S)
           if block.startswith("# classes.yaml")]
    assert len(own) == 1
    (tmp_path / "classes.yaml").write_text(own[0])
    monkeypatch.chdir(tmp_path)
    examples = _EXAMPLE.findall(DOC.read_text(encoding="utf-8"))
    label_sets = set()
    for command, shown in examples:
        args = shlex.split(command[len(COMMAND):])
        assert main(args) == 0
        assert capsys.readouterr().out == shown, f"docs/nav2.md is stale: rerun `{command}` and paste its output"
        label_sets.add(args[args.index("--label-set") + 1])
    assert label_sets == {"cityscapes", "camvid", "classes.yaml"}


def test_the_module_imports_neither_torch_nor_rclpy() -> None:
    code = ("import sys; from rtseg_ros.ros.nav2_layer import main; main(['--label-set', 'camvid']); "
            "loaded = {'torch', 'rclpy'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
