"""What every data set reader returns, and the one place label files are decoded.

A reader lists a split as :class:`SamplePaths` (cheap, picklable: what a torch ``Dataset`` or a
bag writer holds) and turns one of them into a :class:`Sample` with :func:`load_sample`. The
label file's own encoding (Cityscapes label ids, CamVid index or colour PNGs, plain train ids)
travels in ``SamplePaths.label_format``, so loading is the same call whatever the data set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rtseg_ros.datasets.labels import (
    IGNORE_INDEX,
    camvid_color_to_train_id,
    camvid_index_to_train_id,
    cityscapes_label_id_to_train_id,
)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")

# label_format -> what the label file holds.
LABEL_FORMATS: dict[str, str] = {
    "train_id": "single-channel train ids (255 = ignore), optionally remapped by label_map",
    "cityscapes_label_id": "Cityscapes *_labelIds.png (34 label ids)",
    "camvid_index": "SegNet CamVid index PNG (0..10, 11 = void)",
    "camvid_color": "original CamVid 32-class colour PNG (*_L.png)",
}


class DatasetError(ValueError):
    """A data set folder is missing, empty, or holds a file that cannot be read."""


@dataclass(frozen=True)
class SamplePaths:
    """Where one frame lives on disk and how its label file is encoded.

    Attributes:
        name: a name unique within the split, used in reports and exports.
        image_path: the RGB image file.
        label_path: the label file, or ``None`` when the frame has no ground truth.
        relative_path: ``image_path`` relative to the data set root (POSIX separators): the name
            recorded in bags so that results can be traced back to the file.
        label_format: one of :data:`LABEL_FORMATS`.
        label_map: for ``train_id`` labels, optional ``(file value, train id)`` pairs; values not
            listed become the ignore value. Empty means the file already holds train ids.
    """

    name: str
    image_path: Path
    label_path: Path | None
    relative_path: str
    label_format: str = "train_id"
    label_map: tuple[tuple[int, int], ...] = ()


@dataclass
class Sample:
    """One decoded frame.

    Attributes:
        name: as in :class:`SamplePaths`.
        image: HxWx3 uint8 RGB.
        labels: HxW uint8 train ids (255 = ignore), or ``None`` without ground truth.
        image_path, label_path: the files it came from.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray | None
    image_path: Path
    label_path: Path | None


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grey and alpha images are converted)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot read image {path} (missing, truncated or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _lookup_table(label_format: str, label_map: tuple[tuple[int, int], ...]) -> np.ndarray | None:
    if label_format == "cityscapes_label_id":
        return cityscapes_label_id_to_train_id()
    if label_format == "camvid_index":
        return camvid_index_to_train_id()
    if label_format == "train_id":
        if not label_map:
            return None
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for value, train_id in label_map:
            table[value] = train_id
        return table
    raise DatasetError(f"unknown label format {label_format!r}; known: {', '.join(LABEL_FORMATS)}")


def read_labels(path: Path, label_format: str = "train_id",
                label_map: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """Read a label file and return HxW uint8 train ids (255 = ignore)."""
    if label_format == "camvid_color":
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"cannot read label {path} (missing, truncated or not an image)")
        return camvid_color_to_train_id(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    table = _lookup_table(label_format, label_map)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"cannot read label {path} (missing, truncated or not an image)")
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DatasetError(f"label {path} must be a single-channel 8-bit PNG ({LABEL_FORMATS[label_format]}), "
                           f"got shape {raw.shape} of {raw.dtype}")
    return raw if table is None else table[raw]


def load_sample(paths: SamplePaths) -> Sample:
    """Decode one frame listed by a reader's ``list_samples``.

    Raises:
        DatasetError: the image or label cannot be read, or the two differ in size.
    """
    image = read_rgb(paths.image_path)
    labels = None
    if paths.label_path is not None:
        labels = read_labels(paths.label_path, paths.label_format, paths.label_map)
        if labels.shape != image.shape[:2]:
            raise DatasetError(f"label {paths.label_path} is {labels.shape[1]}x{labels.shape[0]} but image "
                               f"{paths.image_path} is {image.shape[1]}x{image.shape[0]}")
    return Sample(paths.name, image, labels, paths.image_path, paths.label_path)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise a :class:`DatasetError` naming ``what`` it should hold."""
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found: {path}")
    return path


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix, :data:`IMAGE_SUFFIXES`) in ``folder``, sorted by path.

    Args:
        folder: where to look.
        recursive: also look in every sub-folder; paths are then sorted as a whole, so the order
            does not depend on the file system's.
    """
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes (stable across platforms, stored in bags)."""
    return path.relative_to(root).as_posix()
