"""``rtseg make-bag`` and ``rtseg eval`` end to end, with the real Segmenter on tiny frames."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rtseg_ros.cli.evaluate import evaluate, make_bag
from rtseg_ros.io.bags import BagFrameReader, bag_storage

from dataset_trees import write_camvid_tree, write_cityscapes_tree

REQUIRED_FIELDS = ("miou", "pixel_accuracy", "per_class_iou", "confusion_matrix", "frames", "skipped", "latency_ms",
                   "schema", "schema_version", "model", "label_set", "complete")


@pytest.fixture(scope="module")
def atonet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a randomly initialised ATONet, in our format (training is not the point here)."""
    from rtseg_ros.nets import build_model
    from rtseg_ros.nets.checkpoint import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "atonet_random.pth"
    save_weights(build_model("atonet", num_classes=19), path, model_name="atonet", label_set="cityscapes")
    return path


def run(command, args: list[str]):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    return result


def test_make_bag_then_eval_bag_and_folder(tmp_path: Path, atonet_weights: Path) -> None:
    torch.set_num_threads(1)
    write_cityscapes_tree(tmp_path / "cs", "val", count=2, height=64, width=128)
    made = run(make_bag, ["--dataset", "cityscapes", "--root", tmp_path / "cs", "--split", "val",
                          "--out", tmp_path / "bag", "--storage", "sqlite3", "--no-progress"])
    assert made.exit_code == 0, made.output
    assert "wrote 2 frames" in made.output and bag_storage(tmp_path / "bag") == "sqlite3"
    assert len(list(BagFrameReader(tmp_path / "bag"))) == 2

    common = ["--model", "atonet", "--weights", atonet_weights, "--input-size", "64x128", "--no-progress"]
    from_bag = run(evaluate, [tmp_path / "bag", *common, "--json", tmp_path / "bag.json",
                              "--export-dir", tmp_path / "export"])
    assert from_bag.exit_code == 0, from_bag.output + from_bag.stderr
    report = json.loads((tmp_path / "bag.json").read_text())
    for field in REQUIRED_FIELDS:
        assert field in report, field
    assert report["frames"] == 2 and report["complete"] and report["mode"] == "bag"
    assert "traffic light" in report["per_class_iou"] and len(report["confusion_matrix"]) == 19
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]
    assert report["model"]["weights_sha256"] and report["model"]["input_size"] == [64, 128]
    assert len(list((tmp_path / "export" / "synthcity").glob("synthcity_*_leftImg8bit.png"))) == 2
    assert "mIoU" in from_bag.output and (tmp_path / "bag.md").is_file() and (tmp_path / "bag_confusion.png").is_file()

    # The same frames read straight from the folder at their full size give the same scores.
    from_folder = run(evaluate, ["--dataset", "cityscapes", "--root", tmp_path / "cs", "--split", "val",
                                 *common[:-3], "--input-size", "full", "--no-progress",
                                 "--json", tmp_path / "folder.json"])
    assert from_folder.exit_code == 0, from_folder.output + from_folder.stderr
    folder_report = json.loads((tmp_path / "folder.json").read_text())
    assert folder_report["mode"] == "dataset" and folder_report["model"]["input_size"] == [64, 128]
    assert folder_report["confusion_matrix"] == report["confusion_matrix"]


def test_eval_camvid_bag_with_ground_truth_from_the_folder(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    write_camvid_tree(tmp_path / "camvid", "test", count=2, height=64, width=96)
    assert run(make_bag, ["--dataset", "camvid", "--root", tmp_path / "camvid", "--split", "test",
                          "--out", tmp_path / "bag", "--no-progress"]).exit_code == 0
    result = run(evaluate, [tmp_path / "bag", "--dataset", "camvid", "--root", tmp_path / "camvid", "--split", "test",
                            "--model", "mfaranet", "--scales", "2", "--input-size", "64x96", "--no-progress",
                            "--json", tmp_path / "r.json"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "RANDOM weights" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["label_set"] == "camvid" and report["frames"] == 2 and report["model"]["scales"] == [2]
    assert list(report["per_class_iou"])[6] == "sign symbol"
    # Without --dataset the label set comes from the bag's metadata, written by make-bag.
    result = run(evaluate, [tmp_path / "bag", "--model", "atonet", "--input-size", "64x96", "--max-frames", "1",
                            "--no-progress", "--json", tmp_path / "bag_only.json"])
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads((tmp_path / "bag_only.json").read_text())["label_set"] == "camvid"


def test_eval_usage_errors_are_clear(tmp_path: Path) -> None:
    result = run(evaluate, ["--json", tmp_path / "r.json"])
    assert result.exit_code == 2 and "give a BAG, or --dataset and --root" in result.stderr
    result = run(evaluate, [tmp_path / "missing_bag", "--json", tmp_path / "r.json", "--model", "atonet"])
    assert result.exit_code == 1 and "bag not found" in result.stderr
    # Weights are resolved as the node resolves them: a name that is no file and no manifest entry says where it looked.
    result = run(evaluate, [tmp_path / "missing_bag", "--json", tmp_path / "r.json", "--weights", "x.pth"])
    assert result.exit_code == 1 and "'x.pth' is neither an existing file nor a manifest entry" in result.stderr
    assert "searched:" in result.stderr
    result = run(make_bag, ["--dataset", "cityscapes", "--root", tmp_path, "--out", tmp_path / "b"])
    assert result.exit_code == 1 and "Cityscapes images of split 'val' folder not found" in result.stderr
