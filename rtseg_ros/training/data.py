"""Torch data sets for training and validation, their loaders, and the sampler that makes runs resumable.

The data sets wrap the readers of :mod:`rtseg_ros.datasets` (Cityscapes, CamVid, a folder of images
and masks) or generate :mod:`rtseg_ros.datasets.synthetic` scenes on the fly from seeds. Training
augmentation draws from a generator seeded by (seed, epoch, index), and :class:`EpochSampler` gives
each epoch a seeded order that can start part-way through: together they let a run resumed from a
mid-epoch checkpoint see exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rtseg_ros.datasets import (
    DatasetError,
    SamplePaths,
    get_dataset_reader,
    load_sample,
)
from rtseg_ros.datasets.synthetic import make_scene, to_camvid
from rtseg_ros.names import IGNORE_INDEX, LABEL_SET_NAMES
from rtseg_ros.training.distributed import DistributedContext
from rtseg_ros.training.losses import LabelRangeError
from rtseg_ros.training.transforms import Compose, to_tensors

LOG = logging.getLogger(__name__)

__all__ = [
    "EpochSampler",
    "ReaderDataset",
    "SyntheticScenes",
    "build_datasets",
    "scan_labels",
    "train_loader",
    "val_loader",
]

PairTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class _SegmentationDataset(Dataset):
    """Common part: seeded augmentation, an optional input resize, conversion to tensors.

    ``resize`` changes the image only: the labels keep their own size, so validation scores the
    prediction (upsampled to the label size) at full resolution, as the evaluator does.
    """

    def __init__(self, transform: PairTransform | None, resize: tuple[int, int] | None, seed: int) -> None:
        if transform is not None and resize is not None:
            raise ValueError("resize is for validation inputs; training sizes come from the augmentation's crop")
        self.transform = transform
        self.resize = resize
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws are used (call before creating the loader's iterator)."""
        self.epoch = epoch

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample's RGB image and train-id labels before any transform."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.raw(index)
        if self.resize is not None and image.shape[:2] != tuple(self.resize):
            image = cv2.resize(image, (self.resize[1], self.resize[0]), interpolation=cv2.INTER_LINEAR)
        if self.transform is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, labels = self.transform(image, labels, rng)
        return to_tensors(image, labels)


class ReaderDataset(_SegmentationDataset):
    """Frames listed by a data set reader (``list_samples``), decoded with ``load_sample``.

    Args:
        samples: the split's frames; frames without ground truth are rejected.
        transform: training augmentation (``None`` for validation).
        resize: optional ``(height, width)`` the image (not the labels) is resized to.
        seed: base seed of the augmentation.
    """

    def __init__(self, samples: Sequence[SamplePaths], transform: PairTransform | None = None,
                 resize: tuple[int, int] | None = None, seed: int = 0) -> None:
        super().__init__(transform, resize, seed)
        unlabeled = [s.name for s in samples if s.label_path is None]
        if unlabeled:
            raise DatasetError(f"{len(unlabeled)} frame(s) have no label file (e.g. {unlabeled[0]}); training and "
                               f"validation need ground truth for every frame")
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = load_sample(self.samples[index])
        assert sample.labels is not None
        return sample.image, sample.labels

    def describe(self, index: int) -> str:
        return str(self.samples[index].label_path)


class SyntheticScenes(_SegmentationDataset):
    """``count`` synthetic street scenes generated on the fly: scene ``i`` is ``make_scene(first_seed + i)``.

    Args:
        count: number of scenes.
        height, width: scene size in pixels.
        first_seed: seed of scene 0; give train and validation sets disjoint seed ranges.
        label_set: ``cityscapes`` (the scenes' own train ids) or ``camvid`` (regrouped).
        min_object_width: passed to ``make_scene`` (thin objects at least this wide; ``None``: its default).
        transform, resize, seed: as :class:`ReaderDataset`.
    """

    def __init__(self, count: int, height: int, width: int, first_seed: int = 0, label_set: str = "cityscapes",
                 transform: PairTransform | None = None, resize: tuple[int, int] | None = None,
                 seed: int = 0, min_object_width: int | None = None) -> None:
        super().__init__(transform, resize, seed)
        if count < 1:
            raise DatasetError(f"a synthetic data set needs at least one scene, got count={count}")
        if label_set not in LABEL_SET_NAMES:
            raise ValueError(f"synthetic scenes come in the train ids of {' or '.join(LABEL_SET_NAMES)}, "
                             f"not {label_set!r}")
        self.count, self.height, self.width = count, height, width
        self.first_seed = first_seed
        self.label_set = label_set
        self.min_object_width = min_object_width

    def __len__(self) -> int:
        return self.count

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = make_scene(self.first_seed + index, self.height, self.width,
                                   min_object_width=self.min_object_width)
        return image, (to_camvid(labels) if self.label_set == "camvid" else labels)

    def describe(self, index: int) -> str:
        return f"synthetic scene {self.first_seed + index}"


