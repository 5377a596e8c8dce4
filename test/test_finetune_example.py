"""docs/own-classes.md end to end: a synthetic 5-class data set in the folder layout, ``rtseg train`` to
those classes from a toy checkpoint, ``rtseg eval`` on it, and the node serving it with label_info listing
the five names.

The two YAML files (label set and recipe) are read from the page itself, so the walkthrough stays true.
To fit CI (about 2-3 minutes on 2 CPU cores) the toy checkpoint is a toy of the toy: the ``synthetic``
recipe for a few iterations at 64x128 (the real one, which ``rtseg demo`` trains, takes minutes), and
the fine-tuning runs fewer, smaller iterations than the page's recipe.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from rtseg_ros.cli import main
from rtseg_ros.datasets.labels import CITYSCAPES, get_label_set
from rtseg_ros.datasets.synthetic import make_scene

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-classes.md"
HEIGHT, WIDTH = 64, 128
FIVE = ("floor", "wall", "person", "obstacle", "other")
# The synthetic street classes grouped into the robot's five (mask values 1..5 as the page's label_ids say).
GROUPS = {"floor": ("road", "sidewalk", "terrain"), "wall": ("building",), "person": ("person",),
          "obstacle": ("car", "pole", "traffic sign"), "other": ("sky", "vegetation")}
MASK_VALUE = {name: index + 1 for index, name in enumerate(FIVE)}


def doc_yaml(first_line: str) -> str:
    """The page's ```yaml block that starts with ``first_line``."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    matches = [block for block in blocks if block.startswith(first_line)]
    assert len(matches) == 1, f"docs/own-classes.md has no single yaml block starting {first_line!r}"
    return matches[0]


def write_robot_data(root: Path, split: str, count: int, first_seed: int) -> None:
    """Synthetic scenes in the folder layout, masks in the annotation tool's values (0 = unlabelled)."""
    table = np.zeros(256, np.uint8)
    for name, members in GROUPS.items():
        for member in members:
            table[CITYSCAPES.class_names.index(member)] = MASK_VALUE[name]
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    for index in range(count):
        rgb, labels = make_scene(first_seed + index, HEIGHT, WIDTH, min_object_width=6)
        mask = table[labels]
        mask[-2:] = 0  # an unlabelled strip: not scored
        cv2.imwrite(str(root / split / "images" / f"{index:04d}.png"), rgb[..., ::-1])
        cv2.imwrite(str(root / split / "masks" / f"{index:04d}.png"), mask)


