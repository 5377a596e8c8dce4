"""Frame statistics of the node and their /diagnostics form."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from rtseg_ros.engines.serving import EngineState
from rtseg_ros.machine import cpu_model

__all__ = ["FrameStatistics", "StatisticsReport", "device_name", "diagnostic_status"]


@dataclass(frozen=True)
class StatisticsReport:
    """Rates and latencies over the last reporting period, and totals since start."""

    period_s: float
    input_rate_hz: float
    output_rate_hz: float
    latency_p50_ms: float  # nan when nothing was published in the period
    latency_p95_ms: float
    received: int
    published: int
    dropped: int
    bad: int
    failed: int
    bad_in_period: int
    failed_in_period: int = 0
    published_in_period: int = 0
    # Seconds since the latest frame arrived; None before the first one.
    since_last_frame_s: float | None = None
    # Of ``dropped``: the frames replaced in the middleware's queue before the node could take them
    # (the frame thread was late), as against those replaced while waiting for the engine.
    missed: int = 0


class FrameStatistics:
    """Thread-safe counters fed by the subscription callback and the inference worker.

    Latency is measured from the frame's header stamp to the publication of its outputs, so it
    includes transport, waiting and inference.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = self._published = self._dropped = self._bad = self._failed = self._missed = 0
        self._period_start = time.monotonic()
        self._period_received = self._period_published = self._period_bad = self._period_failed = 0
        self._period_latencies: list[float] = []
        self._last_frame: float | None = None

    def frame_received(self, displaced_pending: bool = False, missed: int = 0) -> None:
        """A frame arrived; ``displaced_pending`` if it replaced one still waiting (a drop); ``missed``:
        frames the camera sent before it that were replaced in the middleware's queue (drops the node never saw)."""
        with self._lock:
            self._received += 1 + missed
            self._period_received += 1 + missed
            self._last_frame = time.monotonic()
            self._dropped += int(displaced_pending) + missed
            self._missed += missed

    def frame_dropped(self) -> None:
        """A frame taken but not served (no engine ready for it yet)."""
        with self._lock:
            self._dropped += 1

    def frame_bad(self) -> None:
        """A frame could not be decoded."""
        with self._lock:
            self._bad += 1
            self._period_bad += 1

    def frame_failed(self) -> None:
        """Inference on a decoded frame raised."""
        with self._lock:
            self._failed += 1
            self._period_failed += 1

    def frame_published(self, latency_s: float) -> None:
        """A frame's outputs went out, ``latency_s`` after its stamp."""
        with self._lock:
            self._published += 1
            self._period_published += 1
            self._period_latencies.append(latency_s)

    def report(self) -> StatisticsReport:
        """Summarise the period since the previous report and start a new one."""
        now = time.monotonic()
        with self._lock:
            period = max(now - self._period_start, 1e-6)
            latencies_ms = np.asarray(self._period_latencies) * 1e3
            report = StatisticsReport(
                period_s=period,
                input_rate_hz=self._period_received / period,
                output_rate_hz=self._period_published / period,
                latency_p50_ms=float(np.percentile(latencies_ms, 50)) if latencies_ms.size else math.nan,
                latency_p95_ms=float(np.percentile(latencies_ms, 95)) if latencies_ms.size else math.nan,
                received=self._received,
                published=self._published,
                dropped=self._dropped,
                bad=self._bad,
                failed=self._failed,
                bad_in_period=self._period_bad,
                failed_in_period=self._period_failed,
                published_in_period=self._period_published,
                since_last_frame_s=None if self._last_frame is None else now - self._last_frame,
                missed=self._missed,
            )
            self._period_start = now
            self._period_received = self._period_published = self._period_bad = self._period_failed = 0
            self._period_latencies = []
        return report


