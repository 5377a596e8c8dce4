"""Damaged mcap bags: the frames before the damage are read, and the report says what was kept."""
from __future__ import annotations

import struct
from pathlib import Path

import lz4.frame
import numpy as np
import pytest

from rtseg_ros import skips
from rtseg_ros.datasets.labels import CITYSCAPES
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.evaluation.evaluator import Prediction, run_evaluation
from rtseg_ros.evaluation.reports import markdown_summary
from rtseg_ros.evaluation.sources import BagSource
from rtseg_ros.io import bags
from rtseg_ros.io.bags import BagError, BagFrameReader, BagWriter
from rtseg_ros.io.mcap_recovery import MCAP_MAGIC, McapRecovery

FRAMES = 24
HEIGHT, WIDTH = 96, 160  # ~62 kB per frame: rosbags closes a chunk after 1 MiB, so the bag has 2 chunks


def write_bag(path: Path, compression: str = "") -> Path:
    """A bag in the ``rtseg make-bag`` layout, its chunks uncompressed, zstd or lz4."""
    with BagWriter(path) as writer:
        if compression:
            # Not public rosbags API: its writer's storage chooses the chunk codec; lz4 is what
            # ``ros2 bag record`` can write and rosbags cannot.
            writer._writer.storage.compression = compression
            writer._writer.storage.compressor = {"zstd": _zstd_compress, "lz4": lz4.frame.compress}[compression]
        for i in range(FRAMES):
            rgb, labels = make_scene(i, HEIGHT, WIDTH)
            writer.write_frame(1_000 + i, rgb, labels, f"scene_{i}.png")
    return path


def _zstd_compress(data: bytes) -> bytes:
    try:
        from backports import zstd
    except ImportError:  # Python >= 3.14
        from compression import zstd
    return zstd.compress(data)


def mcap_file(bag: Path) -> Path:
    (path,) = bag.glob("*.mcap")
    return path


def chunk_offsets(data: bytes) -> list[int]:
    """Where the chunk records of an intact mcap file start (walking its records)."""
    offsets, pos = [], len(MCAP_MAGIC)
    while pos < len(data) - len(MCAP_MAGIC):
        opcode, length = struct.unpack_from("<BQ", data, pos)
        if opcode == 0x06:
            offsets.append(pos)
        if opcode == 0x0F:
            break
        pos += 9 + length
    return offsets


def assert_first_frames(frames: list[bags.BagFrame], intact: list[bags.BagFrame]) -> None:
    for got, want in zip(frames, intact[:len(frames)], strict=True):
        assert (got.stamp_ns, got.name) == (want.stamp_ns, want.name)
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.labels, want.labels)


@pytest.mark.parametrize("compression", ["", "zstd", "lz4"])
def test_a_cut_short_mcap_gives_the_first_frames_of_the_intact_bag(tmp_path: Path, compression: str) -> None:
    bag = write_bag(tmp_path / "bag", compression)
    intact = list(BagFrameReader(bag))
    assert len(intact) == FRAMES
    path = mcap_file(bag)
    data = path.read_bytes()
    chunks = chunk_offsets(data)
    assert len(chunks) >= 2, "the test needs a bag of several chunks"
    recovered = []
    for fraction in (0.3, 0.55, 0.8, 0.95):
        cut = int(len(data) * fraction)
        path.write_bytes(data[:cut])
        reader = BagFrameReader(bag)
        assert reader.frame_count() == FRAMES  # announced by metadata.yaml when the storage does not open
        frames = list(reader)
        damage = reader.damage
        assert damage is not None and 0 < len(frames) < FRAMES
        assert_first_frames(frames, intact)
        # The damage is the chunk the cut falls in; every frame not read is counted as lost.
        assert damage.offset == max(c for c in chunks if c < cut), fraction
        assert (damage.storage, damage.file, damage.file_size) == ("mcap", path.name, cut)
        assert "cut short" in damage.reason
        assert (damage.frames_recovered, damage.frames_lost) == (len(frames), FRAMES - len(frames))
        assert reader.tally.counts == {skips.SKIP_BAG_READ_ERROR: 1}
        assert damage.describe() in reader.tally.messages[0]
        recovered.append(len(frames))
    assert recovered == sorted(recovered) and len(set(recovered)) > 2


def test_the_frame_at_a_cut_is_left_out_and_nothing_else(tmp_path: Path) -> None:
    # One frame's messages: image, camera info, labels, file name. A cut anywhere inside frame k's
    # messages keeps frames 0..k-1 exactly; a cut right after its last message drops k as well,
    # since whether it was whole cannot be told.
    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        for i in range(3):
            rgb, labels = make_scene(i, 32, 32)
            writer.write_frame(10 + i, rgb, labels, f"f{i}.png")
    path = mcap_file(bag)
    data = path.read_bytes()
    counts = set()
    for cut in range(chunk_offsets(data)[0] + 40, len(data) - 200, 97):
        path.write_bytes(data[:cut])
        reader = BagFrameReader(bag)
        try:
            frames = list(reader)
        except BagError as exc:
            assert "before any /camera/image_raw message" in str(exc)
            continue
        assert [f.name for f in frames] == [f"f{i}.png" for i in range(len(frames))]
        assert all(f.labels is not None for f in frames)
        counts.add(len(frames))
    assert counts >= {0, 1, 2}