def rtseg(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


QUIET = ("--set", "output.progress=false", "--set", "output.tensorboard=false", "--set", "data.workers=0")


@pytest.mark.slow
@pytest.mark.ros
def test_own_classes_walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rclpy", reason="the node needs rclpy (pip install '.[ros]')")
    monkeypatch.chdir(tmp_path)  # the page's relative paths (classes.yaml, robot_data, runs/...)
    started = time.monotonic()

    # 1-2. The data set and the label set file of the page.
    write_robot_data(tmp_path / "robot_data", "train", 24, 0)
    write_robot_data(tmp_path / "robot_data", "val", 4, 1000)
    (tmp_path / "classes.yaml").write_text(doc_yaml("# classes.yaml"))
    robot = get_label_set("classes.yaml")
    assert robot.class_names == FIVE and robot.label_id_map()[MASK_VALUE["person"]] == FIVE.index("person")

    # A toy checkpoint (Cityscapes classes) to start from, as `rtseg demo` leaves one.
    rtseg("train", "synthetic", "--set", "train.iterations=8", "--set", "train.batch_size=4",
          "--set", f"data.synthetic.height={HEIGHT}", "--set", f"data.synthetic.width={WIDTH}",
          "--set", "data.synthetic.train_count=16", "--set", "data.synthetic.val_count=2",
          "--set", f"augment.crop=[{HEIGHT}, {WIDTH}]", "--set", "val.every_iterations=8",
          "--set", "output.dir=toy", "--set", "output.weights=null", *QUIET)
    toy = tmp_path / "toy" / "final.pth"
    assert toy.is_file()

    # 3. Fine-tune with the page's recipe, shortened.
    (tmp_path / "robot_finetune.yaml").write_text(doc_yaml("# robot_finetune.yaml"))
    output = rtseg("train", "robot_finetune.yaml", "--set", f"init.weights={toy}", "--set", "train.iterations=60",
                   "--set", "train.batch_size=4", "--set", f"augment.crop=[{HEIGHT}, {WIDTH}]",
                   "--set", "augment.scale=[1.0, 1.0]", "--set", "val.every_iterations=60", *QUIET)
    weights = tmp_path / "runs" / "robot_finetune" / "final.pth"
    assert f"weights: {weights.relative_to(tmp_path)}" in output

    # 4. Score it: the file's classes (the checkpoint's too), the masks mapped through its label_ids.
    common = ("--dataset", "folder", "--root", "robot_data", "--split", "val", "--model", "atonet",
              "--weights", weights, "--input-size", f"{HEIGHT}x{WIDTH}", "--overlays", "1", "--no-progress")
    rtseg("eval", *common, "--label-set", "classes.yaml", "--json", "robot_val.json")
    report = json.loads((tmp_path / "robot_val.json").read_text())
    assert report["label_set"] == "robot" and list(report["per_class_iou"]) == list(FIVE)
    assert report["frames"] == 4
    # Fine-tuned, it segments: far above the chance of five classes (measured: see the report's figures).
    assert report["pixel_accuracy"] > 0.6, report
    with pytest.raises(AssertionError, match="label set mismatch"):
        rtseg("eval", *common, "--label-set", "camvid", "--json", "wrong.json")
    # From here on the weights alone know the classes.
    (tmp_path / "classes.yaml").unlink()
    # Without --label-set: the set the checkpoint records (its label_ids map the masks the same way).
    monkeypatch.chdir(tmp_path / "runs")
    rtseg("eval", *[("../robot_data" if a == "robot_data" else a) for a in common], "--json",
          "../robot_val_again.json")
    again = json.loads((tmp_path / "robot_val_again.json").read_text())
    assert again["label_set"] == "robot" and again["miou"] == report["miou"]
    monkeypatch.chdir(tmp_path)

    # 5. Serve it: label_info lists the five names, from the checkpoint alone.
    _serve_and_check_label_info(weights, tmp_path, robot.colors)
    print(f"own-classes walkthrough: {time.monotonic() - started:.0f} s")


def _serve_and_check_label_info(weights: Path, tmp_path: Path, colors: tuple) -> None:
    from rtseg_ros.engines import SegmenterConfig
    from rtseg_ros.names import Topics
    from rtseg_ros.ros.clients import CameraFeeder, ClientSession, OutputListener
    from rtseg_ros.ros.node_process import NodeProcess, node_command

    config = SegmenterConfig(model="atonet", weights=str(weights), input_height=HEIGHT, input_width=WIDTH)
    assert config.label_set == ""  # nothing says the classes but the checkpoint
    namespace = "/robot_five"
    command = node_command(config, namespace=namespace, node_settings={"qos_reliability": "reliable"})
    session = ClientSession()
    try:
        listener = session.add(OutputListener(namespace=namespace, outputs=(Topics.LABELS,), context=session.context,
                                              keep_messages=True, listener_name="robot_five_listener"))
        feeder = session.add(CameraFeeder(namespace=namespace, context=session.context,
                                          node_name="robot_five_camera"))
        with NodeProcess(command, tmp_path / "node.log") as node:
            node.wait_ready(lambda: listener.ready and feeder.connected, 120.0, session.spin_once)
            names = [entry.class_name for entry in listener.label_info.class_map]
            assert names == list(FIVE)
            assert [entry.class_id for entry in listener.label_info.class_map] == list(range(5))
            meta = listener.label_info_meta
            assert meta["label_set"] == "robot" and meta["num_classes"] == 5
            assert [c["name"] for c in meta["classes"]] == list(FIVE)
            assert [tuple(c["color"]) for c in meta["classes"]] == list(colors)
            # And it segments a frame into those classes.
            rgb, _ = make_scene(2000, HEIGHT, WIDTH, min_object_width=6)
            feeder.publish_frame(rgb, "rgb")
            labels = listener.stats(Topics.LABELS)
            session.wait_until(lambda: labels.count > 0, 30.0, "labels of the frame", node)
            frame = listener.messages[listener.topic(Topics.LABELS)][-1][1]
            assert max(frame.data) < 5
    finally:
        session.close()
