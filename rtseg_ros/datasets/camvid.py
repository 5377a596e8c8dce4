"""CamVid reader, 11 classes (``rtseg_ros.datasets.labels.CAMVID``).

Three layouts are recognised, checked in this order:

1. SegNet release: ``<split>/*.png`` images with index labels of the same name in
   ``<split>annot/`` (0..10, 11 = void).
2. Colour labels per split: ``<split>/*.png`` with ``<split>_labels/<stem>_L.png`` holding the
   original 32-class colours (a common re-packaging of the original release).
3. Original release: ``701_StillsRaw_full/*.png`` with ``LabeledApproved_full/<stem>_L.png``
   colour labels. The release has no split folders: ``<root>/<split>.txt`` lists the split's
   images (one per line, first token, only the file name is used, as in SegNet's lists), and the
   split ``all`` takes every image.

Colour labels are grouped into the 11 classes with ``camvid_color_to_train_id``; void and any
colour outside the 32-class table become 255.
"""
from __future__ import annotations

from pathlib import Path

from rtseg_ros.datasets.base import (
    DatasetError,
    SamplePaths,
    list_images,
    relative_posix,
)

NAME = "camvid"
LABEL_SET = "camvid"
ORIGINAL_IMAGES = "701_StillsRaw_full"
ORIGINAL_LABELS = "LabeledApproved_full"
COLOR_LABEL_SUFFIX = "_L.png"

__all__ = ["NAME", "LABEL_SET", "list_samples"]


def _pair(root: Path, image_path: Path, label_path: Path, label_format: str) -> SamplePaths:
    return SamplePaths(
        name=image_path.stem,
        image_path=image_path,
        label_path=label_path if label_path.is_file() else None,
        relative_path=relative_posix(image_path, root),
        label_format=label_format,
    )


def _original_split(root: Path, split: str) -> list[Path]:
    image_dir = root / ORIGINAL_IMAGES
    images = list_images(image_dir)
    if split == "all":
        return images
    split_list = root / f"{split}.txt"
    if not split_list.is_file():
        raise DatasetError(f"the original CamVid layout has no split folders: write {split_list} listing the "
                           f"split's images (one per line), or use split 'all'")
    by_name = {p.name: p for p in images}
    chosen = []
    for line_no, line in enumerate(split_list.read_text().splitlines(), 1):
        if not line.strip():
            continue
        file_name = Path(line.split()[0]).name
        if file_name not in by_name:
            raise DatasetError(f"{split_list}:{line_no}: {file_name} is not in {image_dir}")
        chosen.append(by_name[file_name])
    return chosen


def list_samples(root: str | Path, split: str) -> list[SamplePaths]:
    """List a split's frames, sorted by file name (or in split-list order for the original layout).

    Raises:
        DatasetError: no known layout under ``root``, or the split holds no image.
    """
    root = Path(root)
    split_dir = root / split
    if split_dir.is_dir() and (root / f"{split}annot").is_dir():
        annot = root / f"{split}annot"
        samples = [_pair(root, p, annot / p.name, "camvid_index") for p in list_images(split_dir)]
    elif split_dir.is_dir() and (root / f"{split}_labels").is_dir():
        labels = root / f"{split}_labels"
        samples = [_pair(root, p, labels / f"{p.stem}{COLOR_LABEL_SUFFIX}", "camvid_color")
                   for p in list_images(split_dir)]
    elif (root / ORIGINAL_IMAGES).is_dir():
        labels = root / ORIGINAL_LABELS
        samples = [_pair(root, p, labels / f"{p.stem}{COLOR_LABEL_SUFFIX}", "camvid_color")
                   for p in _original_split(root, split)]
    else:
        raise DatasetError(
            f"no CamVid split {split!r} under {root}: expected {split}/ with {split}annot/ (SegNet index labels) "
            f"or {split}_labels/ (colour *_L.png), or the original {ORIGINAL_IMAGES}/ with {ORIGINAL_LABELS}/")
    if not samples:
        raise DatasetError(f"CamVid split {split!r} under {root} holds no image")
    return samples
