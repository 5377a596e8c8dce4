"""Reader for a user's own data: a folder of images and a folder of masks.

Layout: ``<root>/<split>/images/*.{png,jpg,...}`` and ``<root>/<split>/masks/<image stem>.png``
(use split ``.`` when ``images/`` and ``masks/`` sit directly in ``root``). Masks are
single-channel PNGs holding train ids of the chosen label set (255 = ignore). When the masks use
other values, ``label_map`` gives ``{mask value: train id}``; unlisted values then become 255.
Without a ``masks/`` folder, or for an image with no mask, the frame has no ground truth
(``labels=None``): prediction and export still work, evaluation counts it as skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from rtseg_ros.datasets.base import (
    DatasetError,
    SamplePaths,
    list_images,
    relative_posix,
    require_dir,
)
from rtseg_ros.datasets.labels import IGNORE_INDEX

NAME = "folder"
LABEL_SET = None  # the user says which label set the masks follow

__all__ = ["NAME", "LABEL_SET", "list_samples", "normalize_label_map"]


def normalize_label_map(label_map: Mapping[int, int] | None) -> tuple[tuple[int, int], ...]:
    """Check a ``{mask value: train id}`` map and freeze it as sorted pairs.

    Raises:
        DatasetError: a value is outside 0..255.
    """
    if not label_map:
        return ()
    pairs = []
    for value, train_id in label_map.items():
        value, train_id = int(value), int(train_id)
        if not (0 <= value <= 255 and 0 <= train_id <= IGNORE_INDEX):
            raise DatasetError(f"label map entry {value} -> {train_id} is outside 0..255")
        pairs.append((value, train_id))
    return tuple(sorted(pairs))


def list_samples(root: str | Path, split: str, label_map: Mapping[int, int] | None = None) -> list[SamplePaths]:
    """List ``<root>/<split>/images`` with their masks, sorted by file name.

    Raises:
        DatasetError: the images folder is missing or empty, two images share a stem, or the
            label map is invalid.
    """
    root = Path(root)
    base = root / split
    image_dir = require_dir(base / "images", f"images of split {split!r}")
    mask_dir = base / "masks"
    pairs = normalize_label_map(label_map)
    images = list_images(image_dir)
    if not images:
        raise DatasetError(f"no images in {image_dir}")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise DatasetError(f"two images in {image_dir} share the name {duplicate!r}; masks are matched by name")
    samples = []
    for image_path in images:
        mask = mask_dir / f"{image_path.stem}.png"
        samples.append(SamplePaths(
            name=image_path.stem,
            image_path=image_path,
            label_path=mask if mask.is_file() else None,
            relative_path=relative_posix(image_path, root),
            label_format="train_id",
            label_map=pairs,
        ))
    return samples
