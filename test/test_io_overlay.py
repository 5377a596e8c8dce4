"""The one overlay blend (the node's overlay topic and the evaluator's pictures), without ROS."""
from __future__ import annotations

import numpy as np
import pytest

from rtseg_ros.datasets.labels import CAMVID, CITYSCAPES
from rtseg_ros.io.overlay import overlay_labels


def test_overlay_blends_palette_colours_over_the_frame() -> None:
    frame = np.zeros((8, 12, 3), np.uint8)
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 3:] = 2
    overlay = overlay_labels(frame, "rgb", labels, CITYSCAPES, alpha=1.0)
    assert overlay.shape == (4, 6, 3)
    np.testing.assert_array_equal(overlay[0, 0], CITYSCAPES.colors[0])
    np.testing.assert_array_equal(overlay[0, 5], CITYSCAPES.colors[2])
    white_bgr = np.full((4, 6, 3), (255, 0, 0), np.uint8)  # blue in BGR
    half = overlay_labels(white_bgr, "bgr", np.zeros((4, 6), np.uint8), CAMVID, alpha=0.5)
    np.testing.assert_allclose(half[0, 0], (np.array(CAMVID.colors[0]) + [0, 0, 255]) / 2, atol=1)
    with pytest.raises(ValueError, match="color_order"):
        overlay_labels(frame, "hsv", labels, CITYSCAPES)


def test_ignored_pixels_are_black_at_any_alpha() -> None:
    frame = np.full((2, 3, 3), 200, np.uint8)
    labels = np.array([[0, 255, 1], [255, 2, 0]], np.uint8)
    for alpha in (0.0, 0.5, 1.0):
        overlay = overlay_labels(frame, "rgb", labels, CITYSCAPES, alpha=alpha)
        assert (overlay[labels == 255] == 0).all() and (overlay[labels != 255] > 0).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay_labels(frame, "rgb", labels, CITYSCAPES, alpha=1.5)


def test_the_evaluator_panels_use_the_same_blend() -> None:
    from rtseg_ros.evaluation.reports import overlay_panel

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    truth = rng.integers(0, 19, (6, 8), dtype=np.uint8)
    truth[0] = 255
    prediction = rng.integers(0, 19, (6, 8), dtype=np.uint8)
    panel = overlay_panel(image, prediction, truth, CITYSCAPES, alpha=0.55)
    np.testing.assert_array_equal(panel[:, :8], image)
    np.testing.assert_array_equal(panel[:, 8:16], overlay_labels(image, "rgb", truth, CITYSCAPES, 0.55))
    np.testing.assert_array_equal(panel[:, 16:], overlay_labels(image, "rgb", prediction, CITYSCAPES, 0.55))
    assert (panel[0, 8:16] == 0).all()
