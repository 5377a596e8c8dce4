"""Data set readers: Cityscapes, CamVid (three layouts) and a user's image/mask folder."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets import DatasetError, get_dataset_reader, load_sample
from rtseg_ros.datasets import camvid, cityscapes, folder
from rtseg_ros.datasets.labels import CAMVID_32_COLORS
from rtseg_ros.datasets.synthetic import make_scene, to_camvid

from dataset_trees import write_camvid_tree, write_cityscapes_tree

# Written out by hand from the SegNet grouping, so the test does not reuse the code under test.
CAMVID_11_OF_32 = {
    "Sky": 0, "Building": 1, "Archway": 1, "Bridge": 1, "Tunnel": 1, "Wall": 1, "Column_Pole": 2,
    "TrafficCone": 2, "Road": 3, "LaneMkgsDriv": 3, "LaneMkgsNonDriv": 3, "Sidewalk": 4, "ParkingBlock": 4,
    "RoadShoulder": 4, "Tree": 5, "VegetationMisc": 5, "SignSymbol": 6, "Misc_Text": 6, "TrafficLight": 6,
    "Fence": 7, "Car": 8, "SUVPickupTruck": 8, "Truck_Bus": 8, "Train": 8, "OtherMoving": 8, "Pedestrian": 9,
    "Child": 9, "CartLuggagePram": 9, "Animal": 9, "Bicyclist": 10, "MotorcycleScooter": 10, "Void": 255,
}


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def color_label_of_32(height: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One 4-pixel column band per original class plus one unknown colour, and the expected train ids."""
    names = sorted(CAMVID_32_COLORS)
    rgb = np.zeros((height, 4 * (len(names) + 1), 3), np.uint8)
    expected = np.zeros(rgb.shape[:2], np.uint8)
    for i, name in enumerate(names):
        rgb[:, 4 * i:4 * i + 4] = CAMVID_32_COLORS[name]
        expected[:, 4 * i:4 * i + 4] = CAMVID_11_OF_32[name]
    rgb[:, -4:] = (1, 2, 3)  # not a CamVid colour
    expected[:, -4:] = 255
    return rgb, expected


def test_cityscapes_reader_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path, "val", count=3, height=64, width=128, seed=5)
    listed = cityscapes.list_samples(tmp_path, "val")
    assert [s.name for s in listed] == [f"synthcity_{i:06d}_000019" for i in range(3)]
    assert listed[0].relative_path == "leftImg8bit/val/synthcity/synthcity_000000_000019_leftImg8bit.png"
    samples = [load_sample(p) for p in cityscapes.list_samples(tmp_path, "val")]
    for i, sample in enumerate(samples):
        rgb, lab = make_scene(5 + i, 64, 128)
        np.testing.assert_array_equal(sample.labels, lab)
        assert sample.image.shape == (64, 128, 3) and sample.image.dtype == np.uint8
        # PNG is lossless, so the RGB order must round-trip exactly.
        np.testing.assert_array_equal(sample.image, rgb)


def test_cityscapes_unlabelled_ids_become_ignore_and_missing_gt_is_none(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path, "val", count=2, height=32, width=64)
    gt = tmp_path / "gtFine/val/synthcity/synthcity_000000_000019_gtFine_labelIds.png"
    ids = np.arange(32 * 64, dtype=np.int64).reshape(32, 64) % 34
    cv2.imwrite(str(gt), ids.astype(np.uint8))
    (tmp_path / "gtFine/val/synthcity/synthcity_000001_000019_gtFine_labelIds.png").unlink()
    first, second = cityscapes.list_samples(tmp_path, "val")
    labels = load_sample(first).labels
    # label ids 0..6 are void, 7 is road (train id 0), 26 is car (13), 29 caravan is void.
    assert (labels[ids < 7] == 255).all()
    assert (labels[ids == 7] == 0).all() and (labels[ids == 26] == 13).all() and (labels[ids == 29] == 255).all()
    assert second.label_path is None and load_sample(second).labels is None


def test_cityscapes_missing_or_empty_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split 'val'"):
        cityscapes.list_samples(tmp_path, "val")
    (tmp_path / "leftImg8bit/val/x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no Cityscapes images"):
        cityscapes.list_samples(tmp_path, "val")


