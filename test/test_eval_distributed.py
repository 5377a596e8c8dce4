"""Evaluation on several processes (torchrun's environment, gloo on CPU): same numbers as one process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from rtseg_ros.datasets.labels import CITYSCAPES
from rtseg_ros.datasets.synthetic import make_scene
# A whole-suite pytest process that had loaded rclpy, Fast DDS and OpenVINO died with SIGSEGV when it
# spawned these workers after another test had; they run in a pytest process of their own.
pytestmark = pytest.mark.multiprocess

from rtseg_ros.distributed import DistributedContext, close_distributed, gather_objects, init_distributed
from rtseg_ros.evaluation.evaluator import Evaluation, Prediction, run_evaluation
from rtseg_ros.evaluation.sharding import ShardedSource
from rtseg_ros.evaluation.sources import BagSource, DatasetSource
from rtseg_ros.io.bags import BagWriter
from rtseg_ros.skips import SkipTally

from dataset_trees import write_cityscapes_tree

WORLD = 2
# What must agree between one process and several (latency values and timings do not).
SAME = ("frames", "frames_read", "skipped", "issues", "unknown_label_pixels", "confusion_matrix", "miou",
        "pixel_accuracy", "per_class_iou", "exported", "complete")


def by_colour(image: np.ndarray, color_order: str) -> Prediction:
    """A rule standing in for a network (the red channel in bands); fails on pure grey frames."""
    red = image[..., 0 if color_order == "rgb" else 2]
    if (image == 77).all():
        raise ValueError("engine failed on this frame")
    return Prediction((red // 26).astype(np.uint8), 1.0, {"inference": 0.5, "total": 1.0})


def write_bag(path: Path) -> Path:
    """Eleven frames: scored ones, one without ground truth, one the predictor fails on, one with
    unknown label values, and one undecodable message, so every tally has something to add up."""
    with BagWriter(path) as writer:
        for i in range(11):
            rgb, labels = make_scene(i, 32, 48)
            if i == 3:
                writer.write_frame(100 + i, rgb, None, f"scene_{i}.png")
                continue
            if i == 6:
                rgb = np.full_like(rgb, 77)
            if i == 8:
                labels = labels.copy()
                labels[:2] = 200
            writer.write_frame(100 + i, rgb, labels, f"scene_{i}.png")
        writer._writer.write(writer._image, 104, b"\x00\x01\x00\x00not an image")
    return path


def make_source(kind: str, data: Path) -> Any:
    if kind == "bag":
        return BagSource(data / "bag")
    return DatasetSource("cityscapes", data / "cs", "val")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CASES = [("bag", None), ("dataset", None), ("bag", 7), ("dataset", 5)]


def _evaluate_as(rank: int, world: int, port: int, data: Path, out: Path) -> None:
    """One of ``world`` processes, with the variables torchrun sets: every case of :data:`CASES`."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        for index, (kind, max_frames) in enumerate(CASES):
            case = out / str(index)
            report = run_evaluation(make_source(kind, data), by_colour, CITYSCAPES, json_path=case / "report.json",
                                    export_dir=case / "export", max_frames=max_frames, progress=False,
                                    distributed=context)
            (case / f"returned_{rank}.json").write_text(as_json(
                {k: report[k] for k in (*SAME, "distributed", "latency_ms")}))
    finally:
        close_distributed(context)


