"""rosbag2 bags of frames with ground truth: writing, reading, and damaged bags."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.evaluation.sources import make_dataset_bag
from rtseg_ros import skips
from rtseg_ros.io import bags
from rtseg_ros.io.bags import BagError, BagFrameReader, BagWriter, write_frames

from dataset_trees import write_cityscapes_tree

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


def scenes(count: int, height: int = 32, width: int = 48):
    for i in range(count):
        rgb, labels = make_scene(i, height, width)
        yield rgb, labels, f"scene_{i}.png"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_bag_writes_stamped_images_labels_camera_info_and_names(tmp_path: Path, storage: str) -> None:
    write_cityscapes_tree(tmp_path / "cs", "val", count=3, height=32, width=64)
    out = tmp_path / "bag"
    summary = make_dataset_bag("cityscapes", tmp_path / "cs", "val", out, storage=storage, rate_hz=5.0)
    assert summary == {"frames": 3, "skipped": 0, "without_ground_truth": 0}
    metadata = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["version"] == 9 and metadata["storage_identifier"] == storage
    assert bags.bag_custom_data(out) == {bags.CUSTOM_DATASET: "cityscapes", bags.CUSTOM_SPLIT: "val",
                                         bags.CUSTOM_LABEL_SET: "cityscapes"}

    seen: dict[str, list] = {}
    with Reader(out) as reader:
        for connection, log_time, raw in reader.messages():
            msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            stamp = log_time if connection.topic == bags.FILE_NAME_TOPIC else (
                msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            assert stamp == log_time  # header stamp and bag time agree
            seen.setdefault(connection.topic, []).append((stamp, msg))
    start, period = 1_700_000_000 * 10**9, 200_000_000
    expected_stamps = [start + i * period for i in range(3)]
    for topic in (bags.IMAGE_TOPIC, bags.CAMERA_INFO_TOPIC, bags.LABEL_TOPIC, bags.FILE_NAME_TOPIC):
        assert [s for s, _ in seen[topic]] == expected_stamps, topic
    info = seen[bags.CAMERA_INFO_TOPIC][0][1]
    assert (info.height, info.width, info.header.frame_id) == (32, 64, "camera")
    assert seen[bags.IMAGE_TOPIC][0][1].encoding == "rgb8" and seen[bags.LABEL_TOPIC][0][1].encoding == "mono8"
    assert seen[bags.FILE_NAME_TOPIC][1][1].data == "leftImg8bit/val/synthcity/synthcity_000001_000019_leftImg8bit.png"

    frames = list(BagFrameReader(out))
    for i, frame in enumerate(frames):
        rgb, labels = make_scene(i, 32, 64)
        np.testing.assert_array_equal(frame.image, rgb)
        np.testing.assert_array_equal(frame.labels, labels)
        assert frame.color_order == "rgb" and frame.stamp_ns == expected_stamps[i]


def test_make_bag_takes_cityscapes_calibration_into_camera_info(tmp_path: Path) -> None:
    write_cityscapes_tree(tmp_path / "cs", "val", count=2, height=32, width=64)
    camera = tmp_path / "cs/camera/val/synthcity/synthcity_000001_000019_camera.json"
    camera.parent.mkdir(parents=True)
    camera.write_text(json.dumps({"extrinsic": {}, "intrinsic": {"fx": 35.5, "fy": 36.0, "u0": 31.0, "v0": 15.5}}))
    make_dataset_bag("cityscapes", tmp_path / "cs", "val", tmp_path / "bag")
    with Reader(tmp_path / "bag") as reader:
        connections = [c for c in reader.connections if c.topic == bags.CAMERA_INFO_TOPIC]
        infos = [TYPESTORE.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(connections)]
    uncalibrated, calibrated = infos
    assert not uncalibrated.k.any() and uncalibrated.distortion_model == ""
    np.testing.assert_array_equal(calibrated.k, [35.5, 0, 31.0, 0, 36.0, 15.5, 0, 0, 1])
    np.testing.assert_array_equal(calibrated.p, [35.5, 0, 31.0, 0, 0, 36.0, 15.5, 0, 0, 0, 1, 0])
    assert calibrated.distortion_model == "plumb_bob" and not calibrated.d.any()
    camera.write_text("{}")
    summary = make_dataset_bag("cityscapes", tmp_path / "cs", "val", tmp_path / "bag2")
    assert summary["frames"] == 1 and summary["skipped"] == 1  # a broken calibration file costs its frame


def test_frames_without_labels_or_names_keep_their_place(tmp_path: Path) -> None:
    rgb, labels = make_scene(0, 32, 48)
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_frame(10, rgb, labels, "a.png")
        writer.write_frame(20, rgb)  # no ground truth, no name
        writer.write_frame(30, rgb, labels, "c.png")
    frames = list(BagFrameReader(tmp_path / "bag"))
    assert [(f.stamp_ns, f.name, f.labels is None) for f in frames] == [
        (10, "a.png", False), (20, None, True), (30, "c.png", False)]
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "bag")
    with pytest.raises(ValueError, match="differ in size"):
        with BagWriter(tmp_path / "other") as writer:
            writer.write_frame(0, rgb, labels[:10])


def _image_msg(stamp_ns: int, encoding: str, data: np.ndarray, height: int, width: int, step: int):
    header = TYPESTORE.types["std_msgs/msg/Header"](
        stamp=TYPESTORE.types["builtin_interfaces/msg/Time"](sec=0, nanosec=stamp_ns), frame_id="camera")
    return TYPESTORE.types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding=encoding,
                                                  is_bigendian=0, step=step, data=data)


def test_bad_messages_are_skipped_and_counted(tmp_path: Path) -> None:
    good = np.zeros((4, 6, 3), np.uint8)
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image = writer.add_connection(bags.IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=TYPESTORE)
        labels = writer.add_connection(bags.LABEL_TOPIC, "sensor_msgs/msg/Image", typestore=TYPESTORE)

        def put(connection, stamp, msg):
            writer.write(connection, stamp, TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))

        put(image, 1, _image_msg(1, "rgb8", good.reshape(-1), 4, 6, 18))
        writer.write(image, 2, b"\x00\x01\x00\x00garbage")  # not CDR of an Image
        put(image, 3, _image_msg(3, "rgb8", good.reshape(-1)[:40], 4, 6, 18))  # truncated pixels
        put(image, 4, _image_msg(4, "weird8", good.reshape(-1), 4, 6, 18))  # unknown encoding
        put(labels, 5, _image_msg(5, "mono8", np.zeros(24, np.uint8), 4, 6, 6))  # labels, no image
        put(image, 6, _image_msg(6, "rgb8", good.reshape(-1), 4, 6, 18))
        put(labels, 6, _image_msg(6, "rgb8", good.reshape(-1), 4, 6, 18))  # labels must be mono8
    reader = BagFrameReader(tmp_path / "bag")
    frames = list(reader)
    assert [(f.stamp_ns, f.labels is None) for f in frames] == [(1, True), (6, True)]
    assert dict(reader.tally.counts) == {
        skips.SKIP_UNDECODABLE_MESSAGE: 1, skips.SKIP_BAD_IMAGE: 2, skips.SKIP_LABELS_WITHOUT_IMAGE: 1,
        skips.SKIP_BAD_LABELS: 1}
    assert any("truncated" in e for e in reader.tally.messages) and any("weird8" in e for e in reader.tally.messages)


def test_unreadable_bags_are_a_clear_error(tmp_path: Path) -> None:
    # A cut short mcap keeps the frames before the damage (test_io_bags_salvage.py); one cut before
    # its first image message, or that is no mcap at all, is an error that says so.
    write_frames(tmp_path / "bag", scenes(3), storage="mcap")
    (data,) = (tmp_path / "bag").glob("*.mcap")
    data.write_bytes(data.read_bytes()[:40])
    with pytest.raises(BagError, match="damaged in bag.mcap at byte 8 .* before any /camera/image_raw message"):
        list(BagFrameReader(tmp_path / "bag"))
    data.write_bytes(b"garbage")
    with pytest.raises(BagError, match="truncated, corrupt or not a rosbag2"):
        list(BagFrameReader(tmp_path / "bag"))
    with pytest.raises(BagError, match="bag not found"):
        list(BagFrameReader(tmp_path / "missing"))
    with pytest.raises(BagError, match="no /camera/image_raw topic"):
        list(BagFrameReader(_bag_with_only_labels(tmp_path / "labels_only")))


def _bag_with_only_labels(path: Path) -> Path:
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(bags.LABEL_TOPIC, "sensor_msgs/msg/Image", typestore=TYPESTORE)
        writer.write(conn, 1, TYPESTORE.serialize_cdr(_image_msg(1, "mono8", np.zeros(4, np.uint8), 2, 2, 2),
                                                      "sensor_msgs/msg/Image"))
    return path


def test_storage_broken_mid_way_keeps_the_frames_read_before(tmp_path: Path) -> None:
    # Frames large enough to span several database pages each.
    write_frames(tmp_path / "bag", scenes(10, 64, 128), storage="sqlite3")
    (database,) = (tmp_path / "bag").glob("*.db3")
    original = database.read_bytes()
    page = 4096
    # Overwrite one database page at a time until the damage hits the messages mid-way through:
    # which page that is depends on SQLite's layout, not on anything this project controls.
    for index in range(len(original) // page - 1, 0, -1):
        damaged = bytearray(original)
        damaged[index * page:(index + 1) * page] = b"\xff" * page
        database.write_bytes(bytes(damaged))
        reader = BagFrameReader(tmp_path / "bag")
        try:
            frames = list(reader)
        except BagError:
            continue  # damage in the schema: the bag does not open at all
        if reader.tally.counts[skips.SKIP_BAG_READ_ERROR] and 0 < len(frames) < 10:
            break
    else:
        pytest.fail("no single damaged page broke the message stream mid-way")
    assert reader.tally.counts[skips.SKIP_BAG_READ_ERROR] == 1 and "malformed" in reader.tally.messages[-1]
    assert reader.damage is not None and reader.damage.frames_recovered == len(frames)
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, make_scene(i, 64, 128)[0])


def test_writer_rejects_unknown_storage_and_bad_images(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="unknown bag storage"):
        BagWriter(tmp_path / "x", storage="rosbag1")
    with BagWriter(tmp_path / "y") as writer, pytest.raises(ValueError, match="HxWx3 uint8"):
        writer.write_frame(0, np.zeros((4, 4), np.uint8))
    shutil.rmtree(tmp_path / "y")
