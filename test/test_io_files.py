"""Atomic file output: a failed write leaves the old file intact and no temporary files behind."""
from __future__ import annotations

import pytest

from rtseg_ros.io.files import atomic_output, write_bytes_atomic


def test_success_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "weights.pth"
    write_bytes_atomic(target, b"old")
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["weights.pth"]


def test_failure_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("complete")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
