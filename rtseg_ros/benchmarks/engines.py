"""Latency benchmark of the Segmenter backends against an authors'-style baseline (``rtseg bench``).

Every row runs one (model, resolution, scales, backend, precision, device) combination. In the same
loop, frame by frame, it also times a baseline written the way the authors' scripts run inference:
host-side normalisation and ``cv2`` resize in numpy, an eager fp32 forward, the logits resized to the
frame and copied to the host, and ``np.argmax`` there. Alternating the two on the same frames makes
their ratio robust to a noisy machine; the ratio is the figure to trust, absolute times are not.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import ConfigError, Segmenter, SegmenterConfig, check_runtime
from rtseg_ros.engines.preprocessing import reference_preprocess
from rtseg_ros.io.files import atomic_output

LOG = logging.getLogger(__name__)

FRAME_VARIANTS = 4  # distinct synthetic frames cycled through, so no cache sees one frame only


@dataclass(frozen=True)
class BenchCase:
    """One row of the matrix."""

    model: str
    height: int
    width: int
    scales: tuple[int, ...]
    backend: str
    precision: str
    device: str


@dataclass
class BenchSettings:
    """What every row shares.

    Attributes:
        frame_size: camera frame (height, width); ``None`` feeds frames at the network size.
        output_resolution: ``input`` (labels at the frame size) or ``network``.
        warmup: untimed frames after the engine is built.
        iters: timed frames (each also runs the baseline once).
        weights: model name -> checkpoint path; models without one run random weights.
        cache_dir: engine cache; ``None`` uses the default.
        want_confidence: also compute and download the confidence map.
    """

    frame_size: tuple[int, int] | None = (1024, 2048)
    output_resolution: str = "input"
    warmup: int = 2
    iters: int = 10
    weights: dict[str, str] = field(default_factory=dict)
    cache_dir: str | None = None
    want_confidence: bool = False


def expand_matrix(models: Sequence[str], resolutions: Sequence[tuple[int, int]], scales: Sequence[tuple[int, ...]],
                  backends: Sequence[str], precisions: Sequence[str], device: str) -> list[BenchCase]:
    """All combinations, in order; ATONet has no scales, so it gets one row per other setting."""
    cases: list[BenchCase] = []
    for model in models:
        model_scales = [(1, 2, 3, 4)] if model == "atonet" else list(scales)
        for height, width in resolutions:
            for scale_set in model_scales:
                for backend in backends:
                    for precision in precisions:
                        case = BenchCase(model, height, width, tuple(scale_set), backend, precision, device)
                        if case not in cases:
                            cases.append(case)
    return cases


def case_config(case: BenchCase, settings: BenchSettings) -> SegmenterConfig:
    return SegmenterConfig(model=case.model, weights=settings.weights.get(case.model), input_height=case.height,
                           input_width=case.width, scales=case.scales, backend=case.backend,
                           precision=case.precision, device=case.device,
                           output_resolution=settings.output_resolution, cache_dir=settings.cache_dir)


def skip_reason(case: BenchCase, settings: BenchSettings) -> str | None:
    """Why ``case`` cannot run on this machine, or ``None`` if it can."""
    config = case_config(case, settings)
    try:
        config.validate()
        check_runtime(config)
    except ConfigError as exc:
        return str(exc)
    return None


def machine_info() -> dict[str, Any]:
    """The machine block of the JSON report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tensorrt": _version("tensorrt"),
        "torch_tensorrt": _version("torch_tensorrt", "torch-tensorrt"),
        "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
        "opencv": _version("opencv-python-headless", "opencv-python"),
    }


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak on a GPU, process RSS on the CPU.

    RSS is sampled every few milliseconds from ``/proc/self/statm`` (the whole process, so it includes
    the baseline model and the Python runtime); on platforms without it the peak is ``None``.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int | None:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        peak = 0
        while True:
            rss = self._rss()
            if rss is None:
                return
            peak = max(peak, rss)
            self.peak_mb = peak / 2**20
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()


