"""Label sets, data set readers and synthetic scenes (no ROS, no network access)."""
from __future__ import annotations

import importlib
from types import ModuleType

from rtseg_ros.datasets.base import DatasetError, Sample, SamplePaths, load_sample
from rtseg_ros.datasets.labels import CAMVID, CITYSCAPES, LabelSet, get_label_set

DATASET_NAMES: tuple[str, ...] = ("cityscapes", "camvid", "folder")


def get_dataset_reader(name: str) -> ModuleType:
    """The reader module for a data set (``cityscapes``, ``camvid`` or ``folder``).

    Each provides ``list_samples(root, split) -> list[SamplePaths]`` (decode one with
    :func:`load_sample`) and ``LABEL_SET`` (the label set's name, or ``None`` for ``folder``, whose
    masks follow a label set the user names).
    """
    key = name.lower()
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")
    return importlib.import_module(f"rtseg_ros.datasets.{key}")


__all__ = [
    "CAMVID", "CITYSCAPES", "DATASET_NAMES", "DatasetError", "LabelSet", "Sample", "SamplePaths",
    "get_dataset_reader", "get_label_set", "load_sample",
]
