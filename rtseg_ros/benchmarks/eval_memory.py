"""Memory of a long bag evaluation: the resident set size must not grow with the frame count.

Writes a long bag of synthetic scenes, evaluates it with the same code path as ``rtseg eval``
(bag reader, Segmenter, confusion matrix, incremental reports), samples the process RSS every
few frames, and prints the samples plus the growth per 1000 frames fitted over the second half
of the run (after warm-up and allocator settling). Results go to a JSON file.

    python -m rtseg_ros.benchmarks.eval_memory --frames 1000 --json /tmp/eval_memory.json

``--model none`` replaces the network by a fixed-cost predictor (the ground truth shifted by one
pixel), which isolates the evaluator's own memory from the engine's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from rtseg_ros.datasets.labels import CITYSCAPES
from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.evaluation.evaluator import Prediction, SegmenterPredictor, run_evaluation
from rtseg_ros.evaluation.sources import BagSource, EvalFrame
from rtseg_ros.io.bags import write_frames
from rtseg_ros.skips import SkipTally


def rss_mib() -> float:
    """The current resident set size of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise OSError("VmRSS not found in /proc/self/status")


class SampledSource:
    """Passes a source's frames through and samples RSS every ``every`` frames."""

    def __init__(self, source: BagSource, every: int) -> None:
        self.source = source
        self.every = every
        self.samples: list[tuple[int, float]] = []
        self.after_mib: float | None = None
        self.total, self.description = source.total, source.description

    def frames(self, skipped: SkipTally) -> Iterator[EvalFrame]:
        for index, frame in enumerate(self.source.frames(skipped)):
            if index % self.every == 0:
                self.samples.append((index, rss_mib()))
            yield frame
        # After the reader has closed; reported apart from the in-run samples the slope is fitted to.
        self.after_mib = rss_mib()


def growth_per_1000(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS over the second half of the samples, in MiB per 1000 frames."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return float("nan")
    frames, rss = np.array(half, dtype=np.float64).T
    return float(np.polyfit(frames, rss, 1)[0] * 1000.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--model", choices=("atonet", "mfaranet", "none"), default="atonet")
    parser.add_argument("--weights", help="Checkpoint for the model (default: random weights; memory is the point).")
    parser.add_argument("--every", type=int, default=50, help="Sample RSS every N frames.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--workdir", type=Path, help="Where the bag and reports go (default: a temporary folder).")
    parser.add_argument("--json", type=Path, default=Path("eval_memory.json"))
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rtseg_eval_memory_"))
    bag = workdir / f"long_{args.storage}"
    scenes = [make_scene(seed, args.height, args.width) for seed in range(16)]
    started = time.perf_counter()
    write_frames(bag, ((scenes[i % 16][0], scenes[i % 16][1], f"scene_{i:06d}.png") for i in range(args.frames)),
                 storage=args.storage)
    write_s = time.perf_counter() - started
    bag_mib = sum(p.stat().st_size for p in bag.iterdir()) / 2**20

    if args.model == "none":
        def predict(image: np.ndarray, color_order: str) -> Prediction:
            labels = np.roll(scenes[0][1], 1, axis=1) if image.shape[:2] == scenes[0][1].shape else \
                np.zeros(image.shape[:2], np.uint8)
            return Prediction(labels, 0.0)
    else:
        import torch

        from rtseg_ros.engines import Segmenter, SegmenterConfig

        torch.set_num_threads(args.threads)
        height, width = (-(-args.height // 32) * 32, -(-args.width // 32) * 32)
        segmenter = Segmenter(SegmenterConfig(model=args.model, weights=args.weights, input_height=height,
                                              input_width=width))
        segmenter.warmup()
        predict = SegmenterPredictor(segmenter)

    source = SampledSource(BagSource(bag), args.every)
    started = time.perf_counter()
    report = run_evaluation(source, predict, CITYSCAPES, header={"mode": "benchmark"},
                            json_path=workdir / "report.json", overlays=2, progress=False)
    eval_s = time.perf_counter() - started
    samples = source.samples
    result = {
        "benchmark": "eval_memory",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "bag_mib": bag_mib,
        "write_s": write_s,
        "eval_s": eval_s,
        "frames_scored": report["frames"],
        "rss_mib": [{"frame": f, "rss_mib": r} for f, r in samples],
        "rss_first_mib": samples[0][1],
        "rss_last_mib": samples[-1][1],
        "rss_after_run_mib": source.after_mib,
        "rss_max_mib": max(r for _, r in samples),
        "growth_mib_per_1000_frames": growth_per_1000(samples),
    }
    print(f"bag: {args.frames} frames {args.height}x{args.width} {args.storage}, {bag_mib:.0f} MiB, "
          f"model {args.model}; eval {eval_s:.1f} s ({args.frames / eval_s:.1f} frames/s)")
    print("frame     RSS MiB")
    for frame, rss in samples:
        print(f"{frame:>6}  {rss:8.1f}")
    print(f"growth over the second half: {result['growth_mib_per_1000_frames']:+.2f} MiB per 1000 frames; "
          f"max RSS {result['rss_max_mib']:.1f} MiB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