class EpochSampler(Sampler[int]):
    """Indices of one epoch in a seeded order, sharded across ranks, optionally starting part-way.

    The order depends only on ``(seed, epoch)``; rank ``r`` of ``world_size`` takes positions
    ``r, r + world_size, ...`` (the order is padded by wrapping around so every rank gets the same
    count, as ``DistributedSampler`` does). ``start`` skips that many of this rank's indices, which is
    how a resumed run continues mid-epoch without loading the skipped samples.
    """

    def __init__(self, length: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, start: int = 0) -> None:
        if length < 1:
            raise DatasetError("cannot sample from an empty data set")
        self.length, self.seed = length, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = epoch, start
        self.per_rank = -(-length // world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_rank * self.world_size
        order = (order * (total // self.length + 1))[:total]
        return iter(order[self.rank::self.world_size][self.start:])

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


def scan_labels(dataset: Dataset, num_classes: int, count: int = 8) -> None:
    """Fail fast on label values outside ``[0, num_classes)`` (other than 255) in the first ``count`` samples.

    Raises:
        LabelRangeError: naming the file (or scene) and the offending values.
    """
    for index in range(min(count, len(dataset))):  # type: ignore[arg-type]
        _, labels = dataset.raw(index)  # type: ignore[attr-defined]
        bad = (labels != IGNORE_INDEX) & (labels >= num_classes)
        if bad.any():
            values = np.unique(labels[bad]).tolist()[:10]
            raise LabelRangeError(
                f"{dataset.describe(index)} holds label value(s) {values}, outside the {num_classes} classes "  # type: ignore[attr-defined]
                f"[0, {num_classes - 1}] and not the ignore value {IGNORE_INDEX}: check the data set's label "
                f"set / num_classes, or map those values to {IGNORE_INDEX}"
            )


def build_datasets(data: Mapping[str, object], label_set: str, train_transform: Compose,
                   val_size: tuple[int, int] | None, seed: int) -> tuple[_SegmentationDataset, _SegmentationDataset]:
    """Training and validation data sets from a recipe's ``data`` section.

    Raises:
        DatasetError: unknown data set, missing root, empty or unlabeled split.
    """
    name = str(data["dataset"])
    if name == "synthetic":
        synthetic = dict(data.get("synthetic") or {})  # type: ignore[call-overload]
        height, width = int(synthetic.get("height", 128)), int(synthetic.get("width", 256))
        train_count, val_count = int(synthetic.get("train_count", 64)), int(synthetic.get("val_count", 8))
        first = int(synthetic.get("first_seed", 0))
        min_width = synthetic.get("min_object_width")
        min_width = None if min_width is None else int(min_width)
        train = SyntheticScenes(train_count, height, width, first, label_set, train_transform, seed=seed,
                                min_object_width=min_width)
        # Validation scenes use seeds after the training ones: never seen in training.
        val = SyntheticScenes(val_count, height, width, first + train_count, label_set, None, val_size, seed,
                              min_object_width=min_width)
        return train, val
    root = data.get("root")
    if not root:
        raise DatasetError(f"data.root must point at the {name} data set folder (set it in the recipe or with "
                           f"--set data.root=DIR)")
    try:
        reader = get_dataset_reader(name)
    except ValueError as error:
        raise DatasetError(str(error)) from None
    root = Path(str(root)).expanduser()
    splits = {}
    for role in ("train", "val"):
        split = str(data.get(f"{role}_split", role))
        if name == "folder":
            samples = reader.list_samples(root, split, data.get("label_map") or None)
        else:
            samples = reader.list_samples(root, split)
        if not samples:
            raise DatasetError(f"no {role} frames found in {root} (split {split!r}) for data set {name!r}")
        splits[role] = samples
    LOG.info("%s: %d training and %d validation frames from %s", name, len(splits["train"]), len(splits["val"]), root)
    return (ReaderDataset(splits["train"], train_transform, seed=seed),
            ReaderDataset(splits["val"], None, val_size, seed))


def _init_loader_worker(worker_id: int) -> None:
    # OpenCV's own thread pool inside every loader worker oversubscribes the CPU.
    cv2.setNumThreads(0)


def train_loader(dataset: _SegmentationDataset, *, epoch: int, start_batch: int, batch_size: int, seed: int,
                 context: DistributedContext, workers: int, pin_memory: bool) -> DataLoader:
    """This rank's batches of ``epoch``, from batch ``start_batch`` on (a resumed run starts mid-epoch).

    Args:
        dataset: the training set; its augmentation is switched to ``epoch``.
        batch_size: per process.
        seed: the recipe's ``train.seed`` (the epoch order and the loader's own seed derive from it).
    """
    dataset.set_epoch(epoch)
    sampler = EpochSampler(len(dataset), seed=seed, rank=context.rank, world_size=context.world_size, epoch=epoch,
                           start=start_batch * batch_size)
    # A private generator: creating the loader must not consume the global RNG, or a run resumed
    # mid-epoch would draw different dropout masks from the uninterrupted one.
    generator = torch.Generator().manual_seed(seed + epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, worker_init_fn=_init_loader_worker, generator=generator,
                      persistent_workers=False)


def val_loader(dataset: _SegmentationDataset, *, batch_size: int, context: DistributedContext,
               workers: int) -> DataLoader:
    """This rank's share of the validation set: frames ``rank, rank + world_size, ...``, in order."""
    indices = list(range(context.rank, len(dataset), context.world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers)