def test_camvid_segnet_layout(tmp_path: Path) -> None:
    write_camvid_tree(tmp_path, "test", count=2, height=48, width=64, seed=3)
    samples = [load_sample(p) for p in camvid.list_samples(tmp_path, "test")]
    assert [s.name for s in samples] == ["synth_00000", "synth_00001"]
    for i, sample in enumerate(samples):
        _, lab = make_scene(3 + i, 48, 64)
        np.testing.assert_array_equal(sample.labels, to_camvid(lab))  # void (11) is read back as 255
        assert set(np.unique(sample.labels)) <= set(range(11)) | {255}


def test_camvid_original_colour_layout_maps_32_classes_to_11(tmp_path: Path) -> None:
    rgb, expected = color_label_of_32()
    for stem in ("0001TP_006690", "0016E5_07959", "Seq05VD_f00000"):
        write_rgb(tmp_path / camvid.ORIGINAL_IMAGES / f"{stem}.png", np.full_like(rgb, 100))
        write_rgb(tmp_path / camvid.ORIGINAL_LABELS / f"{stem}_L.png", rgb)
    # A SegNet-style split list: only the file name of the first token counts.
    (tmp_path / "val.txt").write_text("/SegNet/CamVid/val/0016E5_07959.png /SegNet/CamVid/valannot/0016E5_07959.png\n")
    val = camvid.list_samples(tmp_path, "val")
    assert [s.name for s in val] == ["0016E5_07959"]
    np.testing.assert_array_equal(load_sample(val[0]).labels, expected)
    assert len(camvid.list_samples(tmp_path, "all")) == 3
    with pytest.raises(DatasetError, match="train.txt"):
        camvid.list_samples(tmp_path, "train")


def test_camvid_colour_labels_per_split_folder(tmp_path: Path) -> None:
    rgb, expected = color_label_of_32()
    write_rgb(tmp_path / "train" / "a.png", np.zeros_like(rgb))
    write_rgb(tmp_path / "train_labels" / "a_L.png", rgb)
    (sample,) = [load_sample(p) for p in camvid.list_samples(tmp_path, "train")]
    np.testing.assert_array_equal(sample.labels, expected)


def test_camvid_unknown_layout_names_the_expected_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="701_StillsRaw_full"):
        camvid.list_samples(tmp_path, "val")


def test_folder_reader_with_label_map_and_missing_masks(tmp_path: Path) -> None:
    split = tmp_path / "mine"
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    write_rgb(split / "images" / "b.jpg", image)
    write_rgb(split / "images" / "a.png", image)
    mask = np.zeros((20, 30), np.uint8)
    mask[:, 10:] = 7
    mask[:, 20:] = 9
    (split / "masks").mkdir()
    cv2.imwrite(str(split / "masks" / "a.png"), mask)
    plain = folder.list_samples(tmp_path, "mine")
    assert [s.name for s in plain] == ["a", "b"] and plain[1].label_path is None
    np.testing.assert_array_equal(load_sample(plain[0]).labels, mask)
    np.testing.assert_array_equal(load_sample(plain[0]).image, image)
    mapped = [load_sample(p) for p in folder.list_samples(tmp_path, "mine", label_map={7: 13, 0: 0})]
    assert (mapped[0].labels[:, :10] == 0).all() and (mapped[0].labels[:, 10:20] == 13).all()
    assert (mapped[0].labels[:, 20:] == 255).all()  # 9 is not in the map
    assert mapped[1].labels is None


def test_folder_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="images of split"):
        folder.list_samples(tmp_path, ".")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        folder.list_samples(tmp_path, ".")
    write_rgb(tmp_path / "images" / "x.png", np.zeros((4, 4, 3), np.uint8))
    write_rgb(tmp_path / "images" / "x.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="share the name"):
        folder.list_samples(tmp_path, ".")
    with pytest.raises(DatasetError, match="outside 0..255"):
        folder.normalize_label_map({300: 1})


def test_corrupt_files_and_size_mismatch_raise_dataset_error(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path, "val", count=2, height=32, width=64)
    first, second = cityscapes.list_samples(tmp_path, "val")
    first.image_path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match="cannot read image"):
        load_sample(first)
    cv2.imwrite(str(second.label_path), np.zeros((16, 64), np.uint8))
    with pytest.raises(DatasetError, match="is 64x16 but image"):
        load_sample(second)


def test_get_dataset_reader() -> None:
    assert get_dataset_reader("Cityscapes") is cityscapes
    assert get_dataset_reader("camvid").LABEL_SET == "camvid"
    with pytest.raises(ValueError, match="unknown data set 'kitti'"):
        get_dataset_reader("kitti")
