"""Live mode: a bag played over loopback DDS to the real segmentation node in its own process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("rclpy", reason="live mode needs rclpy (pip install 'rtseg_ros[ros]')")
pytest.importorskip("rtseg_ros.ros.segmentation_node", reason="the segmentation node module is not available")

from rtseg_ros.cli.evaluate import evaluate  # noqa: E402
from rtseg_ros.datasets.labels import CITYSCAPES  # noqa: E402
from rtseg_ros.datasets.synthetic import make_scene  # noqa: E402
from rtseg_ros.engines import SegmenterConfig  # noqa: E402
from rtseg_ros.io.bags import write_frames  # noqa: E402
from rtseg_ros.ros.live_evaluation import LiveOptions, live_node_command, run_live_evaluation  # noqa: E402
from rtseg_ros.ros.node_process import NodeProcess  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

HEIGHT, WIDTH = 64, 128
SETTINGS = {"name": "atonet", "weights": None, "scales": [1, 2, 3, 4], "backend": "torch", "precision": "fp32",
            "device": "cpu", "output_resolution": "input", "input_size": [HEIGHT, WIDTH]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rtseg_ros.nets import build_model
    from rtseg_ros.nets.checkpoint import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "atonet_random.pth"
    save_weights(build_model("atonet", num_classes=19), path, model_name="atonet", label_set="cityscapes")
    return str(path)


def scene_bag(path: Path, count: int, rate_hz: float) -> Path:
    frames = ((*make_scene(i, HEIGHT, WIDTH), f"scene_{i}.png") for i in range(count))
    write_frames(path, frames, period_ns=int(1e9 / rate_hz))
    return path


def test_live_cli_starts_the_node_and_scores_every_frame(tmp_path: Path, weights: str) -> None:
    bag = scene_bag(tmp_path / "bag", count=4, rate_hz=2.0)
    result = CliRunner().invoke(evaluate, [
        str(bag), "--live", "--model", "atonet", "--weights", weights, "--input-size", f"{HEIGHT}x{WIDTH}",
        "--json", str(tmp_path / "live.json"), "--no-progress", "--timeout", "120"], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((tmp_path / "live.json").read_text())
    live = report["live"]
    # 2 Hz leaves the node ample time per 64x128 frame: everything comes back and is scored.
    assert (live["published"], live["received"], live["dropped"]) == (4, 4, 0)
    assert report["frames"] == 4 and report["complete"] and report["mode"] == "live"
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] < 5000
    assert live["node"] == "started" and "segmentation_node" in " ".join(live["node_command"])
    assert "live: 4 of 4 frames came back" in result.output
    assert len(list((tmp_path / "live_overlays").glob("scene_*.jpg"))) == 4


def test_live_against_a_running_node_reports_drops_when_played_too_fast(tmp_path: Path, weights: str) -> None:
    bag = scene_bag(tmp_path / "bag", count=16, rate_hz=10.0)
    settings = {**SETTINGS, "weights": weights}
    # 100x the bag's 10 Hz: frames arrive about every millisecond, far faster than the node segments.
    options = LiveOptions(rate_factor=100.0, start_node=False, startup_timeout_s=120.0, max_wait_s=3.0,
                          drain_s=3.0, progress=False)
    command = live_node_command(SegmenterConfig.from_settings(settings, label_set="cityscapes"), options)
    with NodeProcess(command, tmp_path / "node.log"):
        report = run_live_evaluation(bag, CITYSCAPES, settings, tmp_path / "fast.json", options)
    live = report["live"]
    assert live["published"] == 16 and live["node"] == "running"
    assert live["dropped"] > 0 and live["received"] >= 1
    assert live["received"] + live["dropped"] == 16
    assert report["frames"] == live["received"]  # every frame that came back is scored
    assert report["skipped"]["dropped by the node"] == live["dropped"]
    assert report["latency_ms"]["count"] == live["received"]
    assert json.loads((tmp_path / "fast.json").read_text())["live"]["dropped"] == live["dropped"]


def folder_bag(tmp_path: Path) -> tuple[Path, Path]:
    """A Cityscapes-layout folder, and a bag of its frames that records their file names and camera
    info but no labels: a live score must take the folder's ground truth to score anything."""
    from rtseg_ros.evaluation.sources import DatasetSource
    from rtseg_ros.io.bags import BagWriter
    from rtseg_ros.skips import SkipTally

    from dataset_trees import write_cityscapes_tree

    root = tmp_path / "cs"
    write_cityscapes_tree(root, "val", count=4, height=HEIGHT, width=WIDTH)
    with BagWriter(tmp_path / "bag") as writer:
        for index, frame in enumerate(DatasetSource("cityscapes", root, "val").frames(SkipTally())):
            writer.write_frame(1_700_000_000 * 10**9 + index * 500_000_000, frame.image, None, frame.name,
                               intrinsics=(100.0 + index, 101.0, 63.5, 31.5))
    return tmp_path / "bag", root