class AuthorsBaseline:
    """Inference the way the authors' evaluation scripts do it, for the speed-up figure.

    Host-side normalisation and resize (numpy + ``cv2.INTER_LINEAR``), a fresh NCHW tensor, eager
    fp32 forward under ``no_grad``, logits bilinearly resized to the output size (align_corners=True,
    as their test scripts do), copied to the host, ``np.argmax`` on the host.
    """

    def __init__(self, case: BenchCase, state_dict: dict[str, torch.Tensor], output_resolution: str):
        from rtseg_ros.nets import build_model

        self.device = torch.device(case.device)
        self.network_size = (case.height, case.width)
        self.output_resolution = output_resolution
        model = build_model(case.model, scales=case.scales)
        model.load_state_dict(state_dict)  # the segmenter's own weights, so labels can be compared
        self.model = model.to(self.device).eval()

    def segment(self, frame_rgb: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(reference_preprocess(frame_rgb, self.network_size)).to(self.device)
        with torch.no_grad():
            logits = self.model(image)
            if self.output_resolution == "input" and tuple(logits.shape[-2:]) != frame_rgb.shape[:2]:
                logits = F.interpolate(logits, size=frame_rgb.shape[:2], mode="bilinear", align_corners=True)
        scores = logits.cpu().numpy()
        return np.argmax(scores[0], axis=0).astype(np.uint8)


def synthetic_frames(size: tuple[int, int], count: int = FRAME_VARIANTS) -> list[np.ndarray]:
    """Street-like RGB frames (deterministic), so timings do not depend on a data set being present."""
    return [make_scene(seed, size[0], size[1])[0] for seed in range(count)]


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def run_case(case: BenchCase, settings: BenchSettings) -> dict[str, Any]:
    """Build the engine, warm it up, then time ``settings.iters`` frames against the baseline."""
    config = case_config(case, settings)
    frame_size = settings.frame_size or (case.height, case.width)
    frames = synthetic_frames(frame_size)
    device = torch.device(case.device)

    started = time.perf_counter()
    segmenter = Segmenter(config)
    segmenter.warmup(frame_size, want_confidence=settings.want_confidence)
    build_s = time.perf_counter() - started
    baseline = AuthorsBaseline(case, segmenter.engine.spec.model.state_dict(), settings.output_resolution)
    for i in range(settings.warmup):
        segmenter.segment(frames[i % len(frames)], want_confidence=settings.want_confidence)
        baseline.segment(frames[i % len(frames)])

    ours: list[dict[str, float]] = []
    base_ms: list[float] = []
    agreement: list[float] = []
    with PeakMemory(device) as memory:
        for i in range(settings.iters):
            frame = frames[i % len(frames)]
            start = time.perf_counter()
            result = segmenter.segment(frame, want_confidence=settings.want_confidence)
            e2e = (time.perf_counter() - start) * 1e3
            ours.append({**result.timings_ms, "e2e": e2e})
            start = time.perf_counter()
            reference = baseline.segment(frame)
            base_ms.append((time.perf_counter() - start) * 1e3)
            agreement.append(float((reference == result.labels).mean()))

    e2e = [t["e2e"] for t in ours]
    prepost_share = [(t["preprocess"] + t["postprocess"]) / t["e2e"] for t in ours]
    e2e_median = statistics.median(e2e)
    baseline_median = statistics.median(base_ms)
    return {
        **{k: v for k, v in asdict(case).items() if k != "scales"},
        "scales": list(case.scales),
        "frame_height": frame_size[0],
        "frame_width": frame_size[1],
        "output_resolution": settings.output_resolution,
        "confidence": settings.want_confidence,
        "iters": settings.iters,
        "e2e_ms_median": e2e_median,
        "e2e_ms_p95": _percentile(e2e, 95),
        "preprocess_ms_median": statistics.median(t["preprocess"] for t in ours),
        "forward_ms_median": statistics.median(t["inference"] for t in ours),
        "postprocess_ms_median": statistics.median(t["postprocess"] for t in ours),
        "prepost_share_median": statistics.median(prepost_share),
        "fps": 1000.0 / e2e_median,
        "peak_mem_mb": memory.peak_mb,
        "baseline_e2e_ms_median": baseline_median,
        "baseline_e2e_ms_p95": _percentile(base_ms, 95),
        "ours_over_baseline": e2e_median / baseline_median,
        "speedup_vs_baseline": baseline_median / e2e_median,
        "label_agreement_vs_baseline": statistics.median(agreement),
        "build_s": build_s,
        "engine": segmenter.engine.describe(),
    }


def run_matrix(cases: Iterable[BenchCase], settings: BenchSettings) -> Iterator[tuple[BenchCase, dict[str, Any] | str]]:
    """Yield (case, row) for every case that runs, and (case, reason) for every case skipped or failed."""
    for case in cases:
        reason = skip_reason(case, settings)
        if reason is not None:
            LOG.info("skipping %s: %s", case, reason)
            yield case, reason
            continue
        try:
            yield case, run_case(case, settings)
        except Exception as exc:  # noqa: BLE001 - one failing backend must not end the whole matrix
            LOG.exception("benchmark row %s failed", case)
            yield case, f"failed: {type(exc).__name__}: {exc}"


TABLE_COLUMNS = (
    ("model", "model", "{}"), ("size", None, "{}"), ("scales", None, "{}"), ("backend", "backend", "{}"),
    ("prec", "precision", "{}"), ("e2e med", "e2e_ms_median", "{:.1f}"), ("p95", "e2e_ms_p95", "{:.1f}"),
    ("pre", "preprocess_ms_median", "{:.1f}"), ("infer", "forward_ms_median", "{:.1f}"),
    ("post", "postprocess_ms_median", "{:.1f}"), ("pre+post", "prepost_share_median", "{:.1%}"),
    ("FPS", "fps", "{:.2f}"), ("peak MB", "peak_mem_mb", "{:.0f}"), ("baseline", "baseline_e2e_ms_median", "{:.1f}"),
    ("ours/base", "ours_over_baseline", "{:.2f}"), ("speedup", "speedup_vs_baseline", "{:.2f}x"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the measured rows (times in ms)."""
    header = [name for name, _, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for name, key, fmt in TABLE_COLUMNS:
            if name == "size":
                value = f"{row['height']}x{row['width']}"
            elif name == "scales":
                value = ",".join(str(s) for s in row["scales"])
            else:
                value = row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: str | Path, rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]],
                 settings: BenchSettings, command: str, machine: dict[str, Any]) -> None:
    """Write the JSON report: the machine block (from :func:`machine_info`), the settings, one object per
    row, skipped rows."""
    report = {
        "machine": machine,
        "command": command,
        "settings": {**asdict(settings), "frame_size": list(settings.frame_size) if settings.frame_size else None},
        "rows": list(rows),
        "skipped": list(skipped),
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
