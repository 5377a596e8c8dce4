"""What a run records as it goes: ``metrics.csv``, TensorBoard scalars, a progress bar and log lines.

Only the main process records; on the others a :class:`RunLog` is built disabled and every call
does nothing, so the loop calls it the same way on every rank.
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["CSV_COLUMNS", "CSV_FILE", "TENSORBOARD_DIR", "RunLog"]

LOG = logging.getLogger(__name__)

CSV_FILE = "metrics.csv"
CSV_COLUMNS = ("kind", "iteration", "epoch", "lr", "loss", "miou", "pixel_accuracy", "seconds")
TENSORBOARD_DIR = "tensorboard"


def _tensorboard(output_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOG.info("tensorboard is not installed: logging to %s only", CSV_FILE)
        return None
    return SummaryWriter(str(output_dir / TENSORBOARD_DIR))


class RunLog:
    """The records of one training process's run (a context manager: leaving it closes the files).

    Args:
        output_dir: the run folder (created if missing).
        enabled: False on every process but the main one.
        total, iteration: the run's length and where this session starts (the bar starts there;
            the CSV file is started afresh at iteration 0 and appended to on a resume).
        iterations_per_epoch: converts iterations to the fractional epoch the records show.
        log_every: iterations per training row (the loss is averaged over them).
        tensorboard: also write TensorBoard scalars, when TensorBoard is importable.
        progress: show a tqdm bar (otherwise each training row is also a log line).
        started: ``time.monotonic()`` at the start of the session; the ``seconds`` column counts from it.
    """

    def __init__(self, output_dir: Path, *, enabled: bool, total: int, iteration: int, iterations_per_epoch: int,
                 log_every: int, tensorboard: bool, progress: bool, started: float | None = None) -> None:
        self.enabled = enabled
        self.total, self.iterations_per_epoch = total, iterations_per_epoch
        self.log_every = max(int(log_every), 1)
        self.started = time.monotonic() if started is None else started
        self._running, self._count = 0.0, 0
        self._csv_file: IO[str] | None = None
        self._writer: Any = None
        self._progress: Any = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self._writer = _tensorboard(output_dir) if tensorboard else None
        path = output_dir / CSV_FILE
        new = not path.exists() or iteration == 0
        self._csv_file = open(path, "w" if new else "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, CSV_COLUMNS)
        if new:
            self._csv.writeheader()
        if progress:
            from tqdm import tqdm

            self._progress = tqdm(total=total, initial=iteration, unit="it", dynamic_ncols=True)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def info(self, message: str, *args: Any, level: int = logging.INFO) -> None:
        """A log line (main process only)."""
        if self.enabled:
            LOG.log(level, message, *args)

    def _row(self, row: dict[str, Any]) -> None:
        assert self._csv_file is not None
        self._csv.writerow({**row, "seconds": f"{time.monotonic() - self.started:.1f}"})
        self._csv_file.flush()

    def _epoch(self, iteration: int) -> float:
        return iteration / self.iterations_per_epoch

    def train_step(self, iteration: int, loss: float, parts: dict[str, float], lr: float, miou: float) -> None:
        """After each step: advance the bar; every ``log_every`` iterations, a row of the mean loss.

        Args:
            iteration: iterations done in total.
            lr: the learning rate of the last parameter group (the decoder's).
            miou: the last validation mIoU, shown on the bar.
        """
        if not self.enabled:
            return
        self._running, self._count = self._running + loss, self._count + 1
        if self._progress is not None:
            self._progress.update(1)
            self._progress.set_postfix(loss=f"{loss:.3f}", miou=f"{miou:.3f}")
        if iteration % self.log_every:
            return
        mean = self._running / self._count
        self._row({"kind": "train", "iteration": iteration, "epoch": f"{self._epoch(iteration):.3f}",
                   "lr": f"{lr:.6g}", "loss": f"{mean:.5f}"})
        if self._writer is not None:
            self._writer.add_scalar("train/loss", mean, iteration)
            self._writer.add_scalar("train/lr", lr, iteration)
            for key, value in parts.items():
                self._writer.add_scalar(f"train/loss_{key}", value, iteration)
        if self._progress is None:
            LOG.info("iteration %d/%d: loss %.4f, lr %.3g", iteration, self.total, mean, lr)
        self._running, self._count = 0.0, 0

    def validation(self, iteration: int, miou: float, accuracy: float, *, best: bool) -> None:
        """A validation row, its scalars and a log line (``best``: the best mIoU so far)."""
        if not self.enabled:
            return
        epoch = self._epoch(iteration)
        LOG.info("validation at iteration %d (epoch %.2f): mIoU %.4f, pixel accuracy %.4f%s", iteration, epoch,
                 miou, accuracy, " (best)" if best else "")
        self._row({"kind": "val", "iteration": iteration, "epoch": f"{epoch:.3f}", "miou": f"{miou:.6f}",
                   "pixel_accuracy": f"{accuracy:.6f}"})
        if self._writer is not None:
            self._writer.add_scalar("val/miou", miou, iteration)
            self._writer.add_scalar("val/pixel_accuracy", accuracy, iteration)

    def close(self) -> None:
        """Close the bar, the CSV file and the TensorBoard writer (again: nothing happens)."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