def test_damage_after_the_data_loses_no_frame(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag")
    path = mcap_file(bag)
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the footer is cut: rosbags cannot open the file
    reader = BagFrameReader(bag)
    frames = list(reader)
    assert len(frames) == FRAMES and reader.damage is not None
    assert (reader.damage.frames_recovered, reader.damage.frames_lost) == (FRAMES, 0)
    assert "data section is whole" in reader.damage.reason


def test_a_corrupt_chunk_ends_the_frames_there(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", "zstd")
    path = mcap_file(bag)
    data = bytearray(path.read_bytes())
    chunks = chunk_offsets(bytes(data))
    second = chunks[1]
    end = chunks[2] if len(chunks) > 2 else len(data) - 1000
    # Garbage in the middle of the second chunk's compressed data, and the footer cut off, so the
    # file is read front to back.
    middle = (second + end) // 2
    data[middle:middle + 64] = b"\x00" * 64
    path.write_bytes(bytes(data[:-20]))
    reader = BagFrameReader(bag)
    frames = list(reader)
    assert reader.damage is not None and reader.damage.offset == second
    assert "decompress" in reader.damage.reason or "CRC" in reader.damage.reason
    assert_first_frames(frames, list(BagFrameReader(write_bag(tmp_path / "intact", "zstd"))))
    assert 0 < len(frames) < FRAMES


def test_zeros_after_the_last_record_are_damage(tmp_path: Path) -> None:
    # A file system that allocated space the recorder never filled leaves zeros at the end.
    bag = write_bag(tmp_path / "bag")
    path = mcap_file(bag)
    data = path.read_bytes()
    second = chunk_offsets(data)[1]
    path.write_bytes(data[:second] + b"\x00" * 4096)
    reader = BagFrameReader(bag)
    frames = list(reader)
    assert reader.damage.offset == second and "opcode 0x00" in reader.damage.reason
    assert 0 < len(frames) == reader.damage.frames_recovered


def test_nothing_to_recover_is_a_clear_error(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag")
    path = mcap_file(bag)
    data = path.read_bytes()
    path.write_bytes(data[:30])
    with pytest.raises(BagError, match=r"damaged in bag.mcap at byte 8 .* before any /camera/image_raw message"):
        list(BagFrameReader(bag))
    path.write_bytes(b"not an mcap file at all" + data[30:100])
    with pytest.raises(BagError, match="truncated, corrupt or not a rosbag2"):
        list(BagFrameReader(bag))
    with pytest.raises(ValueError, match="not an mcap file"):
        list(McapRecovery(path).messages())


def test_sqlite3_damage_is_reported_without_an_offset(tmp_path: Path) -> None:
    rgb, labels = make_scene(0, 64, 128)
    with BagWriter(tmp_path / "bag", storage="sqlite3") as writer:
        for i in range(10):
            writer.write_frame(i + 1, rgb, labels, f"f{i}.png")
    (database,) = (tmp_path / "bag").glob("*.db3")
    original = database.read_bytes()
    for index in range(len(original) // 4096 - 1, 0, -1):
        damaged = bytearray(original)
        damaged[index * 4096:(index + 1) * 4096] = b"\xff" * 4096
        database.write_bytes(bytes(damaged))
        reader = BagFrameReader(tmp_path / "bag")
        try:
            frames = list(reader)
        except BagError:
            continue
        if reader.damage is not None and 0 < len(frames) < 10:
            break
    else:
        pytest.fail("no single damaged page broke the message stream mid-way")
    damage = reader.damage
    assert (damage.storage, damage.offset, damage.frames_recovered) == ("sqlite3", None, len(frames))
    assert damage.file == database.name
    assert damage.frames_lost == 10 - len(frames) and "malformed" in damage.reason


def test_an_evaluation_of_a_cut_bag_scores_the_recovered_frames_and_reports_the_damage(tmp_path: Path) -> None:
    def predict(image: np.ndarray, order: str) -> Prediction:
        return Prediction((image[..., 0] // 26).astype(np.uint8), 1.0)

    bag = write_bag(tmp_path / "bag")
    path = mcap_file(bag)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.7)])
    report = run_evaluation(BagSource(bag), predict, CITYSCAPES, json_path=tmp_path / "cut.json", progress=False)
    damage = report["source"]["damage"]
    recovered = damage["frames_recovered"]
    assert report["frames"] == report["frames_read"] == recovered and 0 < recovered < FRAMES
    assert damage["frames_lost"] == FRAMES - recovered and damage["offset"] > 0 and damage["file"] == path.name
    assert report["skipped"] == {skips.SKIP_BAG_READ_ERROR: 1} and report["complete"]

    intact = run_evaluation(BagSource(write_bag(tmp_path / "intact")), predict, CITYSCAPES, max_frames=recovered,
                            progress=False)
    np.testing.assert_array_equal(report["confusion_matrix"], intact["confusion_matrix"])
    assert "damage" not in intact["source"]
    summary = (tmp_path / "cut.md").read_text()
    assert f"bag damaged** in {path.name} at byte {damage['offset']}" in summary
    assert f"{recovered} frames before the damage recovered, frames lost: {FRAMES - recovered}" in summary
    assert markdown_summary(report) == summary


def test_rtseg_eval_says_what_a_cut_bag_gave_up(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from rtseg_ros.cli.evaluate import evaluate

    bag = write_bag(tmp_path / "bag")
    path = mcap_file(bag)
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * 0.6)])
    result = CliRunner().invoke(evaluate, [str(bag), "--model", "atonet", "--input-size", f"{HEIGHT}x{WIDTH}",
                                           "--json", str(tmp_path / "r.json"), "--no-progress", "--overlays", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    damage = json.loads((tmp_path / "r.json").read_text())["source"]["damage"]
    assert (f"bag damaged in {path.name} at byte {damage['offset']}" in result.output
            and f"scored the {damage['frames_recovered']} frames before the damage; frames lost: "
                f"{damage['frames_lost']}" in result.output)