def test_live_with_folder_ground_truth_scores_like_offline(tmp_path: Path, weights: str) -> None:
    import os

    bag, root = folder_bag(tmp_path)
    common = [str(bag), "--dataset", "cityscapes", "--root", str(root), "--model", "atonet", "--weights", weights,
              "--input-size", f"{HEIGHT}x{WIDTH}", "--no-progress", "--overlays", "0"]
    # The node runs with the thread count the environment gives it; the offline run uses the same,
    # so both add the network's floats up in the same order.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    offline = CliRunner().invoke(evaluate, [*common, "--json", str(tmp_path / "offline.json")],
                                 catch_exceptions=False)
    assert offline.exit_code == 0, offline.output
    # Lockstep (one frame in flight) paces the bag to the node: no frame is displaced by the next.
    live = CliRunner().invoke(evaluate, [*common, "--live", "--max-in-flight", "1", "--timeout", "120",
                                         "--json", str(tmp_path / "live.json")], catch_exceptions=False)
    assert live.exit_code == 0, live.output + live.stderr
    offline_report, live_report = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("offline", "live"))
    assert live_report["live"]["dropped"] == 0 and live_report["live"]["received"] == 4
    assert live_report["frames"] == offline_report["frames"] == 4
    assert live_report["confusion_matrix"] == offline_report["confusion_matrix"]
    assert live_report["miou"] == offline_report["miou"]
    assert "cityscapes val ground truth" in live_report["source"]["description"]
    # The bag's camera info went out with every frame and the node republished it with its labels.
    assert live_report["live"]["camera_info_published"] == 4
    assert live_report["live"]["camera_info_returned"] == 4
    assert live_report["live"]["max_in_flight"] == 1


def test_recorded_camera_info_becomes_a_ros_message(tmp_path: Path) -> None:
    from std_msgs.msg import Header

    from rtseg_ros.io.bags import CAMERA_INFO_TOPIC, BagFrameReader, BagWriter
    from rtseg_ros.ros.live_evaluation import camera_info_message

    rgb, labels = make_scene(0, HEIGHT, WIDTH)
    with BagWriter(tmp_path / "bag") as writer:
        writer.write_frame(5, rgb, labels, "a.png", intrinsics=(90.0, 91.0, 60.0, 30.0))
    (frame,) = BagFrameReader(tmp_path / "bag", camera_info_topic=CAMERA_INFO_TOPIC)
    header = Header(frame_id="camera")
    msg = camera_info_message(frame.camera_info, header)
    assert (msg.width, msg.height, msg.distortion_model, msg.header.frame_id) == (WIDTH, HEIGHT, "plumb_bob", "camera")
    assert list(msg.k) == [90.0, 0.0, 60.0, 0.0, 91.0, 30.0, 0.0, 0.0, 1.0] and list(msg.d) == [0.0] * 5
    assert list(msg.p)[:3] == [90.0, 0.0, 60.0] and not msg.roi.do_rectify
    (without,) = BagFrameReader(tmp_path / "bag")
    assert without.camera_info is None  # read only when asked for