def as_json(value: Any) -> str:
    """``value`` as JSON text: NaN equals NaN, arrays equal lists."""
    return json.dumps(value, sort_keys=True, default=lambda v: v.tolist())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_bag(root / "bag")
    write_cityscapes_tree(root / "cs", "val", count=7, height=32, width=64)
    # A label file that cannot be read: the process whose share holds it counts it.
    label = sorted((root / "cs").rglob("*_gtFine_labelIds.png"))[2]
    label.write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """Every case evaluated by two processes (spawned once: starting them is the slow part)."""
    out = tmp_path_factory.mktemp("two")
    for index in range(len(CASES)):
        (out / str(index)).mkdir()
    mp.spawn(_evaluate_as, args=(WORLD, _free_port(), data, out), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{k}-max{m}" for k, m in CASES])
def test_two_processes_give_the_scores_of_one(tmp_path: Path, data: Path, two_processes: Path, case: int) -> None:
    kind, max_frames = CASES[case]
    single = run_evaluation(make_source(kind, data), by_colour, CITYSCAPES, json_path=tmp_path / "report.json",
                            export_dir=tmp_path / "export", max_frames=max_frames, progress=False)
    assert single["frames"] > 2 and single["skipped"], "the case must score frames and skip some"
    two = two_processes / str(case)
    for rank in range(WORLD):  # every process returns the report of the whole run
        report = json.loads((two / f"returned_{rank}.json").read_text())
        for field in SAME:
            assert as_json(report[field]) == as_json(single[field]), field
        assert report["distributed"] == {"world_size": WORLD, "backend": "gloo", "merged": True}
        assert report["latency_ms"]["count"] == single["latency_ms"]["count"]
    written = json.loads((two / "report.json").read_text())  # rank 0 wrote it
    on_disk = json.loads((tmp_path / "report.json").read_text())
    for field in SAME:
        assert written[field] == on_disk[field], field
    np.testing.assert_array_equal(written["confusion_matrix"], single["confusion_matrix"])
    # The per-frame log holds every frame once, in stream order, as one process writes it.
    lines = [json.loads(line) for line in (two / "report.frames.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "report.frames.jsonl").read_text().splitlines()]
    assert [(r["name"], r["skipped"]) for r in lines] == [(r["name"], r["skipped"]) for r in expected]
    # Each process exported its own frames' predictions; together they are one process's.
    exported = sorted(p.relative_to(two / "export") for p in (two / "export").rglob("*.png"))
    assert exported == sorted(p.relative_to(tmp_path / "export") for p in (tmp_path / "export").rglob("*.png"))
    assert (two / "report.md").is_file() and (two / "report_overlays").is_dir()


def test_shards_cover_every_frame_once(data: Path) -> None:
    names = []
    for rank in range(3):
        source = ShardedSource(make_source("bag", data), DistributedContext(rank, 3), max_frames=None)
        tally = SkipTally()
        frames = [f.name for f in source.frames(tally)]
        assert source.total == len(range(rank, make_source("bag", data).total, 3))
        # Every process reads the whole bag; only rank 0 counts what the reader skipped.
        assert tally.total == (1 if rank == 0 else 0)
        names += frames
    assert sorted(names) == sorted(f"scene_{i}.png" for i in range(11))
    listed = [ShardedSource(make_source("dataset", data), DistributedContext(rank, 2)) for rank in range(2)]
    assert [s.total for s in listed] == [4, 3]


def test_merged_evaluations_add_up() -> None:
    first, second, both = (Evaluation(CITYSCAPES) for _ in range(3))
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    for evaluation, frames in ((first, [labels]), (second, [labels, np.zeros((2, 2), np.uint8)]),
                               (both, [labels, labels, np.zeros((2, 2), np.uint8)])):
        for index, frame in enumerate(frames):
            evaluation.frames_read += 1
            evaluation.add_latency(float(index + 1), {"inference": 0.5})
            evaluation.score(f"f{index}", frame, frame)
        evaluation.note("bad image", "x")
    both.note("bad image", "x")  # one from each process
    first.merge(second)
    merged, expected = first.metrics(), both.metrics()
    for field in ("frames", "frames_read", "skipped", "miou", "stage_latency_ms"):
        assert merged[field] == expected[field], field
    assert merged["latency_ms"]["count"] == 3 and merged["latency_ms"]["max"] == 2.0
    np.testing.assert_array_equal(merged["confusion_matrix"], expected["confusion_matrix"])


def test_a_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext() and not context.distributed and context.is_main
    assert gather_objects("x", context) == ["x"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="needs integer RANK"):
        init_distributed("cpu")


def _rtseg_script() -> str:
    """The ``rtseg`` console script itself (torchrun runs it with Python; a pyenv shim is a shell script)."""
    script = Path(sysconfig.get_path("scripts")) / "rtseg"
    if not script.is_file():
        pytest.skip(f"the rtseg console script is not installed in {script.parent}")
    return str(script)


@pytest.mark.slow
def test_torchrun_rtseg_eval_equals_one_process(tmp_path: Path, data: Path) -> None:
    from rtseg_ros.nets import build_model
    from rtseg_ros.nets.checkpoint import save_weights

    torch.manual_seed(0)
    weights = tmp_path / "atonet.pth"
    save_weights(build_model("atonet", num_classes=19), weights, model_name="atonet", label_set="cityscapes")
    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        for i in range(5):
            writer.write_frame(10 + i, *make_scene(i, 64, 128), f"scene_{i}.png")
    args = [str(bag), "--model", "atonet", "--weights", str(weights), "--input-size", "64x128", "--no-progress"]
    # One thread in every process, so that the float sums of the network run in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    one = subprocess.run([_rtseg_script(), "eval", *args, "--json", str(tmp_path / "one.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
                          f"--master_port={_free_port()}", _rtseg_script(), "eval", *args,
                          "--json", str(tmp_path / "two.json")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    single, shared = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    np.testing.assert_array_equal(shared["confusion_matrix"], single["confusion_matrix"])
    assert (shared["frames"], shared["miou"]) == (single["frames"], single["miou"]) and shared["frames"] == 5
    assert shared["distributed"]["world_size"] == WORLD
    assert two.stdout.count("mIoU") == 1 and f"{WORLD} processes (gloo) shared the frames" in two.stdout
