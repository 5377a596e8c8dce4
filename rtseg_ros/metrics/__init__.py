"""Segmentation metrics (confusion matrix, IoU, mIoU, pixel accuracy)."""
from rtseg_ros.metrics.confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
