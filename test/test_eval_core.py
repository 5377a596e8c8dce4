"""Evaluator core with stored or rule-based predictions: known answers, storages, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from rtseg_ros.datasets.labels import CAMVID, CAMVID_32_COLORS, CITYSCAPES
from rtseg_ros.evaluation.evaluator import Evaluation, Prediction, build_report, run_evaluation
from rtseg_ros.evaluation.export import PredictionExporter
from rtseg_ros.evaluation.live import LiveScorer
from rtseg_ros.evaluation.sources import BagSource, DatasetGroundTruth, DatasetSource, make_dataset_bag
from rtseg_ros.io import bags
from rtseg_ros.io.bags import BagWriter
from rtseg_ros.skips import SKIP_DROPPED, SKIP_MISSING_GT, SKIP_UNDECODABLE_MESSAGE, SkipTally

from dataset_trees import write_cityscapes_tree

ROAD, SKY, BUILDING, CAR, TREE = (CAMVID.class_names.index(n) for n in ("road", "sky", "building", "car", "tree"))


def by_colour(image: np.ndarray, color_order: str) -> Prediction:
    """A deterministic rule standing in for a network: the red channel in ten bands."""
    red = image[..., 0 if color_order == "rgb" else 2]
    return Prediction((red // 26).astype(np.uint8), 2.0, {"inference": 1.5, "total": 2.0})


def test_camvid_colour_labels_score_a_known_answer(tmp_path: Path) -> None:
    # 40x60 colour label: sky, building (as Wall), road (as lane marking), then car (as SUV) | void.
    label = np.zeros((40, 60, 3), np.uint8)
    label[0:10] = CAMVID_32_COLORS["Sky"]
    label[10:20] = CAMVID_32_COLORS["Wall"]
    label[20:30] = CAMVID_32_COLORS["LaneMkgsDriv"]
    label[30:40, :30] = CAMVID_32_COLORS["SUVPickupTruck"]
    label[30:40, 30:] = CAMVID_32_COLORS["Void"]
    for folder, name in (("701_StillsRaw_full", "f.png"), ("LabeledApproved_full", "f_L.png")):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / name), cv2.cvtColor(label, cv2.COLOR_RGB2BGR))
    prediction = np.zeros((40, 60), np.uint8)
    prediction[0:10], prediction[10:20], prediction[20:30] = SKY, BUILDING, ROAD
    prediction[30:40, :15] = CAR
    prediction[30:40, 15:30] = ROAD  # half the car is called road
    prediction[30:40, 30:] = TREE  # void: not scored

    report = run_evaluation(DatasetSource("camvid", tmp_path, "all"), lambda image, order: Prediction(prediction, 1.0),
                            CAMVID, json_path=tmp_path / "r.json", progress=False)
    # By construction: road 600 true + 150 false-positive car pixels; car 150 of 300.
    expected = {"sky": 1.0, "building": 1.0, "road": 600 / 750, "car": 150 / 300}
    written = json.loads((tmp_path / "r.json").read_text())
    for name in CAMVID.class_names:
        assert written["per_class_iou"][name] == pytest.approx(expected.get(name), abs=1e-12) \
            if name in expected else written["per_class_iou"][name] is None, name
    assert written["miou"] == pytest.approx((1 + 1 + 0.8 + 0.5) / 4, abs=1e-12)
    assert written["pixel_accuracy"] == pytest.approx((600 + 600 + 600 + 150) / 2100, abs=1e-12)
    assert report["frames"] == 1 and written["label_set"] == "camvid" and written["schema_version"] == 1


def test_mcap_and_sqlite3_bags_give_identical_results(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path / "cs", "val", count=4, height=32, width=64)
    reports = {}
    for storage in ("mcap", "sqlite3"):
        make_dataset_bag("cityscapes", tmp_path / "cs", "val", tmp_path / storage, storage=storage)
        run_evaluation(BagSource(tmp_path / storage), by_colour, CITYSCAPES, json_path=tmp_path / f"{storage}.json",
                       progress=False)
        reports[storage] = json.loads((tmp_path / f"{storage}.json").read_text())
    direct = run_evaluation(DatasetSource("cityscapes", tmp_path / "cs", "val"), by_colour, CITYSCAPES, progress=False)
    for key in ("miou", "pixel_accuracy", "per_class_iou", "confusion_matrix", "frames", "skipped"):
        assert reports["mcap"][key] == reports["sqlite3"][key], key
    assert reports["mcap"]["frames"] == 4 and reports["mcap"]["miou"] > 0
    np.testing.assert_array_equal(reports["mcap"]["confusion_matrix"], direct["confusion_matrix"])


def test_ground_truth_from_a_folder_matched_by_recorded_name(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path / "cs", "val", count=3, height=32, width=64)
    first = "leftImg8bit/val/synthcity/synthcity_000000_000019_leftImg8bit.png"
    rgb = cv2.cvtColor(cv2.imread(str(tmp_path / "cs" / first)), cv2.COLOR_BGR2RGB)
    with BagWriter(tmp_path / "bag") as writer:  # images only; names point into the folder
        writer.write_frame(1, rgb, None, first)
        writer.write_frame(2, rgb, None, "leftImg8bit/val/synthcity/not_in_the_folder.png")
        writer.write_frame(3, rgb)
    truth = DatasetGroundTruth("cityscapes", tmp_path / "cs", "val")
    report = run_evaluation(BagSource(tmp_path / "bag", truth), by_colour, CITYSCAPES, progress=False)
    assert report["frames"] == 1 and report["skipped"] == {"missing ground truth": 2}
    reference = run_evaluation(DatasetSource("cityscapes", tmp_path / "cs", "val"), by_colour, CITYSCAPES,
                               max_frames=1, progress=False)
    np.testing.assert_array_equal(report["confusion_matrix"], reference["confusion_matrix"])


def test_bad_input_is_counted_and_the_run_goes_on(tmp_path: Path) -> None:
    image = np.full((8, 12, 3), 100, np.uint8)
    labels = np.full((8, 12), 3, np.uint8)
    unknown = labels.copy()
    unknown[:2] = 200  # neither a class nor 255
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_frame(1, image, labels, "ok_1.png")
        writer.write_frame(2, image, None, "no_gt.png")
        writer.write_frame(3, image, unknown, "unknown_value.png")
        writer.write_frame(4, image, labels, "wrong_size.png")
        writer.write_frame(5, image, labels, "raises.png")
        writer.write_frame(6, image, labels, "ok_6.png")
    with Writer(tmp_path / "bag2", version=9, storage_plugin=StoragePlugin.MCAP) as raw:
        conn = raw.add_connection(bags.IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=bags.TYPESTORE)
        raw.write(conn, 7, b"not a message")
    calls = []

    def predict(frame: np.ndarray, order: str) -> Prediction:
        calls.append(1)
        if len(calls) == 4:
            return Prediction(np.full((4, 6), 3, np.uint8), 1.0)  # e.g. network-resolution output
        if len(calls) == 5:
            raise ValueError("engine failed on this frame")
        return Prediction(np.full(frame.shape[:2], 3, np.uint8), 1.0)

    report = run_evaluation(BagSource(tmp_path / "bag"), predict, CITYSCAPES, json_path=tmp_path / "r.json",
                            progress=False)
    assert report["frames"] == 3 and report["frames_read"] == 6
    assert report["skipped"] == {"missing ground truth": 1, "size mismatch": 1, "inference error": 1}
    assert report["issues"] == {"unknown label value": 1} and report["unknown_label_pixels"] == 24
    assert report["pixel_accuracy"] == 1.0 and report["complete"]
    assert any("engine failed" in e for e in report["errors"])
    lines = (tmp_path / "r.frames.jsonl").read_text().splitlines()
    assert [json.loads(line)["skipped"] for line in lines] == [
        None, "missing ground truth", None, "size mismatch", "inference error", None]
    assert (tmp_path / "r.md").read_text().count("inference error: 1") == 1
    assert (tmp_path / "r_confusion.png").stat().st_size > 0 and len(list((tmp_path / "r_overlays").iterdir())) == 3
    broken = run_evaluation(BagSource(tmp_path / "bag2"), predict, CITYSCAPES, progress=False)
    assert broken["skipped"] == {SKIP_UNDECODABLE_MESSAGE: 1} and broken["frames_read"] == 0


def test_results_so_far_survive_an_interrupted_run(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path / "cs", "val", count=5, height=32, width=64)
    seen = []

    def interrupted(image: np.ndarray, order: str) -> Prediction:
        seen.append(1)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return by_colour(image, order)

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(DatasetSource("cityscapes", tmp_path / "cs", "val"), interrupted, CITYSCAPES,
                       json_path=tmp_path / "r.json", progress=False)
    partial = json.loads((tmp_path / "r.json").read_text())
    assert partial["complete"] is False and partial["frames"] == 3
    assert len((tmp_path / "r.frames.jsonl").read_text().splitlines()) == 3
    assert "INCOMPLETE" in (tmp_path / "r.md").read_text()
    full = run_evaluation(DatasetSource("cityscapes", tmp_path / "cs", "val"), by_colour, CITYSCAPES,
                          max_frames=3, progress=False)
    assert partial["confusion_matrix"] == full["confusion_matrix"].tolist()


def test_export_names(tmp_path: Path) -> None:
    cityscapes = PredictionExporter(tmp_path / "cs", CITYSCAPES)
    car = np.full((2, 2), 13, np.uint8)
    path = cityscapes.write("leftImg8bit/test/berlin/berlin_000123_000019_leftImg8bit.png", car)
    assert path == tmp_path / "cs" / "berlin" / "berlin_000123_000019_leftImg8bit.png"
    assert (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) == 26).all()  # car: train id 13 -> label id 26
    camvid = PredictionExporter(tmp_path / "cv", CAMVID)
    path = camvid.write("test/0001TP_008550.png", np.full((2, 2), 8, np.uint8))
    assert path.name == "0001TP_008550.png" and (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) == 8).all()


def test_live_scorer_matches_by_stamp_and_counts_drops() -> None:
    evaluation = Evaluation(CITYSCAPES)
    scorer = LiveScorer(evaluation, max_wait_s=1.0)
    labels = np.zeros((2, 3), np.uint8)
    for i, stamp in enumerate((100, 200, 300, 400)):
        scorer.on_published(stamp, f"f{stamp}", labels, now_s=10.0 + i * 0.1)
    assert scorer.on_received(200, labels, now_s=10.15)  # 50 ms after it was published
    assert scorer.on_received(100, labels, now_s=10.20)
    assert not scorer.on_received(999, labels, now_s=10.2)
    assert scorer.expire(now_s=11.25) == 1  # 300 is overdue, 400 is not yet
    assert scorer.on_received(400, np.zeros((1, 1), np.uint8), now_s=11.3)  # arrives, wrong size
    summary = scorer.summary(rate_factor=2.0)
    assert (summary["published"], summary["received"], summary["dropped"], summary["unmatched_outputs"]) == (4, 3, 1, 1)
    assert evaluation.frames == 2 and evaluation.skipped.counts == {SKIP_DROPPED: 1, "size mismatch": 1}
    latency = evaluation.metrics()["latency_ms"]
    assert latency["count"] == 3 and latency["max"] == pytest.approx(1000.0)
    assert summary["input_fps"] == pytest.approx(3 / 0.3)
    scorer.on_published(500, "f500", labels, now_s=12.0)
    with pytest.raises(ValueError, match="published twice"):
        scorer.on_published(500, "again", labels, now_s=12.1)


def test_the_evaluator_core_does_not_import_rclpy() -> None:
    code = ("import sys, rtseg_ros.evaluation, rtseg_ros.evaluation.live, rtseg_ros.io.bags, rtseg_ros.cli.evaluate; "
            "print(sorted(m for m in ('rclpy', 'rtseg_ros.ros') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_evaluation_owns_every_tally(tmp_path: Path) -> None:
    image = np.full((8, 12, 3), 100, np.uint8)
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_frame(1, image, np.full((8, 12), 3, np.uint8), "ok.png")
        writer.write_frame(2, image, None, "no_gt.png")
    source = BagSource(tmp_path / "bag")
    evaluation = Evaluation(CITYSCAPES)
    evaluation.skipped.record(SKIP_UNDECODABLE_MESSAGE, "recorded by a reader")
    for frame in source.frames(evaluation.skipped):
        evaluation.frames_read += 1
        evaluation.score(frame.name, np.full(frame.image.shape[:2], 3, np.uint8), frame.labels)
    metrics = evaluation.metrics()
    assert (metrics["frames"], metrics["frames_read"]) == (1, 2)
    assert metrics["skipped"] == {SKIP_UNDECODABLE_MESSAGE: 1, SKIP_MISSING_GT: 1}
    assert metrics["errors"] == [f"{SKIP_UNDECODABLE_MESSAGE}: recorded by a reader", f"{SKIP_MISSING_GT}: no_gt.png"]
    report = build_report(evaluation, {"mode": "bag"}, True, {"elapsed_s": 1.0})
    assert report["skipped"] == metrics["skipped"] and report["elapsed_s"] == 1.0
    with pytest.raises(ValueError, match="skipped come from the Evaluation"):
        build_report(evaluation, {}, True, {"skipped": {}})


def test_skip_tally_keeps_a_few_messages_per_reason() -> None:
    first, second = SkipTally(keep_per_reason=2), SkipTally()
    for index in range(4):
        first.record("bad image", f"frame {index}")
    second.record("bad image", "frame 9")
    assert first.total == 4 and first.messages == ["bad image: frame 0", "bad image: frame 1"]
    merged = SkipTally.merged(first, second)
    assert merged.counts == {"bad image": 5} and merged.messages[-1] == "bad image: frame 9"
