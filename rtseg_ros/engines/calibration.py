"""Camera frames for int8 calibration: a folder of images or a rosbag2."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rtseg_ros.datasets.base import IMAGE_SUFFIXES


class CalibrationDataError(ValueError):
    """Calibration data that is missing, empty or unreadable."""


def iter_calibration_frames(path: str | Path, limit: int) -> Iterator[tuple[np.ndarray, str]]:
    """Yield up to ``limit`` (HxWx3 uint8 frame, colour order) pairs from ``path``.

    ``path`` is either a rosbag2 folder (it holds ``metadata.yaml``; frames come from its image
    topic through :mod:`rtseg_ros.io.bags`) or a folder searched recursively for image files, taken
    in sorted order so calibration is repeatable.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CalibrationDataError(f"calibration data not found: {root}")
    count = 0
    if (root / "metadata.yaml").is_file():
        from rtseg_ros.io.bags import BagFrameReader

        for frame in BagFrameReader(root):
            if count >= limit:
                return
            count += 1
            yield frame.image, frame.color_order
    else:
        import cv2

        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for file in files:
            if count >= limit:
                return
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None:
                continue  # unreadable files are skipped; an all-unreadable folder fails below
            count += 1
            yield image, "bgr"
    if count == 0:
        raise CalibrationDataError(f"no readable frames in {root} (expected images or a rosbag2 folder)")
