"""Where evaluation frames come from: a bag, a data set folder, or a bag matched to a folder.

Every source's ``frames(skipped)`` yields :class:`EvalFrame` objects one at a time and records
what it had to skip in the tally it is given (the evaluation's), so a bad file or message costs
one frame, not the run. ``make_dataset_bag`` is the other direction: a data set split into a bag.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from rtseg_ros.datasets import get_dataset_reader
from rtseg_ros.datasets.base import DatasetError, SamplePaths, load_sample, read_labels
from rtseg_ros.io.bags import (
    CAMERA_INFO_TOPIC,
    CUSTOM_DATASET,
    CUSTOM_LABEL_SET,
    CUSTOM_LABEL_SET_DEFINITION,
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
        camera_info: the bag's ``sensor_msgs/CameraInfo`` of the frame (a rosbags message), for a
            :class:`BagSource` asked for it.
    """

    name: str
    stamp_ns: int
    image: np.ndarray
    color_order: str
    labels: np.ndarray | None
    camera_info: Any | None = None


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

    Args:
        path: the bag.
        ground_truth: where to look up labels by recorded file name instead of the bag's own.
        camera_info: also give each frame the bag's camera info (live evaluation republishes it).

    Attributes:
        damage: after the frames are read, what a damaged bag gave up (``None`` for a whole bag);
            the report's ``source.damage``.
    """

    def __init__(self, path: str | Path, ground_truth: DatasetGroundTruth | None = None,
                 camera_info: bool = False) -> None:
        self.path = Path(path)
        self.ground_truth = ground_truth
        self.camera_info = camera_info
        self.damage: BagDamage | None = None
        self.total = BagFrameReader(self.path).frame_count()
        self.description = f"bag {self.path} ({bag_storage(self.path)})"
        if ground_truth is not None:
            self.description += f" with {ground_truth.description}"

    def frames(self, skipped: SkipTally) -> Iterator[EvalFrame]:
        """The bag's frames in stamp order; undecodable messages and unreadable label files are
        recorded in ``skipped``; a damaged bag's frames before the damage, then :attr:`damage`."""
        self.damage = None
        reader = BagFrameReader(self.path, tally=skipped,
                                camera_info_topic=CAMERA_INFO_TOPIC if self.camera_info else None)
        for frame in reader:
            name = frame.name or f"frame_{frame.stamp_ns}"
            labels = frame.labels
            if self.ground_truth is not None:
                try:
                    labels = self.ground_truth.labels_for(frame.name)
                except DatasetError as exc:
                    skipped.record(SKIP_UNREADABLE_FILE, str(exc))
                    continue
            yield EvalFrame(name, frame.stamp_ns, frame.image, frame.color_order, labels, frame.camera_info)
        self.damage = reader.damage


class DatasetSource:
    """Frames of a data set split, read from disk one at a time."""

    damage: BagDamage | None = None  # files are read one by one: nothing breaks off

    def __init__(self, dataset: str, root: str | Path, split: str,
                 label_map: Mapping[int, int] | None = None) -> None:
        self.samples = _list(dataset, root, split, label_map)
        # Each frame's place in the listing (its stamp_ns), kept when the list is sharded.
        self.indices: Sequence[int] = range(len(self.samples))
        self.total = len(self.samples)
        self.description = f"{dataset} {split} in {root}"

    def shard(self, rank: int, world_size: int) -> "DatasetSource":
        """Every ``world_size``-th sample from the ``rank``-th on (a process's share of a distributed run)."""
        part = copy.copy(self)
        part.samples, part.indices = self.samples[rank::world_size], self.indices[rank::world_size]
        part.total = len(part.samples)
        return part

    def frames(self, skipped: SkipTally) -> Iterator[EvalFrame]:
        """The split's frames in listing order; files that cannot be read are recorded in ``skipped``."""
        for index, paths in zip(self.indices, self.samples):
            try:
                sample = load_sample(paths)
            except DatasetError as exc:
                skipped.record(SKIP_UNREADABLE_FILE, str(exc))
                continue
            yield EvalFrame(paths.relative_path, index, sample.image, "rgb", sample.labels)


def make_dataset_bag(dataset: str, root: str | Path, split: str, out: str | Path, storage: str = "mcap",
                     rate_hz: float = 10.0, start_ns: int = 1_700_000_000 * 1_000_000_000,
                     limit: int | None = None, label_map: Mapping[int, int] | None = None,
                     progress: bool = False, label_set: Any = None) -> dict[str, int]:
    """Write a data set split as a bag (see :mod:`rtseg_ros.io.bags` for the topics).

    Frames are read and written one at a time. A frame whose files cannot be read is skipped and
    counted. ``label_set`` (a :class:`~rtseg_ros.datasets.labels.LabelSet`) is recorded as the
    ground truth's classes, by name, and whole when it is not a built-in set; default: the reader's
    own. Returns ``{"frames": written, "skipped": skipped, "without_ground_truth": n}``.
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
    if label_set is not None:
        custom[CUSTOM_LABEL_SET] = label_set.name
        if label_set.source != label_set.name:  # not a built-in set: the bag carries its definition
            custom[CUSTOM_LABEL_SET_DEFINITION] = label_set.to_json()
    elif reader.LABEL_SET:
        custom[CUSTOM_LABEL_SET] = reader.LABEL_SET
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
