"""Latency benchmark of the Segmenter backends against an authors'-style baseline (``rtseg bench``).

Every row runs one (model, resolution, scales, backend, precision, device) combination. The rows
that share a model, resolution, scales and device run together in one loop with a baseline written
the way the authors' scripts run inference: host-side normalisation and ``cv2`` resize in numpy, an
eager fp32 forward, the logits resized to the frame and copied to the host, and ``np.argmax`` there.
Every frame goes through the baseline and every engine in turn, so each engine's ratio to the
baseline is taken frame by frame on the same frames; its median and interquartile range are robust
to a noisy machine and show its own uncertainty. The ratio is the figure to trust, absolute times are
not.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtseg_ros.engines import ConfigError, Segmenter, SegmenterConfig
from rtseg_ros.engines.preprocessing import reference_preprocess
from rtseg_ros.io.files import atomic_output
from rtseg_ros.io.frames import synthetic_frames
from rtseg_ros.machine import busy_warning, cpu_isa_extensions, cpu_model, distribution_version, isa_limits, load_average
from rtseg_ros.names import ALL_SCALES, fixed_output_size

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
        output_resolution: ``input`` (labels at the frame size), ``network`` or ``WIDTHxHEIGHT``.
        warmup: untimed frames after the engine is built.
        iters: timed frames (each also runs the baseline once).
        weights: model name -> checkpoint path; models without one run random weights.
        cache_dir: engine cache; ``None`` uses the default.
        want_confidence: also compute and download the confidence map.
        calibration_data: int8 calibration frames; ``None``: synthetic scenes written to the cache
            (see :func:`prepare_calibration`).
        calibration_frames: how many frames int8 rows calibrate on.
    """

    frame_size: tuple[int, int] | None = (1024, 2048)
    output_resolution: str = "input"
    warmup: int = 2
    iters: int = 10
    weights: dict[str, str] = field(default_factory=dict)
    cache_dir: str | None = None
    want_confidence: bool = False
    calibration_data: str | None = None
    calibration_frames: int = 64


def expand_matrix(models: Sequence[str], resolutions: Sequence[tuple[int, int]], scales: Sequence[tuple[int, ...]],
                  backends: Sequence[str], precisions: Sequence[str], device: str) -> list[BenchCase]:
    """All combinations, in order; ATONet has no scales, so it gets one row per other setting."""
    cases: list[BenchCase] = []
    for model in models:
        model_scales = [ALL_SCALES] if model == "atonet" else list(scales)
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
                           output_resolution=settings.output_resolution, cache_dir=settings.cache_dir,
                           calibration_data=settings.calibration_data if case.precision == "int8" else None,
                           calibration_frames=settings.calibration_frames)


def skip_reason(case: BenchCase, settings: BenchSettings) -> str | None:
    """Why ``case`` cannot run on this machine, or ``None`` if it can."""
    config = case_config(case, settings)
    try:
        config.check()
    except ConfigError as exc:
        return str(exc)
    return None


