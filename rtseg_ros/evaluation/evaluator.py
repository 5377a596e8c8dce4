"""The evaluator: segment frames, score them against ground truth, report as it goes.

:class:`Evaluation` accumulates scores and latencies in fixed-size state (a confusion matrix and
compact latency arrays), whatever produced the predictions: the in-process Segmenter here, or a
running node in live mode. It also owns the run's tallies: the frames read and every frame
skipped, whoever skipped it (the bag reader and the data set sources record into
``Evaluation.skipped``), so the report's counts come from one place. :class:`ReportWriter` keeps the results on disk while the run goes:
one JSON line per frame, appended and flushed, and the summary JSON replaced atomically every
few seconds, so a run that breaks off still leaves its results so far (``"complete": false``).
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from rtseg_ros import __version__
from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.evaluation.export import PredictionExporter
from rtseg_ros.evaluation.reports import (
    REPORT_SCHEMA,
    REPORT_SCHEMA_VERSION,
    append_json_line,
    markdown_summary,
    report_paths,
    write_confusion_heatmap,
    write_json_atomic,
    write_overlay,
)
from rtseg_ros.metrics.confusion import ConfusionMatrix
from rtseg_ros.skips import (
    ISSUE_UNKNOWN_LABEL,
    SKIP_BAD_PREDICTION,
    SKIP_INFERENCE_ERROR,
    SKIP_MISSING_GT,
    SKIP_SIZE_MISMATCH,
    SkipTally,
)

if TYPE_CHECKING:
    from rtseg_ros.distributed import DistributedContext

LOG = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One frame's predicted train ids and how long they took."""

    labels: np.ndarray
    latency_ms: float | None
    stages_ms: dict[str, float] = field(default_factory=dict)


Predictor = Callable[[np.ndarray, str], Prediction]


class FrameSource(Protocol):
    """What :func:`run_evaluation` reads: frames, how many there are, and what they are.

    Attributes:
        total: the frame count if known (for progress bars), else ``None``.
        description: says where the frames come from, for the report.

    A source may also have a ``damage`` attribute (:class:`~rtseg_ros.io.bags.BagDamage` or
    ``None``), read once its frames are out: what a damaged bag gave up, reported as ``source.damage``.
    """

    total: int | None
    description: str

    def frames(self, skipped: SkipTally) -> Iterator[Any]:
        """Yield the frames (:class:`~rtseg_ros.evaluation.sources.EvalFrame`) one at a time,
        recording in ``skipped`` each one that cannot be read."""
        ...