def diagnostic_status(
    name: str, report: StatisticsReport, engine: dict[str, str], engine_state: str, engine_error: str,
    *, image_timeout_s: float = math.inf, hardware_id: str = "",
) -> DiagnosticStatus:
    """One DiagnosticStatus for the node.

    Level: ERROR while inference fails on every frame of the period; WARN when some frames fail, frames
    are rejected, no frame has come for ``image_timeout_s`` after the first one (the camera stopped),
    the last engine rebuild failed, or an engine is being built; else OK (also while waiting for the first frame). Values are
    strings as diagnostic_msgs requires; latency is ``nan`` in a period without output.

    Args:
        name: status name, conventionally ``<node name>: <what>``.
        report: the period's statistics.
        engine: descriptive key/values of the engine in service (model, backend, precision, ...).
        engine_state: the swapper's state.
        engine_error: reason of the last failed rebuild, if any.
        image_timeout_s: seconds without a frame, after the first, before the status warns.
        hardware_id: the device the engine runs on (:func:`device_name`); the device setting if empty.
    """
    errors, warnings = [], []
    if report.failed_in_period:
        failures = f"inference failed on {report.failed_in_period} frame(s) in the last {report.period_s:.1f} s"
        (warnings if report.published_in_period else errors).append(failures)
    if report.since_last_frame_s is not None and report.since_last_frame_s > image_timeout_s:
        warnings.append(f"no image for {report.since_last_frame_s:.1f} s (image_timeout {image_timeout_s:g} s): "
                        "has the camera stopped?")
    if report.bad_in_period:
        warnings.append(f"{report.bad_in_period} bad frame(s) in the last {report.period_s:.1f} s")
    if engine_error:
        warnings.append(f"engine rebuild failed: {engine_error}")
    if engine_state in (EngineState.BUILDING, EngineState.REBUILDING):
        # Frames are still served (by the engine in service), but a robot monitor should see that a
        # build is taking CPU or GPU time and that a new variant is not there yet.
        warnings.append(EngineState.BUILDING if engine_state == EngineState.BUILDING
                        else f"{EngineState.BUILDING} (a new engine after a parameter change)")
    if errors:
        level, message = DiagnosticStatus.ERROR, "; ".join(errors + warnings)
    elif warnings:
        level, message = DiagnosticStatus.WARN, "; ".join(warnings)
    elif report.received == 0:
        level, message = DiagnosticStatus.OK, "waiting for images"
    else:
        level, message = DiagnosticStatus.OK, f"{engine_state}, {report.output_rate_hz:.1f} Hz"
    since = report.since_last_frame_s
    values = {
        "input_rate_hz": f"{report.input_rate_hz:.2f}",
        "output_rate_hz": f"{report.output_rate_hz:.2f}",
        "latency_p50_ms": f"{report.latency_p50_ms:.1f}",
        "latency_p95_ms": f"{report.latency_p95_ms:.1f}",
        "frames_received": str(report.received),
        "frames_published": str(report.published),
        "frames_dropped": str(report.dropped),
        "frames_missed": str(report.missed),
        "frames_bad": str(report.bad),
        "frames_failed": str(report.failed),
        "since_last_frame_s": "nan" if since is None else f"{since:.1f}",
        "engine_state": engine_state,
        **engine,
    }
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id or engine.get("device", ""),
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )


@lru_cache(maxsize=None)
def device_name(device: str) -> str:
    """What ``hardware_id`` says for an engine's ``device`` setting: the GPU's name or the CPU's model.

    ``cuda``/``cuda:N`` asks torch for the GPU's name (torch is loaded in the node already); other
    devices (openvino's gpu/npu) are named by the setting. Never raises: an unknown device is named
    by its setting.
    """
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.partition(":")[2] or torch.cuda.current_device())
            return f"{torch.cuda.get_device_name(index)} ({device})"
        except Exception:  # noqa: BLE001 - a status line must not fail; the setting still names it
            return device
    if device == "cpu":
        return f"{cpu_model()} (cpu)"
    return device
