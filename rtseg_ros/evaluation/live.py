"""Live evaluation bookkeeping, without ROS: match a node's outputs to the frames sent to it.

The player (``rtseg_ros.ros.live_evaluation``) publishes each frame with a fresh header stamp and
tells :class:`LiveScorer`; when the node's label image with that stamp comes back, it is scored
against the frame's ground truth and its end-to-end latency (publish to receive) recorded. A
frame whose output has not come back within ``max_wait_s`` counts as dropped, which bounds the
ground truth held in memory to the frames in flight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rtseg_ros.evaluation.evaluator import Evaluation, ReportWriter
from rtseg_ros.skips import SKIP_DROPPED


@dataclass
class _InFlight:
    name: str
    labels: np.ndarray | None
    published_s: float
    image_rgb: np.ndarray | None = None


class LiveScorer:
    """Pairs published frames with received outputs by header stamp.

    Args:
        evaluation: where matched frames are scored.
        writer: optional per-frame log and periodic summary.
        max_wait_s: how long an output may take before its frame counts as dropped.
    """

    def __init__(self, evaluation: Evaluation, writer: ReportWriter | None = None, max_wait_s: float = 5.0) -> None:
        self.evaluation = evaluation
        self.writer = writer
        self.max_wait_s = max_wait_s
        self.published = 0
        self.matched = 0
        self.dropped = 0
        self.late_or_unknown = 0
        self.first_published_s: float | None = None
        self.last_published_s: float | None = None
        self.first_received_s: float | None = None
        self.last_received_s: float | None = None
        self._in_flight: dict[int, _InFlight] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def wants_overlay(self) -> bool:
        """Whether the next frame's image should be kept for an overlay picture."""
        kept = sum(f.image_rgb is not None for f in self._in_flight.values())
        return self.writer is not None and self.writer.overlays_left > kept

    def on_published(self, stamp_ns: int, name: str, labels: np.ndarray | None, now_s: float,
                     image_rgb: np.ndarray | None = None) -> None:
        """Note a frame sent to the node. ``labels`` (and ``image_rgb``, for an overlay picture) are
        kept until its output arrives or it expires."""
        if stamp_ns in self._in_flight:
            raise ValueError(f"stamp {stamp_ns} published twice; live matching needs unique stamps")
        self._in_flight[stamp_ns] = _InFlight(name, labels, now_s, image_rgb)
        self.published += 1
        self.evaluation.frames_read += 1
        if self.first_published_s is None:
            self.first_published_s = now_s
        self.last_published_s = now_s

    def on_received(self, stamp_ns: int, prediction: np.ndarray, now_s: float) -> bool:
        """Score an output of the node; returns ``False`` when no frame in flight has its stamp."""
        frame = self._in_flight.pop(stamp_ns, None)
        if frame is None:
            self.late_or_unknown += 1
            return False
        self.matched += 1
        if self.first_received_s is None:
            self.first_received_s = now_s
        self.last_received_s = now_s
        latency_ms = (now_s - frame.published_s) * 1000.0
        self.evaluation.add_latency(latency_ms)
        skip = self.evaluation.score(frame.name, prediction, frame.labels)
        if self.writer is not None:
            self.writer.frame({"name": frame.name, "stamp_ns": stamp_ns, "latency_ms": latency_ms, "skipped": skip})
            if frame.image_rgb is not None:
                self.writer.overlay(frame.name, frame.image_rgb, prediction, frame.labels, self.evaluation.label_set)
        return True

    def expire(self, now_s: float, everything: bool = False) -> int:
        """Count frames whose output is overdue (or all in flight) as dropped; returns how many."""
        overdue = [s for s, f in self._in_flight.items() if everything or now_s - f.published_s > self.max_wait_s]
        for stamp in overdue:
            frame = self._in_flight.pop(stamp)
            self.dropped += 1
            self.evaluation.note(SKIP_DROPPED, f"{frame.name}: no output within {self.max_wait_s:.1f} s")
            if self.writer is not None:
                self.writer.frame({"name": frame.name, "stamp_ns": stamp, "skipped": SKIP_DROPPED})
        return len(overdue)

    def summary(self, rate_factor: float) -> dict[str, Any]:
        """The ``live`` section of the report."""
        def rate(count: int, start: float | None, end: float | None) -> float | None:
            if count < 2 or start is None or end is None or end <= start:
                return None
            return (count - 1) / (end - start)

        return {
            "rate_factor": rate_factor,
            "published": self.published,
            "received": self.matched,
            "dropped": self.dropped,
            "in_flight": len(self._in_flight),
            "unmatched_outputs": self.late_or_unknown,
            "drop_rate": self.dropped / self.published if self.published else None,
            "input_fps": rate(self.published, self.first_published_s, self.last_published_s),
            "output_fps": rate(self.matched, self.first_received_s, self.last_received_s),
        }
