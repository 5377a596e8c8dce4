"""``rtseg bench`` on a tiny matrix: the report's shape, not its timings."""
from __future__ import annotations

import json

from click.testing import CliRunner

from rtseg_ros.cli.bench import bench

REQUIRED = ("model", "height", "width", "scales", "backend", "precision", "device", "e2e_ms_median", "e2e_ms_p95",
            "forward_ms_median", "baseline_e2e_ms_median", "speedup_vs_baseline", "peak_mem_mb")


def test_bench_writes_the_report(tmp_path):
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, [
        "--model", "atonet", "--model", "mfaranet", "--resolution", "64x96", "--scales", "2",
        "--backend", "torch", "--backend", "tensorrt", "--frame-size", "80x120", "--warmup", "0", "--iters", "2",
        "--threads", "2", "--cache-dir", str(tmp_path / "cache"), "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert {"cpu", "cores", "gpu", "torch", "tensorrt", "onnxruntime", "isa_extensions", "isa_limits",
            "torch_cpu_capability", "load_average"} <= set(data["machine"])
    assert len(data["load_average_at_end"]) == 3 and "busy_warning" in data
    assert "ISA " in result.output
    rows = data["rows"]
    assert [(r["model"], r["scales"]) for r in rows] == [("atonet", [1, 2, 3, 4]), ("mfaranet", [2])]
    for row in rows:
        assert set(REQUIRED) <= set(row)
        assert (row["height"], row["width"], row["backend"], row["precision"], row["device"]) == (64, 96, "torch",
                                                                                                  "fp32", "cpu")
        assert row["e2e_ms_median"] > 0 and row["e2e_ms_p95"] >= row["e2e_ms_median"]
        assert row["baseline_e2e_ms_median"] > 0 and row["speedup_vs_baseline"] > 0
        assert row["peak_mem_mb"] is None or row["peak_mem_mb"] > 0
        assert row["frame_height"] == 80 and row["output_resolution"] == "input"
    # No CUDA here: the tensorrt rows are reported as skipped, with the reason.
    skipped = {s["case"]: s["reason"] for s in data["skipped"]}
    assert len(skipped) == 2 and all("tensorrt" in reason for reason in skipped.values())
    assert "ours/base" in result.output and "skipped" in result.output


def test_bench_rejects_a_bad_size():
    result = CliRunner().invoke(bench, ["--resolution", "512by1024"])
    assert result.exit_code != 0 and "HEIGHTxWIDTH" in result.output
