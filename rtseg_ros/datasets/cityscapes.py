"""Cityscapes reader.

Layout (as downloaded): ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with
ground truth in ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``. Label ids are
mapped to the 19 train ids, everything else to 255. Frames without a label file (the ``test``
split on the server side, or a partial download) are listed with ``label_path=None``. The
camera calibration of a frame, when the ``camera/`` package is present, is read by
:func:`camera_intrinsics`.
"""
from __future__ import annotations

import json
from pathlib import Path

from rtseg_ros.datasets.base import (
    DatasetError,
    SamplePaths,
    relative_posix,
    require_dir,
)

NAME = "cityscapes"
LABEL_SET = "cityscapes"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
CAMERA_SUFFIX = "_camera.json"

__all__ = ["NAME", "LABEL_SET", "list_samples", "camera_intrinsics"]


def list_samples(root: str | Path, split: str) -> list[SamplePaths]:
    """List a split's frames, sorted by city then name.

    Raises:
        DatasetError: ``leftImg8bit/<split>`` is missing or holds no ``*_leftImg8bit.png``.
    """
    root = Path(root)
    image_root = require_dir(root / "leftImg8bit" / split, f"Cityscapes images of split {split!r}")
    label_root = root / "gtFine" / split
    samples = []
    for image_path in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
        name = image_path.name[: -len(IMAGE_SUFFIX)]
        label_path = label_root / image_path.parent.name / f"{name}{LABEL_SUFFIX}"
        samples.append(SamplePaths(
            name=name,
            image_path=image_path,
            label_path=label_path if label_path.is_file() else None,
            relative_path=relative_posix(image_path, root),
            label_format="cityscapes_label_id",
        ))
    if not samples:
        raise DatasetError(f"no Cityscapes images (<city>/*{IMAGE_SUFFIX}) under {image_root}")
    return samples


def camera_intrinsics(paths: SamplePaths) -> tuple[float, float, float, float] | None:
    """``(fx, fy, cx, cy)`` in pixels from ``camera/<split>/<city>/<name>_camera.json``, or ``None``
    when that file is missing.

    Raises:
        DatasetError: the file exists but does not hold the intrinsics.
    """
    city_dir = paths.image_path.parent
    split, root = city_dir.parent.name, city_dir.parents[2]
    path = root / "camera" / split / city_dir.name / f"{paths.name}{CAMERA_SUFFIX}"
    if not path.is_file():
        return None
    try:
        intrinsic = json.loads(path.read_text())["intrinsic"]
        return (float(intrinsic["fx"]), float(intrinsic["fy"]), float(intrinsic["u0"]), float(intrinsic["v0"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"camera file {path} holds no intrinsic fx, fy, u0, v0: {exc}") from exc
