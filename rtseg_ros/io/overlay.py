"""Class colours blended over a camera frame: the one overlay the node publishes and the evaluator draws."""
from __future__ import annotations

import cv2
import numpy as np

from rtseg_ros.datasets.labels import LabelSet

__all__ = ["overlay_labels"]


def overlay_labels(
    image: np.ndarray, color_order: str, labels: np.ndarray, label_set: LabelSet, alpha: float = 0.5
) -> np.ndarray:
    """Blend the label set's colours over a camera frame.

    Each pixel is ``(1 - alpha) * frame + alpha * colour``. Pixels holding the label set's ignore
    value (ground truth that is not scored; the networks never predict it) are black, so what is
    not scored stands out whatever ``alpha`` is.

    Args:
        image: HxWx3 uint8 frame, any size (it is resized to the labels').
        color_order: ``"rgb"`` or ``"bgr"``, the channel order of ``image``.
        labels: hxw uint8 class ids.
        label_set: gives the palette and the ignore value.
        alpha: weight of the class colours, 0 (frame only) to 1 (colours only).

    Returns:
        An hxwx3 uint8 RGB image.

    Raises:
        ValueError: an unknown ``color_order`` or an ``alpha`` outside [0, 1].
    """
    if color_order not in ("rgb", "bgr"):
        raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image[..., ::-1] if color_order == "bgr" else image
    height, width = labels.shape
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=cv2.INTER_AREA)
    colors = label_set.colorize(labels)
    blended = cv2.addWeighted(np.ascontiguousarray(rgb), 1.0 - alpha, colors, alpha, 0.0)
    ignored = labels == label_set.ignore_index
    if ignored.any():
        blended[ignored] = 0
    return blended
