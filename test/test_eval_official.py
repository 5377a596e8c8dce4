"""The evaluator's numbers equal the official Cityscapes evaluation (cityscapesscripts) to 1e-6."""
from __future__ import annotations

import copy
import glob
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets.labels import CITYSCAPES, CITYSCAPES_LABELS
from rtseg_ros.evaluation.evaluator import Prediction, run_evaluation
from rtseg_ros.evaluation.sources import DatasetSource

cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")

HEIGHT, WIDTH, COUNT = 48, 96, 3
ABSENT_EVERYWHERE = "train"  # in neither prediction nor ground truth -> IoU undefined (null)
PREDICTED_ONLY = "rider"  # predicted but never in the ground truth -> IoU 0
VOID_IDS = (0, 1, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)  # label ids scored as ignore


def synthetic_split(root: Path) -> list[np.ndarray]:
    """Write a tiny Cityscapes split whose ground truth holds 17 of the 19 classes plus void ids,
    and return train-id predictions that are partly right, partly wrong."""
    rng = np.random.default_rng(7)
    by_name = {lab.name: lab for lab in CITYSCAPES_LABELS}
    gt_classes = [n for n in CITYSCAPES.class_names if n not in (ABSENT_EVERYWHERE, PREDICTED_ONLY)]
    gt_ids = [by_name[n].id for n in gt_classes] + list(VOID_IDS)
    predictable = [i for i, n in enumerate(CITYSCAPES.class_names) if n != ABSENT_EVERYWHERE]
    label_to_train = {lab.id: lab.train_id for lab in CITYSCAPES_LABELS}
    predictions = []
    for index in range(COUNT):
        stem = f"testcity_{index:06d}_000019"
        # Blocks of 8x8 pixels, each a random label id, so every class gets several regions.
        blocks = rng.choice(gt_ids, size=(HEIGHT // 8, WIDTH // 8))
        label_ids = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        train = np.vectorize(label_to_train.get)(label_ids).astype(np.uint8)
        prediction = np.where(train == 255, rng.choice(predictable, size=train.shape), train).astype(np.uint8)
        wrong = rng.random(train.shape) < 0.3
        prediction[wrong] = rng.choice(predictable, size=int(wrong.sum()))
        predictions.append(prediction)
        for folder, suffix, data in (("leftImg8bit", "leftImg8bit", rng.integers(0, 255, (HEIGHT, WIDTH, 3))),
                                     ("gtFine", "gtFine_labelIds", label_ids)):
            path = root / folder / "val" / "testcity" / f"{stem}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), data.astype(np.uint8))
    return predictions


def official_result(root: Path, prediction_dir: Path) -> dict:
    args = copy.copy(cs_eval.args)
    args.predictionPath = str(prediction_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    ground_truth = sorted(glob.glob(str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    # The official lookup by name also checks the exported file names.
    predictions = [cs_eval.getPrediction(args, gt) for gt in ground_truth]
    return cs_eval.evaluateImgLists(predictions, ground_truth, args)


def test_evaluator_matches_official_cityscapes_evaluation(tmp_path: Path) -> None:
    root, export = tmp_path / "cityscapes", tmp_path / "export"
    stored = iter(synthetic_split(root))

    def replay(image: np.ndarray, color_order: str) -> Prediction:
        return Prediction(next(stored), 1.0)

    report_path = tmp_path / "report.json"
    ours = run_evaluation(DatasetSource("cityscapes", root, "val"), replay, CITYSCAPES, json_path=report_path,
                          export_dir=export, progress=False)
    official = official_result(root, export)

    assert ours["frames"] == COUNT and not ours["skipped"]
    written = json.loads(report_path.read_text())
    assert written["per_class_iou"][ABSENT_EVERYWHERE] is None
    assert written["per_class_iou"][PREDICTED_ONLY] == 0.0
    for name in CITYSCAPES.class_names:
        theirs = official["classScores"][name]
        if math.isnan(theirs):
            assert written["per_class_iou"][name] is None, name
        else:
            assert written["per_class_iou"][name] == pytest.approx(theirs, abs=1e-6), name
    assert written["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)

    # Their matrix is indexed by label id and also counts void pixels; ours is train ids, void left out.
    theirs = np.asarray(official["confMatrix"], dtype=np.int64)
    ids = [lab.id for lab in sorted((lab for lab in CITYSCAPES_LABELS if lab.train_id != 255),
                                    key=lambda lab: lab.train_id)]
    np.testing.assert_array_equal(np.asarray(written["confusion_matrix"]), theirs[np.ix_(ids, ids)])
    expected_accuracy = np.trace(theirs[np.ix_(ids, ids)]) / theirs[np.ix_(ids, ids)].sum()
    assert written["pixel_accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