class SegmenterPredictor:
    """Adapts ``rtseg_ros.engines.Segmenter`` to a :data:`Predictor`."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def __call__(self, image: np.ndarray, color_order: str) -> Prediction:
        result = self.segmenter.segment(image, color_order=color_order)
        stages = {k: float(v) for k, v in result.timings_ms.items()}
        return Prediction(result.labels, stages.get("total"), stages)


def _percentiles(values: array) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p95": None, "mean": None, "max": None, "count": 0}
    data = np.frombuffer(values, dtype=np.float64)
    p50, p95 = np.percentile(data, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "mean": float(data.mean()), "max": float(data.max()),
            "count": int(data.size)}


class Evaluation:
    """Scores, latencies and tallies of one run, in memory that does not grow with the frame count
    (apart from 8 bytes per latency sample, which exact percentiles need).

    Attributes:
        frames: frames scored.
        frames_read: frames that reached the predictor (offline) or the node (live).
        skipped: every frame not scored, by reason: unreadable input (pass it to the bag reader or
            a source as the tally to record into), failed inference, missing ground truth, drops.
        issues: problems that did not stop a frame being scored (``skip=False`` in :meth:`note`).
    """

    def __init__(self, label_set: LabelSet) -> None:
        self.label_set = label_set
        self.confusion = ConfusionMatrix(label_set.num_classes, label_set.ignore_index)
        self.frames = 0
        self.frames_read = 0
        self.skipped = SkipTally()
        self.issues = SkipTally()
        self.unknown_label_pixels = 0
        self._latency = array("d")
        self._stages: dict[str, array] = {}

    def note(self, reason: str, detail: str, *, skip: bool = True) -> None:
        """Count a skipped frame (``skip``) or a problem that did not stop the frame being scored."""
        (self.skipped if skip else self.issues).record(reason, detail)

    def add_latency(self, latency_ms: float | None, stages_ms: dict[str, float] | None = None) -> None:
        """Record one frame's end-to-end latency and, optionally, its per-stage times."""
        if latency_ms is not None and math.isfinite(latency_ms):
            self._latency.append(latency_ms)
        for stage, ms in (stages_ms or {}).items():
            if stage != "total":
                self._stages.setdefault(stage, array("d")).append(ms)

    def score(self, name: str, prediction: np.ndarray, labels: np.ndarray | None) -> str | None:
        """Add one frame to the confusion matrix.

        Returns:
            ``None`` if the frame was scored, else the reason it was skipped (also counted).
        """
        if labels is None:
            self.note(SKIP_MISSING_GT, name)
            return SKIP_MISSING_GT
        if prediction.shape != labels.shape:
            self.note(SKIP_SIZE_MISMATCH, f"{name}: prediction {prediction.shape[1]}x{prediction.shape[0]}, "
                                          f"ground truth {labels.shape[1]}x{labels.shape[0]}")
            return SKIP_SIZE_MISMATCH
        try:
            unknown = self.confusion.update(prediction, labels)
        except ValueError as exc:
            self.note(SKIP_BAD_PREDICTION, f"{name}: {exc}")
            return SKIP_BAD_PREDICTION
        if unknown:
            self.unknown_label_pixels += unknown
            self.note(ISSUE_UNKNOWN_LABEL, f"{name}: {unknown} ground-truth pixels hold values that are neither "
                                           f"a class nor {self.label_set.ignore_index}; they are not scored",
                      skip=False)
        self.frames += 1
        return None

    def merge(self, other: "Evaluation") -> None:
        """Add another evaluation's scores, latencies and tallies (another process's share of the frames).

        Raises:
            ValueError: the two score different numbers of classes.
        """
        self.confusion.merge(other.confusion)
        self.frames += other.frames
        self.frames_read += other.frames_read
        self.unknown_label_pixels += other.unknown_label_pixels
        self.skipped = SkipTally.merged(self.skipped, other.skipped)
        self.issues = SkipTally.merged(self.issues, other.issues)
        self._latency.extend(other._latency)
        for stage, values in other._stages.items():
            self._stages.setdefault(stage, array("d")).extend(values)

    def metrics(self) -> dict[str, Any]:
        """The accuracy and latency part of the report."""
        iou = self.confusion.iou()
        return {
            "frames": self.frames,
            "frames_read": self.frames_read,
            "skipped": dict(self.skipped.counts),
            "issues": dict(self.issues.counts),
            "unknown_label_pixels": self.unknown_label_pixels,
            "miou": self.confusion.mean_iou(),
            "pixel_accuracy": self.confusion.pixel_accuracy(),
            "per_class_iou": {name: float(v) for name, v in zip(self.label_set.class_names, iou)},
            "confusion_matrix": self.confusion.matrix,
            "latency_ms": _percentiles(self._latency),
            "stage_latency_ms": {stage: _percentiles(v) for stage, v in self._stages.items()},
            "errors": SkipTally.merged(self.skipped, self.issues).messages,
        }


