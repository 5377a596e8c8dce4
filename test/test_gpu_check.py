"""``python -m rtseg_ros.benchmarks.gpu_check --dry-run``: every step of the GPU check, on the CPU."""
from __future__ import annotations

import json

from rtseg_ros.benchmarks import gpu_check


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run", "--iterations", "1"]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] is True
    rows = result["rows"]
    assert not [r for r in rows if r["status"] in ("fail", "error")]
    checks = {(r["network"], r["check"]): r for r in rows}
    for network in gpu_check.NETWORKS:
        for check in ("eager fp32", "compile fp32", "export audit fp32", "segmenter torch fp32"):
            assert checks[(network, check)]["status"] == "ok", (network, check)
        assert checks[(network, "export audit fp32")]["details"]["report"]["ok"] is True
        assert checks[(network, "compile fp32")]["details"]["labels_equal_eager_pct"] == 100.0
        # Steps that need CUDA say so instead of passing silently.
        assert checks[(network, "fp16 vs fp32 labels")]["status"] == "skipped"
    # Batched against sequential, as far as the CPU goes: eager fp32, batches of 1, 2 and 4.
    for count in gpu_check.BATCH_SIZES:
        row = checks[(gpu_check.BATCH_NETWORK, f"batch {count} torch fp32")]
        assert row["status"] == "ok" and row["value"] > 0
        assert row["details"]["labels_equal_sequential_pct"] > 99.9 and row["details"]["sequential_fps"] > 0
    assert checks[(gpu_check.BATCH_NETWORK, "batch compile")]["status"] == "skipped"
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # header + one line per row
