"""One-shot GPU check: everything of the CUDA path that can run without TensorRT, and TensorRT if present.

    PYTHONPATH=. python -m rtseg_ros.benchmarks.gpu_check --out DIR     # on a CUDA machine
    PYTHONPATH=. python -m rtseg_ros.benchmarks.gpu_check --out DIR --dry-run   # anywhere, CPU, small

For MFARANet (all scales) and ATONet at 512x1024 and 1024x2048 it measures fp32 and fp16 eager,
fp16-vs-fp32 label agreement, ``torch.compile`` (``reduce-overhead``: CUDA graphs) against eager,
the export audit of the module the TensorRT backend compiles (on CUDA tensors, fp16; int8 with
ModelOpt too when it is installed), the end-to-end :class:`Segmenter` (upload, resize, network,
argmax, download) and, when ``torch_tensorrt`` imports, the TensorRT fp16 build and its latency.
Then batched against sequential throughput (``Segmenter.segment_batch`` of 1, 2 and 4 camera frames
against as many ``segment`` calls, MFARANet at both network sizes; torch fp16, compile fp16 and
TensorRT fp16 when it imports), with the share of labels equal between the two.
It writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.

It needs only torch, numpy and this source tree: frames are made with numpy, and a step whose
import fails (the Segmenter reads its label sets through OpenCV) is recorded as skipped with the
reason. A wall-clock budget (``--budget-s``, default 420 s) skips the remaining steps rather than
overrunning. ``--dry-run`` runs every step on the CPU at 64x128 in fp32, with ``torch.compile``'s
``eager`` backend instead of inductor: it checks the script, not the GPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOG = logging.getLogger(__name__)

NETWORKS = {"mfaranet": ("mfaranet", (1, 2, 3, 4)), "atonet": ("atonet", (1, 2, 3, 4))}
GPU_SIZES = ((512, 1024), (1024, 2048))
DRY_RUN_SIZES = ((64, 128),)
FRAME_SIZE = (1024, 2048)  # camera frames for the end-to-end Segmenter
DRY_RUN_FRAME_SIZE = (96, 160)
BATCH_SIZES = (1, 2, 4)
BATCH_NETWORK = "mfaranet"


@dataclass
class Row:
    """One measurement or check."""

    network: str
    size: str
    check: str
    status: str  # ok, fail, skipped, error
    value: float | None = None
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Check:
    """Runs steps within a time budget and collects their rows."""

    def __init__(self, device: torch.device, dry_run: bool, budget_s: float, iterations: int):
        self.device = device
        self.dry_run = dry_run
        self.deadline = time.monotonic() + budget_s
        self.iterations = iterations
        self.rows: list[Row] = []

    def step(self, network: str, size: str, check: str, fn: Callable[[], Row | list[Row]]) -> None:
        if time.monotonic() > self.deadline:
            self.rows.append(Row(network, size, check, "skipped", details={"reason": "time budget spent"}))
            return
        start = time.perf_counter()
        try:
            result = fn()
        except ImportError as exc:
            result = Row(network, size, check, "skipped", details={"reason": f"{type(exc).__name__}: {exc}"})
        except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others
            LOG.exception("%s %s %s failed", network, size, check)
            result = Row(network, size, check, "error", details={
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)})
        rows = result if isinstance(result, list) else [result]
        for row in rows:
            row.details.setdefault("step_s", round(time.perf_counter() - start, 2))
            LOG.info("%-9s %-10s %-28s %-7s %s", row.network, row.size, row.check, row.status,
                     "" if row.value is None else f"{row.value:.3f} {row.unit}")
        self.rows.extend(rows)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def latency_ms(self, fn: Callable[[], Any], warmup: int = 3) -> float:
        """Median wall time of ``fn`` in ms, synchronised (CPU timers around a device sync)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.iterations):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth HxWx3 uint8 frame with edges, from numpy alone (no OpenCV on the GPU machine)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6.28)]
        wave = np.sin(xs / width * fx * 6.28 + phase) * np.cos(ys / height * fy * 6.28)
        channels.append(wave)
    image = (np.stack(channels, axis=-1) * 0.5 + 0.5) * 255
    image[height // 3: height // 2, width // 4: width // 2] = rng.integers(0, 255, 3)  # a hard-edged block
    return image.clip(0, 255).astype(np.uint8)


def network_input(frame: np.ndarray, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    from rtseg_ros.engines.preprocessing import Preprocessor, frame_to_device

    return Preprocessor(size, device, dtype, channels_last=False)(frame_to_device(frame, device), "rgb")


def run_network_checks(check: Check, key: str, size: tuple[int, int], frame: np.ndarray) -> None:
    from rtseg_ros.engines.base import SegmentationHead
    from rtseg_ros.nets import build_model

    name, scales = NETWORKS[key]
    label = f"{size[0]}x{size[1]}"
    device = check.device
    torch.manual_seed(0)
    model32 = build_model(name, 19, scales).eval().to(device)
    heads: dict[str, Any] = {"fp32": SegmentationHead(model32, size, False)}
    inputs = {"fp32": network_input(frame, size, device, torch.float32)}
    if not check.dry_run:
        import copy

        heads["fp16"] = SegmentationHead(copy.deepcopy(model32).half(), size, False)
        inputs["fp16"] = inputs["fp32"].half()
    labels: dict[str, torch.Tensor] = {}

    for precision, head in heads.items():
        def eager(precision: str = precision, head: Any = head) -> Row:
            with torch.inference_mode():
                labels[precision] = head(inputs[precision])
                ms = check.latency_ms(lambda: head(inputs[precision]))
            return Row(key, label, f"eager {precision}", "ok", ms, "ms")

        check.step(key, label, f"eager {precision}", eager)

    def agreement() -> Row:
        if "fp16" not in labels:
            return Row(key, label, "fp16 vs fp32 labels", "skipped", details={"reason": "dry run: no fp16 on CPU"})
        share = (labels["fp16"] == labels["fp32"]).float().mean().item()
        return Row(key, label, "fp16 vs fp32 labels", "ok" if share > 0.99 else "fail", share * 100, "% pixels")

    check.step(key, label, "fp16 vs fp32 labels", agreement)

    def compiled() -> Row:
        precision = "fp32" if check.dry_run else "fp16"
        head = heads[precision]
        # reduce-overhead records CUDA graphs (as the compile backend does on CUDA); the dry run
        # traces with dynamo but runs eagerly, which needs no C++ compiler and little time.
        options = {"backend": "eager"} if check.dry_run else {"mode": "reduce-overhead"}
        fn = torch.compile(head, dynamic=False, **options)
        with torch.inference_mode():
            start = time.perf_counter()
            out = fn(inputs[precision]).clone()
            check.sync()
            first_s = time.perf_counter() - start
            ms = check.latency_ms(lambda: fn(inputs[precision]))
        share = (out == labels[precision]).float().mean().item() if precision in labels else float("nan")
        return Row(key, label, f"compile {precision}", "ok" if share > 0.999 else "fail", ms, "ms", {
            "first_call_s": round(first_s, 2), "cuda_graphs": not check.dry_run,
            "labels_equal_eager_pct": round(share * 100, 4), **options})

    check.step(key, label, "compile", compiled)

    def audit() -> Row:
        from rtseg_ros.engines.export_audit import audit_graph, lower_like_torch_tensorrt
        from rtseg_ros.engines.tensorrt_engine import export_head, tensorrt_head

        dtype = torch.float32 if check.dry_run else torch.float16
        head = tensorrt_head(model32, size, True, dtype=dtype, device=device)
        example = inputs["fp32"].to(dtype)
        lowered = lower_like_torch_tensorrt(export_head(head, example))
        report = audit_graph(lowered)
        with torch.no_grad():
            got, expected = lowered(example), head(example)
        equal = torch.equal(got[0], expected[0]) and torch.allclose(got[1], expected[1], atol=1e-3)
        status = "ok" if report.ok and equal else "fail"
        return Row(key, label, f"export audit {'fp32' if check.dry_run else 'fp16'}", status,
                   float(sum(report.ops.values())), "nodes", {"report": report.to_dict(), "outputs_equal_eager": equal})

    check.step(key, label, "export audit", audit)

    def audit_int8() -> Row:
        from rtseg_ros.engines.export_audit import audit_exported
        from rtseg_ros.engines.tensorrt_engine import (
            export_quantized_head,
            quantization_config,
            quantize_head,
            tensorrt_head,
        )

        dtype = torch.float32 if check.dry_run else torch.float16
        head = tensorrt_head(model32, size, True, dtype=dtype, device=device)
        frames = [network_input(synthetic_frame(*size, seed=s), size, device, dtype) for s in (1, 2)]
        quantize_head(head, frames, quantization_config())
        if device.type != "cuda":
            return Row(key, label, "int8 export audit", "skipped", details={
                "reason": "calibrated; export needs CUDA (ModelOpt's CPU fake-quant is not traceable)"})
        report = audit_exported(export_quantized_head(head, frames[0]))
        return Row(key, label, "int8 export audit", "ok" if report.ok else "fail", float(sum(report.ops.values())),
                   "nodes", {"report": report.to_dict()})

    check.step(key, label, "int8 export audit", audit_int8)


def _tensorrt_imports(check: Check, key: str, label: str, step: str) -> bool:
    """Whether torch_tensorrt imports; if not, ``step`` is recorded as skipped with the reason."""
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        check.rows.append(Row(key, label, step, "skipped",
                              details={"reason": f"torch_tensorrt does not import: {type(exc).__name__}: {exc}"}))
        return False
    return True


def run_segmenter_checks(check: Check, key: str, size: tuple[int, int], frame: np.ndarray,
                         cache_dir: Path) -> None:
    name, scales = NETWORKS[key]
    label = f"{size[0]}x{size[1]}"
    backends = [("torch", "fp32" if check.dry_run else "fp16")]
    if check.device.type == "cuda" and _tensorrt_imports(check, key, label, "tensorrt fp16"):
        backends.append(("tensorrt", "fp16"))

    for backend, precision in backends:
        def segment(backend: str = backend, precision: str = precision) -> Row:
            from rtseg_ros.engines import Segmenter, SegmenterConfig

            config = SegmenterConfig(model=name, scales=scales, input_height=size[0], input_width=size[1],
                                     backend=backend, precision=precision, device=str(check.device),
                                     cache_dir=str(cache_dir))
            start = time.perf_counter()
            segmenter = Segmenter(config)
            segmenter.warmup(frame.shape[:2], want_confidence=True)
            ready_s = time.perf_counter() - start
            timings: dict[str, list[float]] = {}
            for _ in range(check.iterations):
                result = segmenter.segment(frame, want_confidence=True)
                for part, ms in result.timings_ms.items():
                    timings.setdefault(part, []).append(ms)
            medians = {part: round(statistics.median(v), 3) for part, v in timings.items()}
            details = {"ready_s": round(ready_s, 2), "frame": list(frame.shape[:2]), "median_ms": medians,
                       "engine": segmenter.engine.describe()}
            return Row(key, label, f"segmenter {backend} {precision}", "ok", medians["total"], "ms", details)

        check.step(key, label, f"segmenter {backend} {precision}", segment)


def run_batch_checks(check: Check, size: tuple[int, int], frame_size: tuple[int, int], cache_dir: Path) -> None:
    """Frames per second of ``segment_batch`` on 1, 2 and 4 frames against ``segment`` on each in turn."""
    name, scales = NETWORKS[BATCH_NETWORK]
    label = f"{size[0]}x{size[1]}"
    frames = [synthetic_frame(*frame_size, seed=seed) for seed in range(max(BATCH_SIZES))]
    if check.dry_run:
        backends = [("torch", "fp32")]
        check.rows.append(Row(BATCH_NETWORK, label, "batch compile", "skipped", details={
            "reason": "dry run: inductor compiles for minutes on a CPU"}))
    else:
        backends = [("torch", "fp16"), ("compile", "fp16")]
        if _tensorrt_imports(check, BATCH_NETWORK, label, "batch tensorrt fp16"):
            backends.append(("tensorrt", "fp16"))

    for backend, precision in backends:
        def batches(backend: str = backend, precision: str = precision) -> list[Row]:
            from rtseg_ros.engines import BatchFrame, Segmenter, SegmenterConfig

            config = SegmenterConfig(model=name, scales=scales, input_height=size[0], input_width=size[1],
                                     backend=backend, precision=precision, device=str(check.device),
                                     cache_dir=str(cache_dir), max_batch=max(BATCH_SIZES))
            start = time.perf_counter()
            segmenter = Segmenter(config)
            segmenter.warmup(frame_size)
            segmenter.prepare_batch([frame_size])
            ready_s = time.perf_counter() - start
            rows = []
            for count in BATCH_SIZES:
                batch = [BatchFrame(frame) for frame in frames[:count]]
                batched_ms = check.latency_ms(lambda: segmenter.segment_batch(batch))
                sequential_ms = check.latency_ms(lambda: [segmenter.segment(f) for f in frames[:count]])
                together = segmenter.segment_batch(batch)
                alone = [segmenter.segment(f) for f in frames[:count]]
                equal = float(np.mean([(a.labels == b.labels).mean() for a, b in zip(together, alone)]))
                batched_fps, sequential_fps = count * 1e3 / batched_ms, count * 1e3 / sequential_ms
                rows.append(Row(BATCH_NETWORK, label, f"batch {count} {backend} {precision}",
                                "ok" if equal > 0.999 else "fail", batched_fps, "frames/s", {
                                    "sequential_fps": round(sequential_fps, 2),
                                    "batched_over_sequential": round(batched_fps / sequential_fps, 3),
                                    "batched_ms": round(batched_ms, 3), "sequential_ms": round(sequential_ms, 3),
                                    "labels_equal_sequential_pct": round(equal * 100, 4),
                                    "frame": list(frame_size), "ready_s": round(ready_s, 2)}))
            return rows

        check.step(BATCH_NETWORK, label, f"batch {backend} {precision}", batches)


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "device": str(device), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
    for module in ("torch_tensorrt", "modelopt"):
        try:
            info[module] = getattr(__import__(module), "__version__", "unknown")
        except Exception as exc:  # noqa: BLE001
            info[module] = f"not available ({type(exc).__name__})"
    return info


def markdown(rows: list[Row], env: dict[str, Any]) -> str:
    lines = [f"GPU check: {env.get('gpu', env['device'])}, torch {env['torch']}, CUDA {env['cuda']}, "
             f"torch_tensorrt {env['torch_tensorrt']}", "",
             "| network | size | check | status | value |", "|---|---|---|---|---|"]
    for row in rows:
        value = "" if row.value is None else f"{row.value:.2f} {row.unit}"
        if row.status in ("skipped", "error"):
            value = str(row.details.get("reason") or row.details.get("error", ""))[:120]
        lines.append(f"| {row.network} | {row.size} | {row.check} | {row.status} | {value} |")
    return "\n".join(lines) + "\n"


def run(out: Path, dry_run: bool = False, budget_s: float = 420.0, iterations: int | None = None) -> dict[str, Any]:
    """Run every check and write ``gpu_check.json`` and ``gpu_check.md`` into ``out``; returns the JSON."""
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs CUDA (use --dry-run to check the script on a CPU)")
    device = torch.device("cpu" if dry_run else "cuda")
    check = Check(device, dry_run, budget_s, iterations or (3 if dry_run else 20))
    out.mkdir(parents=True, exist_ok=True)
    sizes = DRY_RUN_SIZES if dry_run else GPU_SIZES
    frame = synthetic_frame(*(DRY_RUN_FRAME_SIZE if dry_run else FRAME_SIZE))
    started = time.perf_counter()
    for size in sizes:
        for key in NETWORKS:
            run_network_checks(check, key, size, frame)
    for size in sizes:
        for key in NETWORKS:
            run_segmenter_checks(check, key, size, frame, out / "cache")
    for size in sizes:
        run_batch_checks(check, size, frame.shape[:2], out / "cache")
    env = environment(device)
    result = {"dry_run": dry_run, "environment": env, "wall_s": round(time.perf_counter() - started, 1),
              "rows": [asdict(row) for row in check.rows]}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(check.rows, env))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 64x128, fp32: check the script only")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the steps left after this many seconds")
    parser.add_argument("--iterations", type=int, default=None, help="timed runs per latency (default 20; 3 dry)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args.out, args.dry_run, args.budget_s, args.iterations)
    print(markdown([Row(**r) for r in result["rows"]], result["environment"]))
    failed = [r for r in result["rows"] if r["status"] in ("fail", "error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
