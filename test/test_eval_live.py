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
