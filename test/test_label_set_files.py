"""Label sets as YAML files: the shipped built-ins, a user's own file, refusals with the reason, and the
label set a checkpoint carries (served without being told; a mismatch names both sets)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rtseg_ros.datasets.labels import (
    CAMVID,
    CITYSCAPES,
    LABEL_SET_DIR,
    LabelSet,
    LabelSetError,
    get_label_set,
    read_label_set_file,
)
from rtseg_ros.engines.config import ConfigError, SegmenterConfig
from rtseg_ros.names import DEFAULT_LABEL_SET, LABEL_SET_NAMES, PARAMETERS

ROBOT = {
    "name": "robot",
    "description": "indoor robot classes",
    "classes": [
        {"name": "floor", "color": [128, 64, 128], "description": "where the robot may drive"},
        {"name": "wall", "color": [102, 102, 156]},
        {"name": "person", "color": [220, 20, 60]},
        {"name": "obstacle", "color": [0, 0, 142]},
        {"name": "other", "color": [70, 130, 180]},
    ],
    "label_ids": {10: "floor", 20: "wall", 30: "person", 40: 3, 50: "other", 0: None},
}


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def robot_file(tmp_path: Path, **changes: object) -> Path:
    return write_yaml(tmp_path / "robot.yaml", {**ROBOT, **changes})


def test_the_built_in_sets_are_shipped_label_set_files() -> None:
    assert sorted(p.stem for p in LABEL_SET_DIR.glob("*.yaml")) == sorted(LABEL_SET_NAMES)
    for builtin in (CITYSCAPES, CAMVID):
        from_file = read_label_set_file(LABEL_SET_DIR / f"{builtin.name}.yaml")
        assert from_file == builtin and from_file.source.endswith(f"{builtin.name}.yaml")
        assert get_label_set(builtin.name) is builtin and builtin.source == builtin.name
    # The file format round-trips, maps included.
    assert LabelSet.from_dict(CITYSCAPES.to_dict()) == CITYSCAPES
    assert LabelSet.from_dict(json.loads(CAMVID.to_json())) == CAMVID
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert "datasets/label_sets/*.yaml" in setup, "the label set files must be installed with the package"


def test_a_users_file_with_descriptions_and_a_label_id_map(tmp_path: Path) -> None:
    robot = get_label_set(str(robot_file(tmp_path)))
    assert robot.name == "robot" and robot.num_classes == 5 and robot.source == str((tmp_path / "robot.yaml").resolve())
    assert robot.class_names == ("floor", "wall", "person", "obstacle", "other")
    assert robot.colors[2] == (220, 20, 60) and robot.descriptions[0] == "where the robot may drive"
    assert robot.descriptions[1] == "" and robot.description == "indoor robot classes"
    assert robot.label_id_map() == {10: 0, 20: 1, 30: 2, 40: 3, 50: 4, 0: 255}
    table = robot.label_id_table()
    assert [int(table[v]) for v in (0, 10, 20, 30, 40, 50, 1, 11)] == [255, 0, 1, 2, 3, 4, 255, 255]
    assert LabelSet.from_dict(robot.to_dict()) == robot
    # Without name the file's stem names it; without label_ids masks hold class indices.
    plain = {k: v for k, v in ROBOT.items() if k not in ("name", "label_ids")}
    other = get_label_set(str(write_yaml(tmp_path / "warehouse.yml", plain)))
    assert other.name == "warehouse" and other.label_id_map() is None
    assert list(other.label_id_table()[:6]) == [0, 1, 2, 3, 4, 255]
    # Classes listed out of order with ids are put in id order.
    shuffled = [dict(entry, id=i) for i, entry in enumerate(ROBOT["classes"])][::-1]
    assert LabelSet.from_dict({"name": "r", "classes": shuffled}).class_names == robot.class_names


@pytest.mark.parametrize("changes, reason", [
    ({"classes": [{"name": "floor", "color": [1, 2, 3]}, {"name": "floor", "color": [4, 5, 6]}]},
     "duplicate class name 'floor' (classes 0 and 1)"),
    ({"classes": [{"name": "floor", "color": [1, 2, 3], "id": 0}, {"name": "wall", "color": [4, 5, 6], "id": 0}]},
     "duplicate class id 0 ('floor' and 'wall')"),
    ({"classes": [{"name": "floor", "color": [1, 2, 3], "id": 0}, {"name": "wall", "color": [4, 5, 6], "id": 2}]},
     "ids must be 0..1"),
    ({"label_ids": [{"id": 10, "class": "floor"}, {"id": 10, "class": "wall"}]}, "lists id 10 twice"),
    ({"classes": [{"name": "floor", "color": [1, 2, 3]}, {"name": "wall"}]}, "class 1 ('wall') has no color"),
    ({"classes": ["floor", "wall"]}, "class 0 ('floor') has no color"),
    ({"classes": [{"name": "floor", "color": [1, 2, 300]}]}, "color must be [R, G, B] with integers 0..255"),
    ({"classes": [{"name": "floor", "colour": [1, 2, 3]}]}, "unknown key(s) colour"),
    ({"colors": {}}, "unknown key(s) colors"),
    ({"classes": []}, "'classes' must be a non-empty list"),
    ({"label_ids": {10: "ceiling"}}, "class 'ceiling' is none of the classes (floor, wall"),
    ({"label_ids": {300: "floor"}}, "id must be a label-file value 0..255"),
    ({"color_labels": [{"color": [1, 2, 3], "class": "floor"}, {"color": [1, 2, 3], "class": "wall"}]},
     "color_labels lists color [1, 2, 3] twice"),
    ({"classes": [{"name": f"c{i}", "color": [i, i, i]} for i in range(256)]}, "256 classes do not fit"),
    ({"ignore_index": 3}, "5 classes do not fit below the ignore value 3"),
])
def test_bad_label_set_files_are_refused_with_the_reason(tmp_path: Path, changes: dict, reason: str) -> None:
    path = robot_file(tmp_path, **changes)
    with pytest.raises(LabelSetError) as error:
        get_label_set(str(path))
    assert reason in str(error.value) and str(path.resolve()) in str(error.value)
    # The node and the evaluator see it as a configuration error with the same reason.
    with pytest.raises(ConfigError, match="robot.yaml"):
        SegmenterConfig(label_set=str(path)).validate()


def test_unknown_names_and_missing_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(LabelSetError, match="unknown label set 'ade20k'; known: camvid, cityscapes, or the path"):
        get_label_set("ade20k")
    with pytest.raises(LabelSetError, match="label set file not found: .*missing.yaml"):
        get_label_set(str(tmp_path / "missing.yaml"))
    (tmp_path / "broken.yaml").write_text("classes: [\n")
    with pytest.raises(LabelSetError, match="not valid YAML"):
        get_label_set(str(tmp_path / "broken.yaml"))
    # An edited file is read again.
    path = robot_file(tmp_path)
    assert get_label_set(str(path)).num_classes == 5
    write_yaml(path, {**ROBOT, "classes": ROBOT["classes"][:3], "label_ids": None})
    assert get_label_set(str(path)).num_classes == 3


def test_the_label_set_parameter_takes_a_name_a_file_or_nothing(tmp_path: Path) -> None:
    spec = PARAMETERS["label_set"]
    assert spec.default == "" and spec.choices == () and "YAML" in spec.description
    path = robot_file(tmp_path)
    config = SegmenterConfig.from_parameters({"label_set": str(path)})
    config.validate()
    assert config.resolved_num_classes() == 5 and config.to_parameters()["label_set"] == str(path)
    assert [c["name"] for c in config.label_info_fields("0" * 64)["classes"]] == list(ROBOT_NAMES)
    # Empty and no weights: the default set.
    assert SegmenterConfig().resolved_label_set() is get_label_set(DEFAULT_LABEL_SET)
    with pytest.raises(ConfigError, match="num_classes=5 does not match label set 'cityscapes'"):
        SegmenterConfig(num_classes=5).validate()
    SegmenterConfig(label_set=str(path), num_classes=5).validate()


ROBOT_NAMES = tuple(entry["name"] for entry in ROBOT["classes"])


# ------------------------------------------------------------------------------------------------
# Checkpoints carry their label set


def _checkpoint(tmp_path: Path, label_set: object, classes: int, name: str = "robot.pth") -> Path:
    import torch

    from rtseg_ros.nets import build_model, save_weights

    torch.manual_seed(0)
    return save_weights(build_model("atonet", num_classes=classes), tmp_path / name, model_name="atonet",
                        label_set=label_set)


def test_a_checkpoint_records_its_label_set_and_is_served_with_it(tmp_path: Path) -> None:
    from rtseg_ros.engines import Segmenter
    from rtseg_ros.nets.checkpoint import LABEL_SET_DEFINITION, checkpoint_label_set, read_checkpoint_info

    robot = get_label_set(str(robot_file(tmp_path)))
    weights = _checkpoint(tmp_path, robot, 5)
    (tmp_path / "robot.yaml").unlink()  # the weights alone say what their classes are
    info = read_checkpoint_info(weights)
    assert info["label_set"] == "robot" and info["num_classes"] == 5
    assert info[LABEL_SET_DEFINITION]["classes"][0] == {"name": "floor", "color": [128, 64, 128],
                                                       "description": "where the robot may drive"}
    recorded, classes = checkpoint_label_set(weights)
    assert recorded == robot and classes == 5

    config = SegmenterConfig(model="atonet", weights=str(weights), input_height=64, input_width=64)
    config.check()
    assert config.resolved_label_set() == robot
    segmenter = Segmenter(config)
    assert segmenter.label_set == robot and segmenter.num_classes == 5
    info = config.label_info_fields(segmenter.weights_id, segmenter.label_set)
    assert info["label_set"] == "robot" and info["num_classes"] == 5
    assert [c["name"] for c in info["classes"]] == list(ROBOT_NAMES)
    result = segmenter.segment(np.zeros((48, 64, 3), np.uint8))
    assert result.labels.shape == (48, 64) and int(result.labels.max()) < 5

    # Older files (a name only) and the authors' files (nothing) still load.
    old = _checkpoint(tmp_path, "camvid", 11, "old.pth")
    assert checkpoint_label_set(old) == (CAMVID, 11)
    assert SegmenterConfig(model="atonet", weights=str(old)).resolved_label_set() is CAMVID
    bare = tmp_path / "bare.pth"
    import torch

    torch.save(torch.load(old, weights_only=True)["state_dict"], bare)
    assert checkpoint_label_set(bare) == (None, None)
    assert SegmenterConfig(model="atonet", weights=str(bare)).resolved_label_set() is CITYSCAPES


def test_a_label_set_that_disagrees_with_the_checkpoint_is_refused_naming_both(tmp_path: Path) -> None:
    from rtseg_ros.engines import Segmenter

    robot_path = robot_file(tmp_path)
    weights = _checkpoint(tmp_path, get_label_set(str(robot_path)), 5)
    # Other classes: CamVid has 11.
    with pytest.raises(LabelSetError) as error:
        Segmenter(SegmenterConfig(model="atonet", weights=str(weights), label_set="camvid", input_height=64,
                                  input_width=64))
    message = str(error.value)
    assert "label set mismatch" in message and str(weights) in message
    assert "'robot' (5 classes: floor, wall, person, obstacle, other)" in message
    assert "label_set 'camvid' is 'camvid' (11 classes: sky, building" in message and "5 classes vs 11" in message
    # Same count, other names or order.
    renamed = write_yaml(tmp_path / "renamed.yaml", {**ROBOT, "name": "renamed", "label_ids": None, "classes": [
        dict(entry, name="ground") if entry["name"] == "floor" else entry for entry in ROBOT["classes"]]})
    with pytest.raises(LabelSetError, match="class 0 is 'floor' vs 'ground'"):
        SegmenterConfig(model="atonet", weights=str(weights), label_set=str(renamed)).resolved_label_set()
    # The same classes in other colours are served in the given colours.
    recoloured = write_yaml(tmp_path / "recoloured.yaml", {**ROBOT, "classes": [
        dict(entry, color=[1, 2, 3]) for entry in ROBOT["classes"]]})
    served = SegmenterConfig(model="atonet", weights=str(weights), label_set=str(recoloured)).resolved_label_set()
    assert served.colors[0] == (1, 2, 3)


def test_a_class_count_that_disagrees_with_the_checkpoint_is_refused(tmp_path: Path) -> None:
    # A checkpoint that records 5 classes under a name it does not define (as a label set given by name would).
    weights = _checkpoint(tmp_path, "robot", 5)
    four = write_yaml(tmp_path / "four.yaml", {**ROBOT, "classes": ROBOT["classes"][:4], "label_ids": None})
    with pytest.raises(LabelSetError, match=r"the checkpoint .*robot.pth has 5 classes, but label_set .*four.yaml"):
        SegmenterConfig(model="atonet", weights=str(weights), label_set=str(four)).resolved_label_set()
    with pytest.raises(LabelSetError, match="has 5 classes and records no label set"):
        SegmenterConfig(model="atonet", weights=str(weights)).resolved_label_set()
    # The given file with 5 classes is taken.
    assert SegmenterConfig(model="atonet", weights=str(weights),
                           label_set=str(robot_file(tmp_path))).resolved_label_set().num_classes == 5
    # save_weights refuses a label set that does not fit the model.
    with pytest.raises(ValueError, match="does not fit the model's 5 classes"):
        _checkpoint(tmp_path, CAMVID, 5, "bad.pth")


# ------------------------------------------------------------------------------------------------
# The command line: make-bag records a file's set, eval takes it, or the checkpoint's


def test_make_bag_and_eval_take_a_label_set_file(tmp_path: Path) -> None:
    import cv2
    from click.testing import CliRunner

    from rtseg_ros.cli.evaluate import evaluate, make_bag
    from rtseg_ros.io.bags import CUSTOM_LABEL_SET, CUSTOM_LABEL_SET_DEFINITION, bag_custom_data

    path = robot_file(tmp_path)
    images, masks = tmp_path / "data/val/images", tmp_path / "data/val/masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    mask = np.full((32, 64), 10, np.uint8)  # raw values of the file's label_ids map: 10 = floor ...
    mask[:8] = 50
    mask[8:16, :32] = 20
    for index in range(2):
        cv2.imwrite(str(images / f"{index}.png"), np.full((32, 64, 3), 100 + index, np.uint8))
        cv2.imwrite(str(masks / f"{index}.png"), mask)
    runner = CliRunner()
    made = runner.invoke(make_bag, ["--dataset", "folder", "--root", str(tmp_path / "data"), "--label-set", str(path),
                                    "--out", str(tmp_path / "bag"), "--no-progress"])
    assert made.exit_code == 0, made.output
    custom = bag_custom_data(tmp_path / "bag")
    assert custom[CUSTOM_LABEL_SET] == "robot"
    assert LabelSet.from_dict(json.loads(custom[CUSTOM_LABEL_SET_DEFINITION])) == get_label_set(str(path))

    weights = _checkpoint(tmp_path, get_label_set(str(path)), 5)
    common = ["--model", "atonet", "--weights", str(weights), "--input-size", "32x64", "--overlays", "0",
              "--no-progress"]
    # From the bag's record, no --label-set: the masks were mapped through label_ids when the bag was made.
    result = runner.invoke(evaluate, [str(tmp_path / "bag"), "--json", str(tmp_path / "bag.json"), *common])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bag.json").read_text())
    assert report["label_set"] == "robot" and list(report["per_class_iou"]) == list(ROBOT_NAMES)
    assert (tmp_path / "bag.label_set.yaml").is_file()
    # From the folder with --label-set: the same frames, the same score.
    result = runner.invoke(evaluate, ["--dataset", "folder", "--root", str(tmp_path / "data"), "--label-set", str(path),
                                      "--json", str(tmp_path / "folder.json"), *common])
    assert result.exit_code == 0, result.output
    folder = json.loads((tmp_path / "folder.json").read_text())
    assert folder["miou"] == report["miou"] and folder["frames"] == 2
    # A set that disagrees with the checkpoint is refused, naming both.
    result = runner.invoke(evaluate, [str(tmp_path / "bag"), "--label-set", "camvid", "--json",
                                      str(tmp_path / "x.json"), *common])
    assert result.exit_code != 0 and "label set mismatch" in result.output and "'robot'" in result.output
    result = runner.invoke(evaluate, [str(tmp_path / "bag"), "--label-set", str(tmp_path / "none.yaml"), "--json",
                                      str(tmp_path / "x.json"), *common])
    assert result.exit_code != 0 and "label set file not found" in result.output


def test_folder_masks_are_mapped_by_a_files_label_ids_only(tmp_path: Path) -> None:
    # The built-in sets' label_ids describe their own data sets' files; folder masks of them hold train ids.
    assert CITYSCAPES.folder_label_map() is None and CAMVID.folder_label_map() is None
    assert LabelSet.from_dict(CITYSCAPES.to_dict()).folder_label_map() is None  # as a checkpoint records it
    assert get_label_set(str(robot_file(tmp_path))).folder_label_map()[10] == 0
