"""Colour overlays of label maps on camera frames (ROS-free; the node and the demo share it)."""
from __future__ import annotations

import cv2
import numpy as np

from rtseg_ros.datasets.labels import LabelSet

__all__ = ["overlay_labels"]


def overlay_labels(
    image: np.ndarray, color_order: str, labels: np.ndarray, label_set: LabelSet, alpha: float = 0.5
) -> np.ndarray:
    """Blend the label set's colours over a camera frame.

    Args:
        image: HxWx3 uint8 frame, any size (it is resized to the labels').
        color_order: ``"rgb"`` or ``"bgr"``, the channel order of ``image``.
        labels: hxw uint8 class ids.
        label_set: gives the palette.
        alpha: weight of the class colours (0 = frame only, 1 = colours only).

    Returns:
        An hxwx3 uint8 RGB image.
    """
    if color_order not in ("rgb", "bgr"):
        raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    rgb = image[..., ::-1] if color_order == "bgr" else image
    height, width = labels.shape
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=cv2.INTER_AREA)
    colors = label_set.colorize(labels)
    return cv2.addWeighted(np.ascontiguousarray(rgb), 1.0 - alpha, colors, alpha, 0.0)
