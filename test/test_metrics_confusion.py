"""ConfusionMatrix against hand-computed answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rtseg_ros.metrics import ConfusionMatrix


def test_iou_accuracy_and_absent_classes_by_hand():
    cm = ConfusionMatrix(4)
    gt = np.array([[0, 0, 1, 1], [1, 255, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 3, 2, 2]], dtype=np.uint8)
    assert cm.update(pred, gt) == 0
    # class 0: tp 1, fp 0, fn 1 -> 1/2; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: tp 2, fp 1 -> 2/3;
    # class 3: only predicted on an ignored pixel -> absent -> nan.
    iou = cm.iou()
    assert iou[:3] == pytest.approx([0.5, 0.5, 2 / 3])
    assert math.isnan(iou[3])
    assert cm.mean_iou() == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    assert cm.matrix.sum() == 7
    assert cm.normalized()[1].tolist() == pytest.approx([0, 2 / 3, 1 / 3, 0])


def test_unknown_ground_truth_values_are_counted_not_scored():
    cm = ConfusionMatrix(3)
    assert cm.update(np.zeros((2, 2), np.uint8), np.array([[0, 7], [9, 255]], np.uint8)) == 2
    assert cm.matrix.sum() == 1


def test_bad_input_is_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.full((2, 2), 5, np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="different class counts"):
        cm.merge(ConfusionMatrix(4))


def test_merge_equals_one_pass_and_empty_is_nan():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (2, 16, 16)).astype(np.uint8)
    pred = rng.integers(0, 5, (2, 16, 16)).astype(np.uint8)
    a, b, both = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred[0], gt[0])
    b.update(pred[1], gt[1])
    a.merge(b)
    both.update(pred, gt)
    assert np.array_equal(a.matrix, both.matrix)
    empty = ConfusionMatrix(5)
    assert math.isnan(empty.mean_iou()) and math.isnan(empty.pixel_accuracy())
