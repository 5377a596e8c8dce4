"""Label sets as data: class names, palettes and the raw-label to train-id maps.

Cityscapes follows the official ``labels.py`` table of the Cityscapes scripts (34 label ids, 19 of
them trained). CamVid follows the 11-class grouping of the SegNet release (index PNGs with 11 =
void); the original 32-class colour annotations are grouped into those 11 classes by
``CAMVID_32_TO_11``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rtseg_ros.names import IGNORE_INDEX


@dataclass(frozen=True)
class LabelSet:
    """A set of trained classes.

    Attributes:
        name: short identifier (``cityscapes``, ``camvid``).
        class_names: one name per train id, in train-id order.
        colors: one RGB triple per train id.
        ignore_index: the label value excluded from losses and metrics.
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette(self) -> np.ndarray:
        """A 256x3 uint8 RGB lookup table; ids without a class (the ignore value too) are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return table

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Map an HxW array of train ids to an HxWx3 uint8 RGB image."""
        labels = labels.astype(np.uint8, copy=False)
        # cv2.LUT is about 4x faster than numpy fancy indexing at camera resolutions.
        return cv2.LUT(cv2.merge([labels, labels, labels]), self.palette().reshape(256, 1, 3))


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of the official Cityscapes label table."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# Facts from the official Cityscapes label definitions.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
)

_CITYSCAPES_TRAINED = sorted((lab for lab in CITYSCAPES_LABELS if lab.train_id != 255), key=lambda lab: lab.train_id)

CITYSCAPES = LabelSet(
    name="cityscapes",
    class_names=tuple(lab.name for lab in _CITYSCAPES_TRAINED),
    colors=tuple(lab.color for lab in _CITYSCAPES_TRAINED),
)


def cityscapes_label_id_to_train_id() -> np.ndarray:
    """A 256-entry uint8 lookup table from Cityscapes label ids to train ids (255 = ignore)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        table[lab.id] = lab.train_id
    return table


def cityscapes_train_id_to_label_id() -> np.ndarray:
    """A 256-entry uint8 lookup table from train ids to label ids, for test-server PNGs (ignore -> 0)."""
    table = np.zeros(256, dtype=np.uint8)
    for lab in _CITYSCAPES_TRAINED:
        table[lab.train_id] = lab.id
    return table


# The SegNet CamVid release: index PNGs with classes 0..10 and 11 = void.
CAMVID = LabelSet(
    name="camvid",
    class_names=(
        "sky", "building", "pole", "road", "sidewalk", "tree",
        "sign symbol", "fence", "car", "pedestrian", "bicyclist",
    ),
    colors=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)
CAMVID_VOID_INDEX = 11

# The 32 classes of the original CamVid colour annotations (name -> RGB).
CAMVID_32_COLORS: dict[str, tuple[int, int, int]] = {
    "Animal": (64, 128, 64), "Archway": (192, 0, 128), "Bicyclist": (0, 128, 192), "Bridge": (0, 128, 64),
    "Building": (128, 0, 0), "Car": (64, 0, 128), "CartLuggagePram": (64, 0, 192), "Child": (192, 128, 64),
    "Column_Pole": (192, 192, 128), "Fence": (64, 64, 128), "LaneMkgsDriv": (128, 0, 192),
    "LaneMkgsNonDriv": (192, 0, 64), "Misc_Text": (128, 128, 64), "MotorcycleScooter": (192, 0, 192),
    "OtherMoving": (128, 64, 64), "ParkingBlock": (64, 192, 128), "Pedestrian": (64, 64, 0),
    "Road": (128, 64, 128), "RoadShoulder": (128, 128, 192), "Sidewalk": (0, 0, 192),
    "SignSymbol": (192, 128, 128), "Sky": (128, 128, 128), "SUVPickupTruck": (64, 128, 192),
    "TrafficCone": (0, 0, 64), "TrafficLight": (0, 64, 64), "Train": (192, 64, 128), "Tree": (128, 128, 0),
    "Truck_Bus": (192, 128, 192), "Tunnel": (64, 0, 64), "VegetationMisc": (192, 192, 0), "Void": (0, 0, 0),
    "Wall": (64, 192, 0),
}

# How the 32 original classes group into the 11 trained ones; anything unlisted is void.
CAMVID_32_TO_11: dict[str, str] = {
    "Sky": "sky",
    "Building": "building", "Archway": "building", "Bridge": "building", "Tunnel": "building", "Wall": "building",
    "Column_Pole": "pole", "TrafficCone": "pole",
    "Road": "road", "LaneMkgsDriv": "road", "LaneMkgsNonDriv": "road",
    "Sidewalk": "sidewalk", "ParkingBlock": "sidewalk", "RoadShoulder": "sidewalk",
    "Tree": "tree", "VegetationMisc": "tree",
    "SignSymbol": "sign symbol", "Misc_Text": "sign symbol", "TrafficLight": "sign symbol",
    "Fence": "fence",
    "Car": "car", "SUVPickupTruck": "car", "Truck_Bus": "car", "Train": "car", "OtherMoving": "car",
    "Pedestrian": "pedestrian", "Child": "pedestrian", "CartLuggagePram": "pedestrian", "Animal": "pedestrian",
    "Bicyclist": "bicyclist", "MotorcycleScooter": "bicyclist",
}


def camvid_index_to_train_id() -> np.ndarray:
    """A 256-entry lookup table for SegNet-style CamVid index PNGs: 0..10 kept, 11 (void) and up -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[: CAMVID.num_classes] = np.arange(CAMVID.num_classes, dtype=np.uint8)
    return table


def camvid_color_to_train_id(rgb: np.ndarray) -> np.ndarray:
    """Map an HxWx3 RGB CamVid 32-class colour annotation to 11-class train ids (255 = void/unknown)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB colour label, got shape {rgb.shape}")
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    for name, (r, g, b) in CAMVID_32_COLORS.items():
        target = CAMVID_32_TO_11.get(name)
        if target is not None:
            out[packed == ((r << 16) | (g << 8) | b)] = CAMVID.class_names.index(target)
    return out


LABEL_SETS: dict[str, LabelSet] = {CITYSCAPES.name: CITYSCAPES, CAMVID.name: CAMVID}


def get_label_set(name: str) -> LabelSet:
    """Look a label set up by name (``cityscapes`` or ``camvid``)."""
    try:
        return LABEL_SETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; known: {', '.join(sorted(LABEL_SETS))}") from None
