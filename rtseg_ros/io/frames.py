"""Camera frames from a folder of images, a video file, a rosbag2 or the synthetic scenes.

The one reader of each kind of source: the demo's camera, int8 calibration and the benchmarks
take their frames from here (the evaluation reads bags with ground truth through
:class:`rtseg_ros.io.bags.BagFrameReader`, which :func:`bag_frames` wraps). Every reader yields
``(image, color_order)`` pairs, an HxWx3 uint8 array and ``"rgb"`` or ``"bgr"``, one at a time,
and never converts colours itself: the Segmenter's preprocessing swaps channels in a copy it
makes anyway.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from rtseg_ros.datasets.base import IMAGE_SUFFIXES, list_images
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.io.bags import IMAGE_TOPIC, BagError, BagFrameReader

__all__ = [
    "Frame", "FrameSourceError", "is_bag", "image_file_frames", "folder_frames", "video_frames", "bag_frames",
    "open_frames", "synthetic_frames",
]

Frame = tuple[np.ndarray, str]


class FrameSourceError(ValueError):
    """A frame source that is missing, cannot be opened, or holds no image."""


def is_bag(path: str | Path) -> bool:
    """Whether ``path`` is a rosbag2 folder (it holds ``metadata.yaml``)."""
    return (Path(path) / "metadata.yaml").is_file()


def image_file_frames(paths: Iterable[Path]) -> Iterator[Frame]:
    """Decode image files in the given order; files OpenCV cannot read are passed over."""
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            yield image, "bgr"


def folder_frames(folder: str | Path, recursive: bool = False) -> Iterator[Frame]:
    """The images of a folder (and, if ``recursive``, its sub-folders), sorted by path.

    Raises:
        FrameSourceError: the folder holds no image file (raised here, not on the first frame).
    """
    folder = Path(folder)
    images = list_images(folder, recursive=recursive)
    if not images:
        raise FrameSourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    return image_file_frames(images)


def video_frames(path: str | Path) -> Iterator[Frame]:
    """The frames of a video file, in order; the file is closed when the frames run out.

    Raises:
        FrameSourceError: OpenCV cannot open the file as a video (raised here).
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FrameSourceError(f"cannot open {path} as a video")

    def frames() -> Iterator[Frame]:
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                yield image, "bgr"
        finally:
            capture.release()

    return frames()


def bag_frames(path: str | Path, image_topic: str = IMAGE_TOPIC) -> Iterator[Frame]:
    """The camera frames of a rosbag2, in stamp order (what cannot be decoded is passed over).

    Raises:
        FrameSourceError: while iterating, when the bag cannot be opened or has no ``image_topic``.
    """
    try:
        for frame in BagFrameReader(path, image_topic=image_topic):
            yield frame.image, frame.color_order
    except BagError as exc:
        raise FrameSourceError(str(exc)) from None


def open_frames(path: str | Path, *, image_topic: str = IMAGE_TOPIC, recursive: bool = False) -> Iterator[Frame]:
    """Frames from whatever ``path`` is: a rosbag2 folder, another folder (its images), or a video file.

    Args:
        path: the source.
        image_topic: for a bag, the topic to read.
        recursive: for a folder of images, also read its sub-folders.

    Raises:
        FrameSourceError: ``path`` does not exist, or (see the readers) cannot be read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FrameSourceError(f"frame source not found: {path}")
    if is_bag(path):
        return bag_frames(path, image_topic)
    if path.is_dir():
        return folder_frames(path, recursive=recursive)
    return video_frames(path)


def synthetic_frames(height: int, width: int, count: int, first_seed: int = 0) -> list[np.ndarray]:
    """``count`` synthetic street scenes (RGB), one per seed from ``first_seed``: a camera that
    needs no data on disk and gives the same frames on every machine."""
    return [make_scene(seed, height, width)[0] for seed in range(first_seed, first_seed + count)]
