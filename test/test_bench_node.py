"""``rtseg bench node`` end to end, small: the real node in its own process, the JSON it writes and what it says.

Sizes are tiny so the run takes seconds; the figures themselves are the benchmark's business (README),
here only their bookkeeping is checked: every row has its samples, the overhead is the latency less the
Segmenter's time, the rate search accounts for every frame it sent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="the node benchmark needs rclpy (pip install '.[ros]')")
pytest.importorskip("vision_msgs.msg", reason="the node publishes vision_msgs/LabelInfo and needs vision_msgs")

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FRAMES = 3


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench_node")
    command = [sys.executable, "-c", "from rtseg_ros.cli import main; main()", "bench", "node", "--resolution", "64x128",
               "--frame-size", "64x128", "--encoding", "rgb8", "--encoding", "jpeg", "--frames", str(FRAMES), "--warmup", "1", "--rate-resolution", "64x128",
               "--rate-frame-size", "64x128", "--rate-duration", "1", "-p", "cpu_threads=1", "-p", "qos_depth=2",
               "--alone-frames", str(FRAMES),
               "--log-dir", str(out), "--json", str(out / "node.json")]
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-4000:]
    return json.loads((out / "node.json").read_text()), result.stdout, out


def test_every_row_has_its_frames_and_the_overhead_is_latency_less_segmenter(report) -> None:
    document, output, _ = report
    # jpeg frames come as sensor_msgs/CompressedImage to a second node (input_transport is read-only)
    assert [row["case"] for row in document["rows"]] == [
        f"64x128 {encoding} {outputs}" for encoding in ("rgb8", "jpeg") for outputs in (
            "labels", "labels+confidence(mono8)", "labels+confidence(32FC1)", "labels+confidence(32FC1)+overlay")]
    for row in document["rows"]:
        assert row["segmenter_ms"]["n"] == FRAMES and row["segmenter_ms"]["p50"] > 0
        # The Segmenter runs between the frame's receipt and its labels' publication: some overhead is left.
        assert row["overhead_ms"]["p50"] > 0
        assert row["labels_latency_ms"]["p50"] > row["segmenter_ms"]["p50"]
        assert row["overhead_incl_camera_publish_ms"]["p50"] >= row["overhead_ms"]["p50"]
        assert row["all_outputs_overhead_ms"]["p50"] >= row["overhead_ms"]["p50"]
        for part in ("handoff_ms", "decode_ms", "publish_ms", "camera_publish_call_ms"):
            assert row[part]["n"] == FRAMES and row[part]["p50"] >= 0, (part, row[part])
        assert f"| {row['case']} | {row['segmenter_ms']['p50']:.1f} |" in output  # the printed table


def test_the_rate_search_accounts_for_every_frame(report) -> None:
    rate = report[0]["rate_search"]
    assert rate["model_latency_ms"] > 0
    assert rate["model_rate_hz"] == pytest.approx(1000.0 / rate["model_latency_ms"], rel=0.01)
    assert rate["tried"] and rate["frame_size"] == [64, 128]
    for trial in rate["tried"]:
        assert 0 <= trial["served"] <= trial["sent"] and trial["dropped"] == trial["sent"] - trial["served"]
    if rate["highest_zero_drop_rate_hz"] is not None:
        best = max((t for t in rate["tried"] if t["dropped"] == 0), key=lambda t: t["rate_hz"])
        assert rate["highest_zero_drop_rate_hz"] == pytest.approx(best["rate_hz"], abs=0.01)
        assert rate["ratio_to_segmenter_rate_at_that_rate"] == pytest.approx(
            best["rate_hz"] * best["segmenter_ms_p50"] / 1000.0, abs=0.002)


def test_the_report_states_the_machine_the_command_and_the_node_settings(report) -> None:
    document, _, out = report
    assert document["command"].startswith("rtseg bench node --resolution 64x128")
    assert document["machine"]["cores"] >= 1 and len(document["machine"]["load_average"]) == 3
    assert document["node_settings"] == {"cpu_threads": 1, "qos_depth": 2}
    assert document["config"]["input_size"] == "64x128"
    # The cpu_threads parameter reached the node.
    assert "on 1 CPU thread(s)" in (out / "bench_node_raw.log").read_text()


def test_a_wrong_node_setting_is_refused_before_any_node_starts() -> None:
    from click.testing import CliRunner

    from rtseg_ros.cli import main

    for argument, message in (("qos_depth", "is not NAME=VALUE"), ("frobnicate=1", "unknown node parameter 'frobnicate'"),
                              ("backend=torch", "backend sets the engine")):
        result = CliRunner().invoke(main, ["bench", "node", "-p", argument])
        assert result.exit_code == 2 and message in result.output, result.output


def test_the_network_alone_and_inside_the_node_are_timed_on_the_same_frames(report) -> None:
    document, output, _ = report
    alone = document["network_alone_vs_node"]
    assert alone["frame_size"] == [64, 128] and alone["threads"] == 1  # the node's cpu_threads, here too
    assert alone["segmenter_alone_ms"]["n"] == alone["segmenter_in_node_ms"]["n"] == FRAMES
    assert alone["in_node_over_alone"] == pytest.approx(
        alone["segmenter_in_node_ms"]["p50"] / alone["segmenter_alone_ms"]["p50"], rel=0.01)
    # The user's figure: the labels come after the network's own time, so the difference is what the node adds.
    assert alone["labels_latency_ms"]["p50"] > alone["labels_latency_minus_alone_ms"]["p50"]
    assert "network alone vs inside the node" in output


def test_a_preset_file_sets_the_rows(tmp_path) -> None:
    """--params-file: the Nav2 preset's network, output size, camera size and confidence encoding."""
    from rtseg_ros.benchmarks.node import preset_cases

    repository = Path(__file__).resolve().parents[1]
    config, settings, cases = preset_cases(repository / "config" / "nav2_semantic_layer.yaml", "onnxruntime")
    assert (config.backend, config.output_resolution) == ("onnxruntime", "640x480")
    assert [(case.frame_size, case.outputs, case.confidence_encoding) for case in cases] == [
        ((720, 1280), "labels", cases[0].confidence_encoding), ((720, 1280), "labels+confidence", "mono8")]
    assert "confidence_encoding" not in settings and "camera_width" not in settings

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("/**:\n  ros__parameters:\n    frobnicate: 1\n")
    from click.testing import CliRunner

    from rtseg_ros.cli import main

    result = CliRunner().invoke(main, ["bench", "node", "--params-file", str(wrong)])
    assert result.exit_code == 2 and "frobnicate" in result.output, result.output
