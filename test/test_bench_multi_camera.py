"""``rtseg bench node --cameras 2`` end to end, small: one 2-camera node and two single-camera nodes.

The figures are the benchmark's business (README); here only their bookkeeping: both layouts ran, every
camera was fed and served, the one node ran batches and its engine builds are counted, memory is read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("rclpy", reason="the node benchmark needs rclpy (pip install '.[ros]')")
pytest.importorskip("vision_msgs.msg", reason="the node publishes vision_msgs/LabelInfo and needs vision_msgs")

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_two_cameras_one_node_against_two_nodes(tmp_path) -> None:
    command = [sys.executable, "-c", "from rtseg_ros.cli import main; main()", "bench", "node", "--cameras", "2",
               "--model", "atonet", "--rate-resolution", "64x128", "--backend", "torch", "--camera-rate", "5",
               "--camera-frame-size", "96x128", "--camera-duration", "3", "--log-dir", str(tmp_path),
               "--json", str(tmp_path / "cameras.json")]
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((tmp_path / "cameras.json").read_text())
    assert report["command"].startswith("rtseg bench node --cameras 2")
    assert report["settings"]["cameras"] == 2 and report["machine"]["load_average"]
    one, separate = report["one_node"], report["separate_nodes"]
    assert (one["processes"], separate["processes"]) == (1, 2)
    for layout in (one, separate):
        assert set(layout["cameras"]) == {"cam0", "cam1"}
        for camera in layout["cameras"].values():
            assert camera["sent"] > 0 and 0 < camera["served"] <= camera["sent"] + 1
            assert camera["latency_p50_ms"] <= camera["latency_p95_ms"]
        assert layout["rss_mib"] > 0 and layout["peak_rss_mib"] >= layout["rss_mib"] * 0.5
        # Where a frame's time went: every stage measured, the network's inference among them.
        assert set(layout["stages_p50_ms"]) >= {"decode", "queued", "inference", "publish"}
        assert layout["stages_p50_ms"]["inference"] > 0
        assert all(camera["node_missed"] <= camera["node_dropped"] for camera in layout["cameras"].values()
                   if "node_dropped" in camera)
        assert layout["aggregate_served_fps"] == pytest.approx(
            sum(camera["served_fps"] for camera in layout["cameras"].values()), abs=0.01)
    assert sum(int(size) * count for size, count in one["batches_by_size"].items()) > 0
    assert set(one["batches_by_size"]) <= {"1", "2"}
    comparison = report["comparison"]
    assert comparison["memory_one_node_vs_all_single_nodes"] == pytest.approx(
        one["rss_mib"] / separate["rss_mib"], abs=0.01)
    assert "batches by size" in result.stdout and "one node's memory" in result.stdout
