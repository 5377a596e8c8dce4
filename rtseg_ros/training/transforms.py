"""Joint image/label augmentation for training, in numpy and OpenCV (runs in data loader workers).

Every transform takes ``(image, labels, rng)``: an HxWx3 uint8 RGB image, an HxW uint8 train-id map
and a ``numpy.random.Generator``. Randomness comes only from ``rng``, which the data set seeds from
(seed, epoch, sample index), so a sample's augmentation does not depend on the worker that draws it:
this is what makes a resumed run repeat the uninterrupted one.

Images are resized bilinearly and labels with nearest neighbour (labels are never blended). Padding
fills the image with the ImageNet mean colour and the labels with the ignore value, so padded pixels
neither look like content after normalisation nor enter the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from rtseg_ros.datasets.labels import IGNORE_INDEX
from rtseg_ros.engines.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    reference_preprocess,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "PhotometricJitter",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRotate",
    "RandomScale",
    "build_train_transform",
    "to_tensors",
]

# The pad colour of images: the mean, so a padded pixel normalises to 0.
_PAD_COLOR: tuple[int, int, int] = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # type: ignore[assignment]

Pair = tuple[np.ndarray, np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        for transform in self.transforms:
            image, labels = transform(image, labels, rng)
        return image, labels

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


@dataclass
class RandomScale:
    """Resize both by one factor drawn uniformly from ``[low, high]`` (aspect ratio kept)."""

    low: float = 0.5
    high: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got [{self.low}, {self.high}]")

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        factor = rng.uniform(self.low, self.high)
        height, width = labels.shape
        size = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
        return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))


@dataclass
class RandomRotate:
    """With probability ``p``, rotate both about the centre by an angle in ``[-degrees, degrees]``.

    Corners uncovered by the rotation are padded (mean colour / ignore), as in the MFARANet recipe.
    """

    degrees: float = 10.0
    p: float = 0.5

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        apply, angle = rng.random() < self.p, rng.uniform(-self.degrees, self.degrees)
        if not apply or self.degrees == 0:
            return image, labels
        height, width = labels.shape
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=_PAD_COLOR)
        labels = cv2.warpAffine(labels, matrix, (width, height), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_INDEX)
        return image, labels


@dataclass
class RandomCrop:
    """Cut a ``height`` x ``width`` window at a random place, padding first where the input is smaller."""

    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"crop size must be positive, got {self.height}x{self.width}")

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        height, width = labels.shape
        pad_h, pad_w = max(self.height - height, 0), max(self.width - width, 0)
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                       value=_PAD_COLOR)
            labels = cv2.copyMakeBorder(labels, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                        value=IGNORE_INDEX)
            height, width = labels.shape
        y = int(rng.integers(0, height - self.height + 1))
        x = int(rng.integers(0, width - self.width + 1))
        window = (slice(y, y + self.height), slice(x, x + self.width))
        return image[window], labels[window]


@dataclass
class RandomHorizontalFlip:
    """Mirror both left-right with probability ``p``."""

    p: float = 0.5

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() < self.p:
            return image[:, ::-1], labels[:, ::-1]
        return image, labels


@dataclass
class PhotometricJitter:
    """Random brightness, contrast and saturation changes of the image only.

    Each factor is drawn from ``[1 - x, 1 + x]``; 0 turns that change off.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pair:
        factors = [rng.uniform(1 - s, 1 + s) if s > 0 else 1.0
                   for s in (self.brightness, self.contrast, self.saturation)]
        if factors == [1.0, 1.0, 1.0]:
            return image, labels
        out = image.astype(np.float32) * factors[0]
        grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = (out - grey.mean()) * factors[1] + grey.mean()
        grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = (out - grey[..., None]) * factors[2] + grey[..., None]
        return np.clip(out, 0, 255).astype(np.uint8), labels


def build_train_transform(augment: Mapping[str, object]) -> Compose:
    """The training augmentation described by a recipe's ``augment`` section.

    Keys: ``scale`` ([low, high] or null), ``rotate`` (degrees, 0 = off), ``crop`` ([height, width]),
    ``flip`` (bool) and ``jitter`` (``{brightness, contrast, saturation}``).
    """
    steps: list[Transform] = []
    scale = augment.get("scale")
    if scale:
        low, high = scale  # type: ignore[misc]
        steps.append(RandomScale(float(low), float(high)))
    if augment.get("rotate"):
        steps.append(RandomRotate(float(augment["rotate"])))  # type: ignore[arg-type]
    if augment.get("flip", True):
        steps.append(RandomHorizontalFlip())
    crop = augment.get("crop")
    if crop:
        height, width = crop  # type: ignore[misc]
        steps.append(RandomCrop(int(height), int(width)))
    jitter = augment.get("jitter") or {}
    if any(float(v) for v in jitter.values()):  # type: ignore[union-attr]
        steps.append(PhotometricJitter(**{k: float(v) for k, v in jitter.items()}))  # type: ignore[union-attr]
    return Compose(steps)


def to_tensors(image: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3xHxW float tensor normalised with the ImageNet mean/std and an HxW int64 label tensor.

    The normalisation is the inference pipeline's own reference, so training and inference cannot drift apart.
    """
    tensor = torch.from_numpy(reference_preprocess(image, image.shape[:2])[0])
    return tensor, torch.from_numpy(np.ascontiguousarray(labels)).long()
