"""Label sets and synthetic scenes: facts from the official definitions, and scene invariants."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets import CAMVID, CITYSCAPES, get_label_set
from rtseg_ros.datasets.labels import (
    CAMVID_32_COLORS,
    CAMVID_32_TO_11,
    IGNORE_INDEX,
    camvid_color_to_train_id,
    camvid_index_to_train_id,
    cityscapes_label_id_to_train_id,
    cityscapes_train_id_to_label_id,
)
from rtseg_ros.datasets.synthetic import SYNTHETIC_CLASSES, make_scene, to_camvid

from dataset_trees import write_camvid_tree, write_cityscapes_tree


def test_cityscapes_train_ids_follow_the_official_table():
    assert CITYSCAPES.num_classes == 19
    assert CITYSCAPES.class_names[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES.class_names[6] == "traffic light"
    assert CITYSCAPES.class_names[18] == "bicycle"
    assert CITYSCAPES.colors[0] == (128, 64, 128)
    table = cityscapes_label_id_to_train_id()
    # label id -> train id pairs from the Cityscapes definitions, including ignored ones.
    for label_id, train_id in {0: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 19: 6, 23: 10, 26: 13, 29: 255,
                               31: 16, 33: 18}.items():
        assert table[label_id] == train_id
    back = cityscapes_train_id_to_label_id()
    assert [int(back[t]) for t in range(19)] == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                  31, 32, 33]
    assert all(table[back[t]] == t for t in range(19))


def test_camvid_has_eleven_classes_and_void_is_ignored():
    assert CAMVID.num_classes == 11
    index = camvid_index_to_train_id()
    assert list(index[:11]) == list(range(11))
    assert index[11] == IGNORE_INDEX
    assert len(CAMVID_32_COLORS) == 32
    assert set(CAMVID_32_TO_11.values()) == set(CAMVID.class_names)


def test_camvid_colour_labels_map_to_the_eleven_classes():
    names = ["Sky", "LaneMkgsDriv", "SUVPickupTruck", "Child", "MotorcycleScooter", "Void", "Wall"]
    rgb = np.array([[CAMVID_32_COLORS[n] for n in names]], dtype=np.uint8)
    rgb = np.concatenate([rgb, np.array([[[1, 2, 3]] * len(names)], np.uint8)])  # an unknown colour row
    out = camvid_color_to_train_id(rgb)
    expected = ["sky", "road", "car", "pedestrian", "bicyclist", None, "building"]
    assert [CAMVID.class_names[v] if v != IGNORE_INDEX else None for v in out[0]] == expected
    assert (out[1] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="HxWx3"):
        camvid_color_to_train_id(np.zeros((4, 4), np.uint8))


def test_colorize_uses_the_palette_and_blacks_out_ignore():
    labels = np.array([[0, 10], [255, 18]], dtype=np.uint8)
    rgb = CITYSCAPES.colorize(labels)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == (70, 130, 180)
    assert tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == (119, 11, 32)


def test_get_label_set():
    assert get_label_set("CamVid") is CAMVID
    with pytest.raises(ValueError, match="unknown label set 'ade20k'"):
        get_label_set("ade20k")


def test_synthetic_scene_is_deterministic_and_labelled():
    rgb, labels = make_scene(7, 96, 160)
    rgb2, labels2 = make_scene(7, 96, 160)
    assert rgb.shape == (96, 160, 3) and rgb.dtype == np.uint8 and labels.shape == (96, 160)
    assert np.array_equal(rgb, rgb2) and np.array_equal(labels, labels2)
    assert not np.array_equal(make_scene(8, 96, 160)[1], labels)
    present = {CITYSCAPES.class_names[i] for i in np.unique(labels)}
    assert {"sky", "road", "car"} <= present <= set(SYNTHETIC_CLASSES)
    # Sky sits above the road: the scene is a street, not noise.
    sky_rows = np.nonzero((labels == CITYSCAPES.class_names.index("sky")).any(1))[0]
    road_rows = np.nonzero((labels == 0).any(1))[0]
    assert sky_rows.min() < road_rows.min()
    with pytest.raises(ValueError, match="32x32"):
        make_scene(0, 16, 16)


def test_synthetic_camvid_regrouping_keeps_every_pixel_labelled():
    _, labels = make_scene(3, 64, 96)
    camvid = to_camvid(labels)
    assert camvid.max() < CAMVID.num_classes
    assert (camvid[labels == 0] == CAMVID.class_names.index("road")).all()


def test_synthetic_trees_use_the_data_set_layouts(tmp_path):
    paths = write_cityscapes_tree(tmp_path / "cs", "val", count=2, height=64, width=128)
    assert paths[0].name == "synthcity_000000_000019_leftImg8bit.png"
    gt = cv2.imread(str(tmp_path / "cs/gtFine/val/synthcity/synthcity_000000_000019_gtFine_labelIds.png"),
                    cv2.IMREAD_UNCHANGED)
    _, labels = make_scene(0, 64, 128)
    assert np.array_equal(cityscapes_label_id_to_train_id()[gt], labels)

    paths = write_camvid_tree(tmp_path / "cv", "test", count=1, height=64, width=96)
    annot = cv2.imread(str(tmp_path / "cv/testannot" / paths[0].name), cv2.IMREAD_UNCHANGED)
    assert annot.max() <= 10 and np.array_equal(annot, to_camvid(make_scene(0, 64, 96)[1]))
