"""Prediction export for benchmark servers.

Cityscapes: the official evaluation looks for one PNG per ground-truth image whose name starts
with ``<city>_<sequence>_<frame>`` (it searches ``<city>_<seq>_<frame>*.png`` under the results
folder) and holds *label ids* (7 = road, 26 = car, ...), not train ids. Files are written as
``<dir>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``, which also keeps the names unique per city.

Other label sets have no such server; their predictions are written as train-id PNGs named after
the frame, so the same option still gives files a person can score elsewhere.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from rtseg_ros.datasets.labels import LabelSet, cityscapes_train_id_to_label_id

CITYSCAPES_NAME = re.compile(r"^(?P<city>[A-Za-z_]+)_(?P<seq>\d{6})_(?P<frame>\d{6})")


class PredictionExporter:
    """Writes each prediction as a PNG named after its frame.

    Args:
        directory: the output folder (created).
        label_set: the predictions' label set; ``cityscapes`` switches to label ids.
    """

    def __init__(self, directory: str | Path, label_set: LabelSet) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cityscapes = label_set.name == "cityscapes"
        self._to_label_id = cityscapes_train_id_to_label_id() if self.cityscapes else None
        self.written = 0

    def path_for(self, frame_name: str) -> Path:
        """The file a frame's prediction goes to; ``frame_name`` may be a recorded relative path."""
        stem = Path(frame_name).name
        for suffix in (".png", ".jpg", ".jpeg"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        if self.cityscapes:
            match = CITYSCAPES_NAME.match(stem)
            if match:
                base = f"{match['city']}_{match['seq']}_{match['frame']}"
                return self.directory / match["city"] / f"{base}_leftImg8bit.png"
        return self.directory / f"{stem}.png"

    def write(self, frame_name: str, prediction: np.ndarray) -> Path:
        """Write one HxW train-id prediction; returns the file written."""
        path = self.path_for(frame_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = self._to_label_id[prediction] if self._to_label_id is not None else prediction.astype(np.uint8)
        if not cv2.imwrite(str(path), ids):
            raise OSError(f"cannot write prediction {path}")
        self.written += 1
        return path
