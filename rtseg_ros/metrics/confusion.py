"""A streaming confusion matrix with the Cityscapes benchmark's IoU conventions.

Rows are ground truth, columns are predictions. Pixels whose ground truth is the ignore value are
left out. A class that appears in neither prediction nor ground truth has an undefined IoU
(``nan`` here, ``null`` in JSON) and does not enter the mean, as in the official evaluation.
"""
from __future__ import annotations

import numpy as np

from rtseg_ros.datasets.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` count matrix over many frames."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> int:
        """Add one frame. Returns the number of ground-truth pixels with an unknown label value
        (neither a class nor the ignore value); those pixels are not counted.

        Raises:
            ValueError: the two maps differ in shape, or a prediction is out of range.
        """
        if prediction.shape != ground_truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in shape")
        gt = ground_truth.reshape(-1).astype(np.int64, copy=False)
        pred = prediction.reshape(-1).astype(np.int64, copy=False)
        valid = gt != self.ignore_index
        known = valid & (gt >= 0) & (gt < self.num_classes)
        unknown = int(np.count_nonzero(valid & ~known))
        pred_k = pred[known]
        if pred_k.size and (pred_k.min() < 0 or pred_k.max() >= self.num_classes):
            raise ValueError(f"prediction holds class ids outside [0, {self.num_classes})")
        self.matrix += np.bincount(gt[known] * self.num_classes + pred_k,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)
        return unknown

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another matrix's counts (for example from another worker process)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        self.matrix += other.matrix

    def iou(self) -> np.ndarray:
        """Per-class IoU; ``nan`` where the class is absent from prediction and ground truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - np.diag(self.matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def mean_iou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (``nan`` if none is)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels over all counted pixels (``nan`` before any pixel was counted)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def normalized(self) -> np.ndarray:
        """Rows normalised to sum to 1 (rows of absent classes stay 0): for heatmaps."""
        rows = self.matrix.sum(1, keepdims=True)
        return np.divide(self.matrix, rows, out=np.zeros(self.matrix.shape), where=rows > 0)
