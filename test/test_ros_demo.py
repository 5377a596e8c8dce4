"""``rtseg demo``: its sources and settings (no ROS), and one real run end to end."""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg_ros.datasets.synthetic import HELD_OUT_FIRST_SEED, make_scene
from rtseg_ros.names import BACKENDS
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
    np.testing.assert_array_equal(frames[0][0], make_scene(HELD_OUT_FIRST_SEED, 64, 96)[0])
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


def test_weights_default_to_the_shipped_toy_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "synthetic_toy.pth"
    shipped.write_bytes(b"stand-in")
    # The resolver finds the manifest's toy model; here a stand-in in the first folder it searches.
    monkeypatch.setenv("RTSEG_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(demo, "TOY_MODEL", "synthetic_toy.pth")
    weights, note = choose_weights(None)
    assert weights == str(shipped) and "TOY model" in note
    given = tmp_path / "mine.pth"
    given.write_bytes(b"stand-in")
    assert choose_weights(str(given)) == (str(given), f"weights {given}")
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


# The line `rtseg demo` prints once the first labels are in.
FIRST_LABELS = re.compile(r"^first labels (\d+\.\d) s after the demo started \((\d+\.\d) s after the node started\); "
                          r"frames served by: ", re.MULTILINE)


def _run_demo(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``rtseg demo ARGUMENTS`` as a user runs it, in ``tmp_path`` with an empty home (so an empty cache)."""
    pytest.importorskip("rclpy", reason="the demo needs rclpy (pip install '.[ros]')")
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("RTSEG_ROS_CACHE", None)
    env.pop("RTSEG_MODELS_DIR", None)
    rtseg = shutil.which("rtseg")
    assert rtseg, "the rtseg console script is not on PATH (pip install -e .)"
    run = subprocess.run([rtseg, "demo", *arguments], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.mark.ros
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # --untrained: the fast pipeline-only run, no toy model training; it must warn about untrained weights.
    run = _run_demo(tmp_path, "--untrained", "--duration", "3", "--rate", "5", "--input-size", "64x128",
                    "--frame-size", "64x128", "--out", str(out), "--video")
    assert demo.UNTRAINED_WARNING in run.stdout and "came from UNTRAINED random weights" in run.stdout
    assert "no toy model yet" not in run.stdout and not (tmp_path / ".cache/rtseg_ros/models").exists()
    lines = [line for line in run.stdout.splitlines() if "segmented" in line and "latency" in line]
    assert len(lines) >= 3, run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == "" and summary["weights_note"] == "UNTRAINED random weights"
    assert summary["frames_published"] >= 10 and 0 < summary["frames_segmented"] <= summary["frames_published"]
    assert summary["latency_p50_ms"] > 0
    # frames go out only once the node is ready, so the first labels come after that
    assert 0 < summary["node_ready_s"] < summary["first_labels_s"]
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay is not None and overlay.shape == (64, 128, 3)
    assert (out / "overlay.mp4").stat().st_size > 0 and (out / "node.log").is_file()
    picture = cv2.imread(str(out / "side_by_side.png"))
    assert summary["side_by_side_png"] == str(out / "side_by_side.png") and picture.shape[1] == 3 * 128
    # Which engine served the frames (eager PyTorch until the backend is built), as the node's timings say.
    assert summary["served_by"] and set(summary["served_by"]) <= {"eager", *BACKENDS}, summary["served_by"]
    assert 0 < sum(summary["served_by"].values()) <= summary["frames_segmented"]
    assert FIRST_LABELS.search(run.stdout), run.stdout
    # Counted from the command's start too: what the user waits includes the node's start.
    assert summary["first_labels_since_demo_start_s"] > summary["first_labels_s"]


@pytest.mark.ros
@pytest.mark.slow
def test_the_quick_start_demo_runs_the_shipped_toy_model(tmp_path: Path) -> None:
    from rtseg_ros.datasets.labels import CITYSCAPES

    # The README's quick start, `rtseg demo`: the shipped toy model, config/cpu.yaml, synthetic 256x512
    # frames, an empty engine cache; only shorter.
    run = _run_demo(tmp_path, "--duration", "3")
    assert "TOY model" in run.stdout and demo.UNTRAINED_WARNING not in run.stdout, run.stdout
    assert "no toy model yet" not in run.stdout  # shipped: nothing is trained
    summary = json.loads((tmp_path / "rtseg_demo" / "summary.json").read_text())
    assert Path(summary["weights"]).name == "synthetic_toy.pth" and summary["frames_segmented"] > 0
    found = FIRST_LABELS.search(run.stdout)
    assert found, run.stdout
    since_demo, since_node = (float(value) for value in found.groups())
    # The target: first labels within 60 s of `rtseg demo` starting (seconds here).
    assert 0 < since_node < since_demo < 60, run.stdout
    # The side-by-side picture shows a network that segments: its labels panel matches the ground truth of
    # the synthetic scene in its camera panel (the demo plays HELD_OUT_FIRST_SEED onwards).
    picture = cv2.imread(str(tmp_path / "rtseg_demo" / "side_by_side.png"))[..., ::-1]
    height, width = 256, 512
    assert picture.shape[1] == 3 * width
    camera = picture[demo._TITLE_H:demo._TITLE_H + height, :width]
    labels = picture[demo._TITLE_H:demo._TITLE_H + height, width:2 * width]
    scenes = [make_scene(HELD_OUT_FIRST_SEED + index, height, width) for index in range(demo.SYNTHETIC_SCENES)]
    (truth,) = [truth for image, truth in scenes if np.array_equal(image, camera)]
    accuracy = np.all(labels == CITYSCAPES.colorize(truth), axis=-1).mean()
    assert accuracy > 0.85, accuracy


def test_side_by_side_shows_camera_labels_overlay_and_names_the_classes_seen() -> None:
    from rtseg_ros.datasets.labels import CITYSCAPES
    from rtseg_ros.io.overlay import overlay_labels

    camera, labels = make_scene(HELD_OUT_FIRST_SEED, 64, 128)
    overlay = overlay_labels(camera, "rgb", labels, CITYSCAPES, 0.5)
    # The node may publish labels at the network size: the camera and overlay are brought to it.
    picture = demo.side_by_side(cv2.resize(camera, (256, 128)), labels, overlay, CITYSCAPES)
    legend_rows = picture.shape[0] - demo._TITLE_H - 64
    assert picture.shape[1] == 3 * 128 and picture.dtype == np.uint8 and legend_rows > 0
    top = picture[demo._TITLE_H:demo._TITLE_H + 64]
    np.testing.assert_array_equal(top[:, 128:256], CITYSCAPES.colorize(labels))
    np.testing.assert_array_equal(top[:, 256:], overlay)
    # The legend holds a swatch of each class present, and of no other class.
    legend = picture[-legend_rows:].reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(legend, axis=0)}
    present = {int(i) for i in np.unique(labels)}
    assert all(CITYSCAPES.colors[i] in colours for i in present)
    absent = [c for i, c in enumerate(CITYSCAPES.colors) if i not in present and c not in
              {CITYSCAPES.colors[j] for j in present}]
    assert not any(c in colours for c in absent)


def test_untrained_and_weights_do_not_go_together() -> None:
    with pytest.raises(DemoError, match="untrained runs random weights"):
        demo.run_demo(DemoSettings(untrained=True, weights="w.pth"))
    with pytest.raises(DemoError, match="untrained runs random weights"):
        demo.run_demo(DemoSettings(untrained=True, retrain=True))
    with pytest.raises(DemoError, match="retrain trains the toy model"):
        demo.run_demo(DemoSettings(retrain=True, weights="w.pth"))


def test_the_demo_trains_the_toy_model_once_and_an_interruption_caches_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rtseg_ros.datasets.labels import CITYSCAPES, LabelSet
    from rtseg_ros.nets.checkpoint import LABEL_SET_DEFINITION, read_checkpoint_info
    from rtseg_ros.training import data as training_data

    monkeypatch.setattr(demo, "TOY_WEIGHTS", tmp_path / "models" / "synthetic_toy.pth")
    monkeypatch.setattr(demo, "TOY_RUN_DIR", tmp_path / "toy_training")
    # The demo's recipe, tiny: the real one takes minutes.
    tiny = ("train.iterations=4", "train.batch_size=2", "data.synthetic.height=64", "data.synthetic.width=128",
            "data.synthetic.train_count=8", "data.synthetic.val_count=1", "augment.crop=[64, 128]",
            "data.workers=0", "val.every_iterations=4", "output.progress=false")
    # Ctrl-C in the third iteration (batches of 2 scenes; the data is read in this process).
    scene = training_data.SyntheticScenes.__getitem__
    reads: list[int] = []

    def interrupted(self: object, index: int) -> object:
        reads.append(index)
        if len(reads) == 5:
            raise KeyboardInterrupt
        return scene(self, index)

    monkeypatch.setattr(training_data.SyntheticScenes, "__getitem__", interrupted)
    lines: list[str] = []
    with pytest.raises(DemoError, match="interrupted: no toy model cached; the next `rtseg demo` continues from"):
        demo.train_toy_model(lines.append, tiny)
    assert "no toy model yet: training it once (4 iterations" in lines[0]
    assert not demo.TOY_WEIGHTS.exists() and not demo.TOY_WEIGHTS.parent.exists()  # not even half a file
    assert (demo.TOY_RUN_DIR / "last.pth").is_file()

    # The next run continues where it stopped, and caches the model.
    monkeypatch.setattr(training_data.SyntheticScenes, "__getitem__", scene)
    assert demo.train_toy_model(lines.append, tiny) == demo.TOY_WEIGHTS
    assert lines[-2].startswith("continuing the toy model's training from") and "toy model ready" in lines[-1]
    assert not demo.TOY_RUN_DIR.exists() and [p.name for p in demo.TOY_WEIGHTS.parent.iterdir()] == [
        "synthetic_toy.pth"]
    info = read_checkpoint_info(demo.TOY_WEIGHTS)
    assert info["model"] == "atonet" and LabelSet.from_dict(info[LABEL_SET_DEFINITION]) == CITYSCAPES
    weights, note = choose_weights(str(demo.TOY_WEIGHTS))  # what `rtseg demo --retrain` runs
    assert weights == str(demo.TOY_WEIGHTS) and "TOY model" in note
