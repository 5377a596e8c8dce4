"""Synthetic street scenes with exact labels.

They stand in for a camera and for a data set on machines with no data and no downloaded weights:
the demo's default source, the ``synthetic`` training recipe, and every test that needs images with
ground truth. A scene is a horizon with sky, a row of buildings and trees, a road with lane marks
between sidewalks, cars, pedestrians and sign poles. Each class has its own colour family with
pixel noise and per-image lighting, so a small network can learn it in minutes, yet it is not a
per-pixel colour lookup.

Scenes are generated in Cityscapes train ids; ``to_camvid`` regroups them into the CamVid classes.
"""
from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from rtseg_ros.datasets.labels import CAMVID, CITYSCAPES, IGNORE_INDEX

_C = {name: i for i, name in enumerate(CITYSCAPES.class_names)}

# Base colour per class (RGB); deliberately not the palette, so the task is not colour lookup.
_BASE_COLORS: dict[int, tuple[int, int, int]] = {
    _C["road"]: (90, 85, 95),
    _C["sidewalk"]: (170, 150, 140),
    _C["building"]: (150, 110, 90),
    _C["vegetation"]: (60, 130, 50),
    _C["sky"]: (120, 170, 230),
    _C["car"]: (30, 40, 150),
    _C["person"]: (200, 40, 60),
    _C["pole"]: (60, 60, 60),
    _C["traffic sign"]: (230, 210, 30),
    _C["terrain"]: (140, 180, 90),
}

SYNTHETIC_CLASSES: tuple[str, ...] = tuple(CITYSCAPES.class_names[i] for i in sorted(_BASE_COLORS))

# First seed of scenes no training recipe draws from (they train on seeds from 0 up): the demo's camera
# and `rtseg make-bag --synthetic` show a trained model scenes it has never seen.
HELD_OUT_FIRST_SEED = 100_000
# The label sets whose classes the scenes can be drawn in (``labels_in``).
SYNTHETIC_LABEL_SETS: tuple[str, ...] = ("cityscapes", "camvid")


