"""Where evaluation frames come from: a bag, a data set folder, or a bag matched to a folder.

Every source's ``frames(skipped)`` yields :class:`EvalFrame` objects one at a time and records
what it had to skip in the tally it is given (the evaluation's), so a bad file or message costs
one frame, not the run. ``make_dataset_bag`` is the other direction: a data set split into a bag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from rtseg_ros.datasets import get_dataset_reader
from rtseg_ros.datasets.base import DatasetError, SamplePaths, load_sample, read_labels
from rtseg_ros.io.bags import (
    CUSTOM_DATASET,
    CUSTOM_LABEL_SET,
    CUSTOM_SPLIT,
    BagDamage,
    BagFrameReader,
    BagWriter,
    bag_storage,
)
from rtseg_ros.skips import SKIP_UNREADABLE_FILE, SkipTally


@dataclass
class EvalFrame:
    """A frame to segment and, when ``labels`` is set, to score.

    Attributes:
        name: the image file relative to the data set root when known, else a name made from the stamp.
        stamp_ns: header stamp (bags) or a running index (folders).
        image: HxWx3 uint8 in ``color_order``.
        labels: HxW uint8 train ids (255 = ignore) or ``None``.
    """

    name: str
    stamp_ns: int
    image: np.ndarray
    color_order: str
    labels: np.ndarray | None


class DatasetGroundTruth:
    """Ground truth looked up in a data set folder by the file name recorded in a bag."""

    def __init__(self, dataset: str, root: str | Path, split: str,
                 label_map: Mapping[int, int] | None = None) -> None:
        samples = _list(dataset, root, split, label_map)
        self._by_path: dict[str, SamplePaths] = {s.relative_path: s for s in samples}
        self.description = f"{dataset} {split} ground truth in {root}"

    def labels_for(self, name: str | None) -> np.ndarray | None:
        """The train ids for a recorded file name, or ``None`` when the folder has none for it.

        Raises:
            DatasetError: the label file exists but cannot be read.
        """
        paths = self._by_path.get(name) if name else None
        if paths is None or paths.label_path is None:
            return None
        return read_labels(paths.label_path, paths.label_format, paths.label_map)


def _list(dataset: str, root: str | Path, split: str, label_map: Mapping[int, int] | None) -> list[SamplePaths]:
    reader = get_dataset_reader(dataset)
    if label_map:
        if dataset != "folder":
            raise DatasetError("a label map applies to the 'folder' data set only")
        return reader.list_samples(root, split, label_map=label_map)
    return reader.list_samples(root, split)


class BagSource:
    """Frames of a bag, with ground truth from the bag or, if given, from a data set folder.

    Attributes:
        damage: after the frames are read, what a damaged bag gave up (``None`` for a whole bag);
            the report's ``source.damage``.
    """

    def __init__(self, path: str | Path, ground_truth: DatasetGroundTruth | None = None) -> None:
        self.path = Path(path)
        self.ground_truth = ground_truth
        self.damage: BagDamage | None = None
        self.total = BagFrameReader(self.path).frame_count()
        self.description = f"bag {self.path} ({bag_storage(self.path)})"
        if ground_truth is not None:
            self.description += f" with {ground_truth.description}"

    def frames(self, skipped: SkipTally) -> Iterator[EvalFrame]:
        """The bag's frames in stamp order; undecodable messages and unreadable label files are
        recorded in ``skipped``; a damaged bag's frames before the damage, then :attr:`damage`."""
        self.damage = None
        reader = BagFrameReader(self.path, tally=skipped)
        for frame in reader:
            name = frame.name or f"frame_{frame.stamp_ns}"
            labels = frame.labels
            if self.ground_truth is not None:
                try:
                    labels = self.ground_truth.labels_for(frame.name)
                except DatasetError as exc:
                    skipped.record(SKIP_UNREADABLE_FILE, str(exc))
                    continue
            yield EvalFrame(name, frame.stamp_ns, frame.image, frame.color_order, labels)
        self.damage = reader.damage


class DatasetSource:
    """Frames of a data set split, read from disk one at a time."""

    damage: BagDamage | None = None  # files are read one by one: nothing breaks off

    def __init__(self, dataset: str, root: str | Path, split: str,
                 label_map: Mapping[int, int] | None = None) -> None:
        self.samples = _list(dataset, root, split, label_map)
        self.total = len(self.samples)
        self.description = f"{dataset} {split} in {root}"

    def frames(self, skipped: SkipTally) -> Iterator[EvalFrame]:
        """The split's frames in listing order; files that cannot be read are recorded in ``skipped``."""
        for index, paths in enumerate(self.samples):
            try:
                sample = load_sample(paths)
            except DatasetError as exc:
                skipped.record(SKIP_UNREADABLE_FILE, str(exc))
                continue
            yield EvalFrame(paths.relative_path, index, sample.image, "rgb", sample.labels)


def make_dataset_bag(dataset: str, root: str | Path, split: str, out: str | Path, storage: str = "mcap",
                     rate_hz: float = 10.0, start_ns: int = 1_700_000_000 * 1_000_000_000,
                     limit: int | None = None, label_map: Mapping[int, int] | None = None,
                     progress: bool = False) -> dict[str, int]:
    """Write a data set split as a bag (see :mod:`rtseg_ros.io.bags` for the topics).

    Frames are read and written one at a time. A frame whose files cannot be read is skipped and
    counted. Returns ``{"frames": written, "skipped": skipped, "without_ground_truth": n}``.
    """
    from tqdm import tqdm

    if rate_hz <= 0:
        raise ValueError(f"rate must be positive, got {rate_hz} Hz")
    samples = _list(dataset, root, split, label_map)[:limit]
    period_ns = int(round(1e9 / rate_hz))
    skipped = SkipTally()
    without_gt = 0
    custom = {CUSTOM_DATASET: dataset, CUSTOM_SPLIT: split}
    reader = get_dataset_reader(dataset)
    # Readers of data sets that ship calibration (Cityscapes) provide camera_intrinsics(paths).
    intrinsics_of = getattr(reader, "camera_intrinsics", None)
    label_set = reader.LABEL_SET
    if label_set:
        custom[CUSTOM_LABEL_SET] = label_set
    with BagWriter(out, storage, custom_data=custom) as writer:
        for paths in tqdm(samples, desc="make-bag", unit="frame", disable=not progress):
            try:
                sample = load_sample(paths)
                intrinsics = intrinsics_of(paths) if intrinsics_of else None
            except DatasetError as exc:
                skipped.record(SKIP_UNREADABLE_FILE, str(exc))
                continue
            without_gt += sample.labels is None
            writer.write_frame(start_ns + writer.frames_written * period_ns, sample.image, sample.labels,
                               paths.relative_path, intrinsics)
        return {"frames": writer.frames_written, "skipped": skipped.total,
                "without_ground_truth": without_gt}