class ReportWriter:
    """Keeps a run's results on disk while it goes, and writes the final set of files.

    Args:
        json_path: the summary JSON; the per-frame log, Markdown, heatmap and overlays go next to it
            (see :func:`rtseg_ros.evaluation.reports.report_paths`).
        header: fixed report fields (mode, source, model settings).
        overlays: how many frames with ground truth to save as overlay pictures.
        interval_s: how often the summary JSON is refreshed during the run.
    """

    def __init__(self, json_path: str | Path, header: dict[str, Any], overlays: int = 4,
                 interval_s: float = 2.0) -> None:
        self.paths = report_paths(json_path)
        self.header = header
        self.overlays_left = overlays
        self.interval_s = interval_s
        self._last_write = 0.0
        self.paths["json"].parent.mkdir(parents=True, exist_ok=True)
        self._frames = open(self.paths["frames"], "w")

    def report(self, evaluation: Evaluation, complete: bool,
               run_fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """The full report as a dict (what the JSON holds); see :func:`build_report`."""
        return build_report(evaluation, self.header, complete, run_fields)

    def frame(self, record: dict[str, Any]) -> None:
        """Append one frame's record to the per-frame log."""
        append_json_line(self._frames, record)

    def replace_frames(self, records: Iterable[dict[str, Any]]) -> None:
        """Rewrite the per-frame log with ``records`` (all processes' records of a distributed run)."""
        self._frames.close()
        self._frames = open(self.paths["frames"], "w")
        for record in records:
            append_json_line(self._frames, record)

    def overlay(self, name: str, image: np.ndarray, prediction: np.ndarray, labels: np.ndarray | None,
                label_set: LabelSet, color_order: str = "rgb") -> None:
        """Save an overlay picture for the first few frames that have ground truth."""
        if self.overlays_left <= 0 or labels is None or prediction.shape != labels.shape:
            return
        self.overlays_left -= 1
        # Converted only here: once the few overlays are written, frames pass without a copy.
        image_rgb = np.ascontiguousarray(image if color_order == "rgb" else image[..., ::-1])
        file_name = Path(name).with_suffix(".jpg").name
        try:
            write_overlay(self.paths["overlays"] / file_name, image_rgb, prediction, labels, label_set)
        except (OSError, ValueError) as exc:
            LOG.warning("cannot write overlay for %s: %s", name, exc)

    def checkpoint(self, evaluation: Evaluation, run_fields: dict[str, Any] | None = None,
                   force: bool = False) -> None:
        """Refresh the summary JSON (marked incomplete) if ``interval_s`` has passed."""
        now = time.monotonic()
        if force or now - self._last_write >= self.interval_s:
            write_json_atomic(self.paths["json"], self.report(evaluation, False, run_fields))
            self._last_write = now

    def finish(self, evaluation: Evaluation, complete: bool,
               run_fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the final JSON, the Markdown summary and the heatmap; return the report."""
        self._frames.close()
        report = self.report(evaluation, complete, run_fields)
        write_json_atomic(self.paths["json"], report)
        self.paths["markdown"].write_text(markdown_summary(report))
        model_name = self.header.get("model", {}).get("name", "")
        title = f"{model_name} mIoU {report['miou'] * 100:.1f}%" if evaluation.frames else "no frame scored"
        try:
            write_confusion_heatmap(self.paths["heatmap"], evaluation.confusion.normalized(),
                                    evaluation.label_set.class_names, title=title)
        except (OSError, ValueError, ImportError) as exc:
            LOG.warning("cannot draw the confusion heatmap: %s", exc)
        return report


def build_report(evaluation: Evaluation, header: dict[str, Any], complete: bool,
                 run_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a report: schema, fixed header, label set, the evaluation's metrics and tallies, then
    the fields only the run knows (its source, timing, exports, the ``live`` section).

    Raises:
        ValueError: ``run_fields`` names a field of :meth:`Evaluation.metrics`; counts such as
            ``skipped`` and ``frames_read`` are kept by the :class:`Evaluation` alone.
    """
    metrics = evaluation.metrics()
    run_fields = run_fields or {}
    clash = sorted(set(run_fields) & set(metrics))
    if clash:
        raise ValueError(f"{', '.join(clash)} come from the Evaluation; record them there, not as run fields")
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "complete": complete,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rtseg_ros_version": __version__,
        **header,
        "label_set": evaluation.label_set.name,
        "class_names": list(evaluation.label_set.class_names),
        **metrics,
        **run_fields,
    }


def run_evaluation(source: FrameSource, predict: Predictor, label_set: LabelSet, *,
                   header: dict[str, Any] | None = None, json_path: str | Path | None = None,
                   export_dir: str | Path | None = None, overlays: int = 4, max_frames: int | None = None,
                   progress: bool = True, distributed: DistributedContext | None = None) -> dict[str, Any]:
    """Segment every frame of ``source`` with ``predict`` and score it.

    Bad frames are skipped and counted (``skipped``: reason -> count), the run goes on. With
    ``json_path``, results are kept on disk during the run (see :class:`ReportWriter`); if the run
    is interrupted, the files written hold the results so far, marked ``"complete": false``.

    With ``distributed`` (one of several processes, e.g. under ``torchrun``), this process scores its
    share of the frames (:class:`~rtseg_ros.evaluation.sharding.ShardedSource`); at the end the
    confusion matrix is all-reduced and the tallies and latencies gathered, so every process returns
    the report of all frames, the same numbers as one process. Only rank 0 writes the report files
    and overlays (its summary JSON during the run holds its own share, ``distributed.merged`` false);
    each process exports the predictions of its own frames.

    Returns:
        The report (the JSON's content as a dict; NaN where the JSON has ``null``).
    """
    from tqdm import tqdm

    sharded = distributed is not None and distributed.distributed
    if sharded:
        from rtseg_ros.evaluation.sharding import ShardedSource, combine_shards

        source = ShardedSource(source, distributed, max_frames)
        max_frames = None  # applied to the whole stream by the sharded source
    main = not sharded or distributed.is_main
    evaluation = Evaluation(label_set)
    writer = ReportWriter(json_path, header or {}, overlays) if json_path and main else None
    exporter = PredictionExporter(export_dir, label_set) if export_dir else None
    total = source.total if max_frames is None else min(source.total or max_frames, max_frames)
    started = time.perf_counter()
    predicted = 0
    complete = False
    # A distributed run's per-frame records, merged into rank 0's log at the end.
    records: list[dict[str, Any]] | None = [] if sharded else None
    shares: dict[str, Any] | None = None

    def run_fields() -> dict[str, Any]:
        elapsed = time.perf_counter() - started
        frames_predicted, exported = predicted, exporter.written if exporter else 0
        damage = getattr(source, "damage", None)
        fields: dict[str, Any] = {}
        if sharded:
            if shares is not None:
                elapsed, frames_predicted, exported = shares["elapsed_s"], shares["predicted"], shares["exported"]
            fields["distributed"] = {"world_size": distributed.world_size, "backend": distributed.backend,
                                     "merged": shares is not None}
        return {
            "source": {"description": source.description, **(header or {}).get("source", {}),
                       **({"damage": damage.as_dict()} if damage is not None else {})},
            "elapsed_s": elapsed,
            "throughput_fps": frames_predicted / elapsed if frames_predicted and elapsed > 0 else None,
            "exported": exported,
            **fields,
        }

    def log_frame(record: dict[str, Any]) -> None:
        if records is not None:
            records.append(record)
        if writer is not None:
            writer.frame(record)

    try:
        bar = tqdm(total=total, desc="eval", unit="frame", disable=not (progress and main), dynamic_ncols=True)
        for frame in source.frames(evaluation.skipped):
            if max_frames is not None and evaluation.frames_read >= max_frames:
                break
            evaluation.frames_read += 1
            bar.update(1)
            try:
                prediction = predict(frame.image, frame.color_order)
            except (ValueError, RuntimeError) as exc:
                evaluation.note(SKIP_INFERENCE_ERROR, f"{frame.name}: {exc}")
                skip = SKIP_INFERENCE_ERROR
                record = {"name": frame.name, "stamp_ns": frame.stamp_ns, "skipped": skip}
            else:
                predicted += 1
                evaluation.add_latency(prediction.latency_ms, prediction.stages_ms)
                if exporter is not None:
                    exporter.write(frame.name, prediction.labels)
                skip = evaluation.score(frame.name, prediction.labels, frame.labels)
                record = {"name": frame.name, "stamp_ns": frame.stamp_ns, "latency_ms": prediction.latency_ms,
                          "skipped": skip}
                if skip is None and frame.labels is not None:
                    valid = frame.labels != label_set.ignore_index
                    correct = np.count_nonzero((prediction.labels == frame.labels) & valid)
                    record["pixel_accuracy"] = correct / max(int(np.count_nonzero(valid)), 1)
                if writer is not None:
                    writer.overlay(frame.name, frame.image, prediction.labels, frame.labels, label_set,
                                   frame.color_order)
            log_frame(record)
            if writer is not None:
                writer.checkpoint(evaluation, run_fields())
            if bar.n % 10 == 0:
                bar.set_postfix(miou=f"{evaluation.confusion.mean_iou() * 100:.1f}", refresh=False)
        bar.close()
        if sharded:
            own = {"elapsed_s": time.perf_counter() - started, "predicted": predicted,
                   "exported": exporter.written if exporter else 0, "records": records}
            evaluation, shares = combine_shards(evaluation, own, distributed)
            if writer is not None:
                writer.replace_frames(shares["records"])
        complete = True
    finally:
        # On an interruption the files still get the results so far, marked incomplete (in a
        # distributed run, rank 0's own share: the other processes cannot be reached any more).
        final = run_fields()
        report = (writer.finish(evaluation, complete, final) if writer is not None
                  else build_report(evaluation, header or {}, complete, final))
    return report