def make_scene(seed: int, height: int = 256, width: int = 512, *,
               min_object_width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Args:
        seed: the scene is a pure function of the seed, the size and ``min_object_width``.
        height, width: image size in pixels (at least 32x32).
        min_object_width: narrowest width in pixels of poles and pedestrians (signs grow with their
            poles). ``None``: ``width // 64``, at least 2. A larger value keeps the thin classes
            learnable by a stride-4 network at small sizes (the training tests use it).

    Returns:
        ``(rgb, labels)``: an HxWx3 uint8 RGB image and an HxW uint8 map of Cityscapes train ids.
    """
    if height < 32 or width < 32:
        raise ValueError(f"synthetic scenes need at least 32x32 pixels, got {height}x{width}")
    rng = np.random.default_rng(seed)
    lab = np.full((height, width), _C["sky"], dtype=np.uint8)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]

    horizon = int(height * rng.uniform(0.38, 0.52))
    # Buildings and trees: a skyline of blocks standing on the horizon.
    x = 0
    while x < width:
        w = int(width * rng.uniform(0.08, 0.22))
        top = int(horizon * rng.uniform(0.05, 0.7))
        cls = _C["vegetation"] if rng.random() < 0.3 else _C["building"]
        lab[top:horizon, x:x + w] = cls
        x += w

    # Ground: road in a trapezoid converging to a vanishing point, sidewalks beside it, terrain outside.
    vanish = width * rng.uniform(0.4, 0.6)
    depth = np.clip((rows - horizon) / max(height - horizon, 1), 0, 1)
    half_road = (0.04 + 0.55 * depth) * width
    half_walk = half_road + (0.02 + 0.2 * depth) * width
    ground = rows >= horizon
    dist = np.abs(cols - vanish)
    lab[np.broadcast_to(ground, lab.shape)] = _C["terrain"]
    lab[ground & (dist < half_walk)] = _C["sidewalk"]
    lab[ground & (dist < half_road)] = _C["road"]

    min_w = max(2, width // 64) if min_object_width is None else max(1, int(min_object_width))
    # Poles with signs, on the sidewalks.
    for _ in range(rng.integers(1, 4)):
        base_y = int(rng.uniform(horizon + 0.1 * (height - horizon), height - 2))
        d = (base_y - horizon) / max(height - horizon, 1)
        side = rng.choice([-1, 1])
        px = int(vanish + side * (0.04 + 0.55 * d + 0.1 * d) * width)
        pole_h = int((0.15 + 0.5 * d) * height)
        pw = max(min_w, int(0.012 * width * (0.5 + d)))
        lab[max(base_y - pole_h, 0):base_y, max(px - pw // 2, 0):max(px + pw // 2 + 1, 0)] = _C["pole"]
        s = max(2 * pw + 2, int(0.05 * width * (0.5 + d)))
        top = max(base_y - pole_h, 0)
        lab[top:top + s, max(px - s // 2, 0):max(px + s // 2, 0)] = _C["traffic sign"]

    # Cars on the road and pedestrians on the sidewalks, far ones first so near ones occlude them.
    objects = []
    for _ in range(rng.integers(1, 5)):
        objects.append(("car", rng.uniform(0.15, 1.0), rng.uniform(-0.8, 0.8)))
    for _ in range(rng.integers(1, 4)):
        objects.append(("person", rng.uniform(0.15, 1.0), rng.choice([-1.0, 1.0]) * rng.uniform(1.05, 1.3)))
    for kind, d, offset in sorted(objects, key=lambda o: o[1]):
        base_y = int(horizon + d * (height - horizon)) - 1
        cx = int(vanish + offset * (0.04 + 0.55 * d) * width)
        if kind == "car":
            w, h = int((0.06 + 0.3 * d) * width), int((0.04 + 0.2 * d) * height)
        else:
            w, h = max(min_w, int((0.015 + 0.05 * d) * width)), int((0.06 + 0.3 * d) * height)
        lab[max(base_y - h, 0):base_y, max(cx - w // 2, 0):max(cx + w // 2, 0)] = _C[kind]

    rgb = _paint(lab, rng, horizon)
    return rgb, lab


def _paint(lab: np.ndarray, rng: np.random.Generator, horizon: int) -> np.ndarray:
    height, width = lab.shape
    img = np.zeros((height, width, 3), dtype=np.float32)
    for cls, color in _BASE_COLORS.items():
        tint = np.asarray(color, np.float32) + rng.normal(0, 12, 3)
        img[lab == cls] = tint
    # Texture that keeps the class: windows on buildings, lane marks on the road, a sky gradient.
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    cell = max(4, width // 48)
    windows = ((rows // cell) % 2 == 0) & ((cols // cell) % 3 == 0)
    img[(lab == _C["building"]) & windows] *= 0.55
    lanes = ((rows // max(2, height // 40)) % 3 == 0) & (np.abs(cols - width / 2) < max(1, width // 200))
    img[(lab == _C["road"]) & lanes] = (235, 235, 235)
    # The sky brightens towards the horizon.
    sky_gain = np.broadcast_to(0.8 + 0.4 * np.minimum(rows / max(horizon, 1), 1.0), lab.shape)
    sky = lab == _C["sky"]
    img[sky] *= sky_gain[sky][:, None]
    img *= rng.uniform(0.75, 1.25)  # lighting
    img += rng.normal(0, 8, img.shape).astype(np.float32)  # sensor noise
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


# Cityscapes train id -> CamVid train id for the classes the scenes contain.
_TO_CAMVID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _cs, _cv in {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "vegetation": "tree", "sky": "sky",
    "car": "car", "person": "pedestrian", "pole": "pole", "traffic sign": "sign symbol", "terrain": "tree",
}.items():
    _TO_CAMVID[_C[_cs]] = CAMVID.class_names.index(_cv)


def to_camvid(labels: np.ndarray) -> np.ndarray:
    """Regroup a synthetic Cityscapes train-id map into CamVid's 11 classes."""
    return _TO_CAMVID[labels]


def labels_in(labels: np.ndarray, label_set: str) -> np.ndarray:
    """A scene's Cityscapes train-id map in ``label_set`` (one of :data:`SYNTHETIC_LABEL_SETS`).

    Raises:
        ValueError: a label set the scenes do not cover.
    """
    if label_set == "cityscapes":
        return labels
    if label_set == "camvid":
        return to_camvid(labels)
    raise ValueError(f"synthetic scenes come in {' or '.join(SYNTHETIC_LABEL_SETS)} classes, not {label_set!r}")


def held_out_scenes(count: int, label_set: str = "cityscapes", height: int = 256, width: int = 512,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """``count`` scenes from :data:`HELD_OUT_FIRST_SEED` on, as ``(rgb, labels in label_set, name)``.

    Raises:
        ValueError: a label set the scenes do not cover, or a size below 32x32.
    """
    if label_set not in SYNTHETIC_LABEL_SETS:
        labels_in(np.zeros((1, 1), np.uint8), label_set)  # raises with the reason
    for seed in range(HELD_OUT_FIRST_SEED, HELD_OUT_FIRST_SEED + count):
        rgb, labels = make_scene(seed, height, width)
        yield rgb, labels_in(labels, label_set), f"synthetic/{seed}.png"