def machine_info() -> dict[str, Any]:
    """The machine block of the JSON report."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa_extensions": cpu_isa_extensions(),
        # Caps set for an emulation of a smaller CPU; torch's own view of its kernels shows it took hold.
        "isa_limits": isa_limits(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tensorrt": distribution_version("tensorrt"),
        "torch_tensorrt": distribution_version("torch_tensorrt", "torch-tensorrt"),
        "onnxruntime": distribution_version("onnxruntime", "onnxruntime-gpu"),
        "openvino": distribution_version("openvino"),
        "nncf": distribution_version("nncf"),
        "opencv": distribution_version("opencv-python-headless", "opencv-python"),
        "load_average": load_average(),
    }


def isa_text(machine: dict[str, Any]) -> str:
    """The instruction-set part of a report's machine line: extensions, and the cap in force if any."""
    text = "ISA " + (" ".join(machine.get("isa_extensions") or []) or "unknown")
    limits = machine.get("isa_limits")
    if limits:
        text += " limited by " + " ".join(f"{k}={v}" for k, v in limits.items())
        text += f" (torch kernels: {machine.get('torch_cpu_capability')})"
    return text


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak on a GPU, process RSS on the CPU.

    RSS is sampled every few milliseconds from ``/proc/self/statm`` (the whole process, so it includes
    the baseline model, every engine of the group and the Python runtime); on platforms without it the
    peak is ``None``. :meth:`mark` names the row running from then on, so ``peaks_mb`` holds each
    row's peak: the process's peak while that row ran.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self.peaks_mb: dict[Hashable, float] = {}
        self._current: Hashable | None = None
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
            current = self._current
            if current is not None:
                self._record(current, rss / 2**20)
            if self._stop.wait(self.interval_s):
                return

    def _record(self, key: Hashable, megabytes: float) -> None:
        self.peaks_mb[key] = max(self.peaks_mb.get(key, 0.0), megabytes)

    def mark(self, key: Hashable | None) -> None:
        """Count what follows, until the next mark, towards row ``key`` (``None``: no row)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self._current is not None:
                self._record(self._current, torch.cuda.max_memory_allocated(self.device) / 2**20)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._current = key

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

    def __init__(self, case: BenchCase, state_dict: dict[str, torch.Tensor], output_resolution: str,
                 device: torch.device | None = None):
        from rtseg_ros.nets import build_model

        self.device = device or torch.device(case.device)
        self.network_size = (case.height, case.width)
        self.output_resolution = output_resolution
        model = build_model(case.model, scales=case.scales)
        model.load_state_dict(state_dict)  # the segmenter's own weights, so labels can be compared
        self.model = model.to(self.device).eval()

    def segment(self, frame_rgb: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(reference_preprocess(frame_rgb, self.network_size)).to(self.device)
        with torch.no_grad():
            logits = self.model(image)
            size = frame_rgb.shape[:2] if self.output_resolution == "input" else fixed_output_size(self.output_resolution)
            if size is not None and tuple(logits.shape[-2:]) != tuple(size):
                logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
        scores = logits.cpu().numpy()
        return np.argmax(scores[0], axis=0).astype(np.uint8)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class _Contender:
    """One row of a group while it runs: its Segmenter and what was measured so far."""

    case: BenchCase
    config: SegmenterConfig
    segmenter: Segmenter
    build_s: float
    timings: list[dict[str, float]] = field(default_factory=list)
    pair_speedups: list[float] = field(default_factory=list)
    agreement_vs_baseline: list[float] = field(default_factory=list)
    agreement_vs_fp32: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    failure: str | None = None


def _group_key(case: BenchCase) -> tuple[Any, ...]:
    return (case.model, case.height, case.width, case.scales, case.device)


def _fp32_partner(contender: _Contender, group: Sequence[_Contender]) -> _Contender | None:
    """The fp32 row an int8 row's labels are compared with: the same backend's, else the first fp32 row."""
    fp32 = [c for c in group if c.case.precision == "fp32" and c.failure is None]
    same = [c for c in fp32 if c.case.backend == contender.case.backend]
    return (same or fp32 or [None])[0]


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    return _percentile(values, 25), _percentile(values, 50), _percentile(values, 75)


def run_group(cases: Sequence[BenchCase], settings: BenchSettings) -> list[tuple[BenchCase, dict[str, Any] | str]]:
    """Time every case of one (model, size, scales, device) group and the baseline, alternating, on the same frames.

    Each iteration feeds one frame to the authors'-style baseline and to every engine, in an order
    that rotates by one per iteration (so no engine always runs right after another's cache
    pollution). The per-frame ratio baseline/engine is taken within the iteration, so a load spike
    on a shared machine hits both sides of a ratio; its median and interquartile range are the
    speed-up and its spread. int8 rows also report their label agreement with an fp32 row on the
    same frames (the same backend's fp32 row when it is measured too).
    """
    first = cases[0]
    frame_size = settings.frame_size or (first.height, first.width)
    # Synthetic street scenes, so timings do not depend on a data set being present.
    frames = synthetic_frames(frame_size[0], frame_size[1], FRAME_VARIANTS)
    outcomes: dict[BenchCase, dict[str, Any] | str] = {}
    contenders: list[_Contender] = []
    for case in cases:
        config = case_config(case, settings)
        started = time.perf_counter()
        try:
            # Without a checkpoint every row draws the same random weights, so labels compare across rows.
            torch.manual_seed(0)
            segmenter = Segmenter(config)
            segmenter.warmup(frame_size, want_confidence=settings.want_confidence)
        except Exception as exc:  # noqa: BLE001 - one failing backend must not end the whole matrix
            LOG.exception("benchmark row %s failed to build", case)
            outcomes[case] = f"failed: {type(exc).__name__}: {exc}"
            continue
        contenders.append(_Contender(case, segmenter.config, segmenter, time.perf_counter() - started))
    if not contenders:
        return [(case, outcomes[case]) for case in cases]
    if len({c.segmenter.weights_id for c in contenders}) > 1:
        LOG.warning("the rows of %s run different weights; their label agreement means nothing", _group_key(first))

    device = torch.device(contenders[0].config.torch_device)
    baseline = AuthorsBaseline(first, contenders[0].segmenter.engine.spec.model.state_dict(),
                               settings.output_resolution, device)
    for i in range(settings.warmup):
        baseline.segment(frames[i % len(frames)])
        for contender in contenders:
            contender.segmenter.segment(frames[i % len(frames)], want_confidence=settings.want_confidence)

    base_ms: list[float] = []
    runners: list[_Contender | None] = [None, *contenders]  # None: the baseline
    with PeakMemory(device) as memory:
        for i in range(settings.iters):
            frame = frames[i % len(frames)]
            shift = i % len(runners)
            labels: dict[int, np.ndarray] = {}
            e2e: dict[int, float] = {}
            baseline_ms = reference = None
            for runner in runners[shift:] + runners[:shift]:
                if runner is not None and runner.failure is not None:
                    continue
                memory.mark(runner.case if runner is not None else None)
                start = time.perf_counter()
                if runner is None:
                    reference = baseline.segment(frame)
                    baseline_ms = (time.perf_counter() - start) * 1e3
                    continue
                try:
                    result = runner.segmenter.segment(frame, want_confidence=settings.want_confidence)
                except Exception as exc:  # noqa: BLE001 - drop this row, keep the others running
                    LOG.exception("benchmark row %s failed", runner.case)
                    runner.failure = f"failed: {type(exc).__name__}: {exc}"
                    continue
                e2e[id(runner)] = (time.perf_counter() - start) * 1e3
                runner.timings.append({**result.timings_ms, "e2e": e2e[id(runner)]})
                labels[id(runner)] = result.labels
            memory.mark(None)
            base_ms.append(baseline_ms)
            for contender in contenders:
                if id(contender) not in labels:
                    continue
                contender.pair_speedups.append(baseline_ms / e2e[id(contender)])
                contender.agreement_vs_baseline.append(float((labels[id(contender)] == reference).mean()))
                partner = _fp32_partner(contender, contenders) if contender.case.precision == "int8" else None
                if partner is not None and id(partner) in labels:
                    contender.agreement_vs_fp32.append(float((labels[id(contender)] == labels[id(partner)]).mean()))
    for contender in contenders:
        contender.peak_mb = memory.peaks_mb.get(contender.case)

    for contender in contenders:
        if contender.failure is not None or not contender.timings:
            outcomes[contender.case] = contender.failure or "failed: no frame was timed"
            continue
        partner = _fp32_partner(contender, contenders) if contender.case.precision == "int8" else None
        outcomes[contender.case] = _row(contender, partner, base_ms, frame_size, settings)
    return [(case, outcomes[case]) for case in cases]


def _row(contender: _Contender, partner: _Contender | None, base_ms: Sequence[float], frame_size: tuple[int, int],
         settings: BenchSettings) -> dict[str, Any]:
    ours = contender.timings
    e2e = [t["e2e"] for t in ours]
    prepost_share = [(t["preprocess"] + t["postprocess"]) / t["e2e"] for t in ours]
    e2e_median = statistics.median(e2e)
    baseline_median = statistics.median(base_ms)
    low, median, high = _quartiles(contender.pair_speedups)
    agreement = contender.agreement_vs_fp32
    return {
        **contender.config.to_bench_fields(),
        "frame_height": frame_size[0],
        "frame_width": frame_size[1],
        "confidence": settings.want_confidence,
        "iters": settings.iters,
        "e2e_ms_median": e2e_median,
        "e2e_ms_p95": _percentile(e2e, 95),
        "preprocess_ms_median": statistics.median(t["preprocess"] for t in ours),
        "forward_ms_median": statistics.median(t["inference"] for t in ours),
        "postprocess_ms_median": statistics.median(t["postprocess"] for t in ours),
        "prepost_share_median": statistics.median(prepost_share),
        "fps": 1000.0 / e2e_median,
        "peak_mem_mb": contender.peak_mb,
        "baseline_e2e_ms_median": baseline_median,
        "baseline_e2e_ms_p95": _percentile(base_ms, 95),
        "ours_over_baseline": e2e_median / baseline_median,
        "speedup_vs_baseline": baseline_median / e2e_median,
        "speedup_pairs_median": median,
        "speedup_pairs_iqr": [low, high],
        "label_agreement_vs_baseline": statistics.median(contender.agreement_vs_baseline),
        "label_agreement_vs_fp32": statistics.median(agreement) if agreement else None,
        "label_agreement_vs_fp32_min": min(agreement) if agreement else None,
        "fp32_reference": partner.case.backend if partner is not None else None,
        "calibration": ({"data": contender.config.calibration_data, "frames": contender.config.calibration_frames}
                        if contender.case.precision == "int8" else None),
        "build_s": contender.build_s,
        "engine": contender.segmenter.engine.describe(),
    }


def prepare_calibration(cases: Sequence[BenchCase], settings: BenchSettings) -> BenchSettings:
    """``settings`` with calibration data for int8 rows: the user's, else synthetic scenes in the cache.

    The synthetic scenes have the benchmark's frame size and seeds apart from the timed frames.
    """
    if settings.calibration_data is not None or not any(case.precision == "int8" for case in cases):
        return settings
    from rtseg_ros.engines import default_cache_dir
    from rtseg_ros.engines.calibration import write_synthetic_calibration_frames

    size = settings.frame_size or (cases[0].height, cases[0].width)
    root = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
    folder = write_synthetic_calibration_frames(root / "calibration-frames" / f"synthetic-{size[0]}x{size[1]}",
                                                settings.calibration_frames, size)
    return dataclasses.replace(settings, calibration_data=str(folder))


def run_matrix(cases: Iterable[BenchCase], settings: BenchSettings) -> Iterator[tuple[BenchCase, dict[str, Any] | str]]:
    """Yield (case, row) for every case that runs, and (case, reason) for every case skipped or failed.

    Cases are grouped by (model, size, scales, device); each group runs as one alternating loop
    (:func:`run_group`) against one baseline.
    """
    cases = list(cases)
    settings = prepare_calibration(cases, settings)
    groups: dict[tuple[Any, ...], list[BenchCase]] = {}
    for case in cases:
        groups.setdefault(_group_key(case), []).append(case)
    for group in groups.values():
        runnable = []
        for case in group:
            reason = skip_reason(case, settings)
            if reason is not None:
                LOG.info("skipping %s: %s", case, reason)
                yield case, reason
            else:
                runnable.append(case)
        if runnable:
            yield from run_group(runnable, settings)


TABLE_COLUMNS = (
    ("model", "model", "{}"), ("size", None, "{}"), ("scales", None, "{}"), ("backend", "backend", "{}"),
    ("prec", "precision", "{}"), ("e2e med", "e2e_ms_median", "{:.1f}"), ("p95", "e2e_ms_p95", "{:.1f}"),
    ("pre", "preprocess_ms_median", "{:.1f}"), ("infer", "forward_ms_median", "{:.1f}"),
    ("post", "postprocess_ms_median", "{:.1f}"), ("pre+post", "prepost_share_median", "{:.1%}"),
    ("FPS", "fps", "{:.2f}"), ("peak MB", "peak_mem_mb", "{:.0f}"), ("baseline", "baseline_e2e_ms_median", "{:.1f}"),
    ("ours/base", "ours_over_baseline", "{:.2f}"), ("speedup", "speedup_vs_baseline", "{:.2f}x"),
    ("pair speedup", "speedup_pairs_median", "{:.2f}x"), ("IQR", "speedup_pairs_iqr", "{0[0]:.2f}-{0[1]:.2f}"),
    ("agree fp32", "label_agreement_vs_fp32", "{:.2%}"),
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
                 settings: BenchSettings, command: str, machine: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
    """Write the JSON report: the machine block (from :func:`machine_info`), the settings, one object per
    row, skipped rows, the load at the end, a warning when the machine was busy at either end, and
    ``extra`` (e.g. the OpenVINO profiles) as further top-level entries."""
    end_load = load_average()
    report = {
        "machine": machine,
        "command": command,
        "settings": {**asdict(settings), "frame_size": list(settings.frame_size) if settings.frame_size else None},
        "rows": list(rows),
        "skipped": list(skipped),
        # Against the start's (machine.load_average): how busy the machine was while it ran.
        "load_average_at_end": end_load,
        "busy_warning": [w for w in (busy_warning(machine.get("load_average"), machine.get("cores")),
                                     busy_warning(end_load, machine.get("cores"))) if w] or None,
        **(extra or {}),
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))


def write_markdown(path: str | Path, rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]], command: str,
                   machine: dict[str, Any]) -> None:
    """Write the table as Markdown, headed by the command and the machine (its load included)."""
    start_load = machine.get("load_average")
    end_load = load_average()
    loads = ", ".join(f"{label} {values[0]:.2f}" for label, values in (("start", start_load), ("end", end_load))
                      if values)
    lines = [
        f"`{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
        f"GPU {machine['gpu'] or 'none'}; torch {machine['torch']}, onnxruntime {machine.get('onnxruntime') or '-'}, "
        f"openvino {machine.get('openvino') or '-'}; {isa_text(machine)}; 1-minute load average {loads or 'n/a'}.",
        "",
        *(f"**Warning: {w}.**" for w in (busy_warning(start_load, machine.get("cores")),
                                         busy_warning(end_load, machine.get("cores"))) if w),
        "speedup: baseline median / row median; pair speedup: median of the per-frame ratios baseline/row in the "
        "same loop, IQR their interquartile range; pre+post: preprocess + postprocess share of the row's "
        "end-to-end time; agree fp32: int8 labels equal to the fp32 row's on the same frames.",
        "",
        format_table(rows) if rows else "no rows could run on this machine",
    ]
    if skipped:
        lines += ["", "Skipped:", *(f"- {item['case']}: {item['reason']}" for item in skipped)]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
