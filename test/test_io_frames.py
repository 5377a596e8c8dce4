"""Frame sources (folder, video, bag, synthetic): the one reader of each, as the demo, calibration and bench use it."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets.base import list_images
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.io.bags import write_frames
from rtseg_ros.io.frames import (
    FrameSourceError,
    bag_frames,
    folder_frames,
    is_bag,
    open_frames,
    synthetic_frames,
    video_frames,
)


def _write_images(folder: Path, scenes: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        cv2.imwrite(str(folder / f"{index}.png"), scene[..., ::-1])


def test_folder_frames_in_name_order_unreadable_files_passed_over(tmp_path: Path) -> None:
    scenes = [make_scene(seed, 32, 48)[0] for seed in range(3)]
    _write_images(tmp_path, scenes)
    (tmp_path / "3.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("not an image")
    _write_images(tmp_path / "nested", [make_scene(9, 32, 48)[0]])
    frames = list(folder_frames(tmp_path))
    assert [order for _, order in frames] == ["bgr"] * 3
    for (image, _), scene in zip(frames, scenes):
        np.testing.assert_array_equal(image[..., ::-1], scene)
    assert len(list(folder_frames(tmp_path, recursive=True))) == 4
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "0.png", "1.png", "2.png", "3.png", "nested/0.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FrameSourceError, match="no images"):
        folder_frames(empty)


def test_video_frames_in_order(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 32))
    for value in (0, 120, 240):
        writer.write(np.full((32, 64, 3), value, np.uint8))
    writer.release()
    frames = list(video_frames(path))
    assert [int(image.mean() > 60) for image, _ in frames] == [0, 1, 1]
    assert all(image.shape == (32, 64, 3) and order == "bgr" for image, order in frames)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(FrameSourceError, match="cannot open"):
        video_frames(tmp_path / "bad.mp4")


def test_bag_frames_and_the_dispatch_on_what_a_path_is(tmp_path: Path) -> None:
    scenes = [make_scene(seed, 32, 48)[0] for seed in range(2)]
    write_frames(tmp_path / "bag", [(scene, None, None) for scene in scenes])
    assert is_bag(tmp_path / "bag") and not is_bag(tmp_path)
    for frames in (list(bag_frames(tmp_path / "bag")), list(open_frames(tmp_path / "bag"))):
        rgb = [image if order == "rgb" else image[..., ::-1] for image, order in frames]
        assert len(rgb) == 2
        np.testing.assert_array_equal(rgb[1], scenes[1])
    with pytest.raises(FrameSourceError, match="no /other topic"):
        list(bag_frames(tmp_path / "bag", image_topic="/other"))

    _write_images(tmp_path / "images", scenes)
    image, order = next(open_frames(tmp_path / "images"))
    np.testing.assert_array_equal(image[..., ::-1] if order == "bgr" else image, scenes[0])
    with pytest.raises(FrameSourceError, match="not found"):
        open_frames(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("neither")
    with pytest.raises(FrameSourceError, match="cannot open"):
        open_frames(tmp_path / "notes.txt")


def test_synthetic_frames_are_the_scenes_of_consecutive_seeds() -> None:
    frames = synthetic_frames(32, 64, 3, first_seed=10)
    assert len(frames) == 3
    for seed, frame in zip(range(10, 13), frames):
        np.testing.assert_array_equal(frame, make_scene(seed, 32, 64)[0])
