"""``rtseg demo``: its sources and settings (no ROS), and one real run end to end."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.ros import demo
from rtseg_ros.ros.demo import (
    DemoError,
    DemoSettings,
    choose_weights,
    demo_node_command,
    frame_source,
)
from rtseg_ros.ros.node_process import loopback_dds_environment


def _take(settings: DemoSettings, count: int) -> list[tuple[np.ndarray, str]]:
    return list(itertools.islice(frame_source(settings), count))


def test_synthetic_source_cycles_street_scenes() -> None:
    frames = _take(DemoSettings(frame_size=(64, 96)), demo.SYNTHETIC_SCENES + 1)
    assert all(image.shape == (64, 96, 3) and order == "rgb" for image, order in frames)
    np.testing.assert_array_equal(frames[0][0], make_scene(demo.SYNTHETIC_FIRST_SEED, 64, 96)[0])
    np.testing.assert_array_equal(frames[-1][0], frames[0][0])


def test_folder_source_loops_over_its_images(tmp_path: Path) -> None:
    scenes = [make_scene(seed, 32, 48)[0] for seed in range(2)]
    for index, scene in enumerate(scenes):
        cv2.imwrite(str(tmp_path / f"{index}.png"), scene[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    frames = _take(DemoSettings(source=str(tmp_path)), 3)
    assert [order for _, order in frames] == ["bgr"] * 3
    np.testing.assert_array_equal(frames[0][0][..., ::-1], scenes[0])
    np.testing.assert_array_equal(frames[2][0], frames[0][0])


def test_video_source_loops(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 32))
    for value in (0, 120, 240):
        writer.write(np.full((32, 64, 3), value, np.uint8))
    writer.release()
    frames = _take(DemoSettings(source=str(path)), 4)
    assert all(image.shape == (32, 64, 3) for image, _ in frames)
    assert [int(image.mean() > 60) for image, _ in frames] == [0, 1, 1, 0]


def test_bag_source_reads_camera_frames(tmp_path: Path) -> None:
    from rtseg_ros.io.bags import write_frames

    scenes = [make_scene(seed, 32, 48)[0] for seed in range(2)]
    write_frames(tmp_path / "bag", [(scene, None, None) for scene in scenes])
    frames = _take(DemoSettings(source=str(tmp_path / "bag")), 3)
    rgb = [image if order == "rgb" else image[..., ::-1] for image, order in frames]
    np.testing.assert_array_equal(rgb[0], scenes[0])
    np.testing.assert_array_equal(rgb[1], scenes[1])
    np.testing.assert_array_equal(rgb[2], scenes[0])


@pytest.mark.parametrize("source,message", [
    ("/no/such/camera", "neither 'synthetic' nor an existing file"),
    ("EMPTY_DIR", "no images"),
    ("NOT_A_VIDEO", "cannot open"),
])
def test_bad_sources_raise_a_clear_error(tmp_path: Path, source: str, message: str) -> None:
    if source == "EMPTY_DIR":
        source = str(tmp_path)
    elif source == "NOT_A_VIDEO":
        source = str(tmp_path / "clip.mp4")
        Path(source).write_bytes(b"not a video")
    with pytest.raises(DemoError, match=message):
        frame_source(DemoSettings(source=source))


def test_weights_default_to_the_toy_model_else_a_loud_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toy = tmp_path / "synthetic_toy.pth"
    monkeypatch.setattr(demo, "TOY_WEIGHTS", toy)
    weights, note = choose_weights(None)
    assert weights is None and note == "UNTRAINED random weights"
    toy.write_bytes(b"stand-in")
    weights, note = choose_weights(None)
    assert weights == str(toy) and "TOY model" in note
    given = tmp_path / "mine.pth"
    given.write_bytes(b"stand-in")
    assert choose_weights(str(given))[0] == str(given)
    with pytest.raises(DemoError, match="not found"):
        choose_weights(str(tmp_path / "missing.pth"))


def test_loopback_dds_respects_what_the_user_set() -> None:
    assert set(loopback_dds_environment({})) == {"ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                                                 "RMW_IMPLEMENTATION"}
    assert Path(loopback_dds_environment({})["FASTRTPS_DEFAULT_PROFILES_FILE"]).is_file()
    user = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml",
            "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert loopback_dds_environment(user) == {}


def test_node_command_takes_model_and_scales_from_our_checkpoint(tmp_path: Path) -> None:
    import torch

    from rtseg_ros.nets import build_model, save_weights

    torch.manual_seed(0)
    weights = save_weights(build_model("mfaranet", num_classes=11, scales=(2,)), tmp_path / "w.pth",
                           model_name="mfaranet", label_set="camvid")
    command = demo_node_command(DemoSettings(input_size=(64, 128)), str(weights))
    assert command[command.index("--params-file") + 1].endswith("config/cpu.yaml")
    overrides = [command[i + 1] for i, arg in enumerate(command) if arg == "-p"]
    for expected in (f'weights:="{weights}"', 'model:="mfaranet"', 'label_set:="camvid"', "scales:=[2]",
                     "input_height:=64", "input_width:=128"):
        assert expected in overrides
    with pytest.raises(DemoError, match="config 'nope.yaml'"):
        demo_node_command(DemoSettings(config="nope.yaml"), None)


@pytest.mark.ros
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="the demo needs rclpy (pip install '.[ros]')")
    out = tmp_path / "out"
    # A HOME without the toy model: the run must warn about untrained weights.
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    rtseg = shutil.which("rtseg")
    assert rtseg, "the rtseg console script is not on PATH (pip install -e .)"
    command = [rtseg, "demo", "--duration", "3", "--rate", "5",
               "--input-size", "64x128", "--frame-size", "64x128", "--out", str(out), "--video"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert demo.UNTRAINED_WARNING in run.stdout and "came from UNTRAINED random weights" in run.stdout
    lines = [line for line in run.stdout.splitlines() if "segmented" in line and "latency" in line]
    assert len(lines) >= 3, run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == "" and summary["weights_note"] == "UNTRAINED random weights"
    assert summary["frames_published"] >= 10 and 0 < summary["frames_segmented"] <= summary["frames_published"]
    assert summary["latency_p50_ms"] > 0
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay is not None and overlay.shape == (64, 128, 3)
    assert (out / "overlay.mp4").stat().st_size > 0 and (out / "node.log").is_file()
