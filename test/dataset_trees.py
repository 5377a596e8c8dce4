"""Synthetic scenes written in the Cityscapes and CamVid folder layouts, for tests that need a data set."""
from __future__ import annotations

from pathlib import Path

import cv2

from rtseg_ros.datasets.labels import CAMVID_VOID_INDEX, IGNORE_INDEX, cityscapes_train_id_to_label_id
from rtseg_ros.datasets.synthetic import make_scene, to_camvid


def write_cityscapes_tree(root: str | Path, split: str = "val", count: int = 4, height: int = 256,
                          width: int = 512, seed: int = 0, city: str = "synthcity") -> list[Path]:
    """Write scenes in the Cityscapes folder layout (``leftImg8bit/`` and ``gtFine/`` *_labelIds.png).

    Returns the image paths written.
    """
    root = Path(root)
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    to_label_id = cityscapes_train_id_to_label_id()
    paths = []
    for i in range(count):
        rgb, lab = make_scene(seed + i, height, width)
        stem = f"{city}_{i:06d}_000019"
        path = img_dir / f"{stem}_leftImg8bit.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), to_label_id[lab])
        paths.append(path)
    return paths


def write_camvid_tree(root: str | Path, split: str = "val", count: int = 4, height: int = 240,
                      width: int = 320, seed: int = 0) -> list[Path]:
    """Write scenes in the SegNet CamVid layout (``<split>/`` images, ``<split>annot/`` index PNGs, 11 = void)."""
    root = Path(root)
    img_dir, ann_dir = root / split, root / f"{split}annot"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rgb, lab = make_scene(seed + i, height, width)
        index = to_camvid(lab)
        index[index == IGNORE_INDEX] = CAMVID_VOID_INDEX
        path = img_dir / f"synth_{i:05d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(ann_dir / path.name), index)
        paths.append(path)
    return paths
