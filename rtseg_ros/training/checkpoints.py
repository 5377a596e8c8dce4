"""The files a run writes, and resuming from them.

A run folder holds ``best.pth`` (best validation mIoU), ``final.pth`` (end of the schedule) and
``last.pth`` (resume). All three are in the ``save_weights`` format, so ``load_weights``, the node
and the evaluator read them as they are; ``last.pth`` adds a ``training`` entry: the recipe, the
number of processes, the position, the optimizer, scheduler and scaler states, the validation
history and the RNG states of every rank. Everything in it is tensors and plain values, so it is
read back through ``nets.checkpoint``'s ``weights_only`` loader like any weights file.
"""
from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from rtseg_ros.io.files import atomic_output

__all__ = [
    "BEST_FILE",
    "FINAL_FILE",
    "RESUME_FILE",
    "CheckpointError",
    "Progress",
    "check_resume_compatible",
    "copy_weights",
    "read_resume_checkpoint",
    "restore_resume",
    "restore_rng_state",
    "resume_state",
    "rng_state",
    "write_weights",
]

RESUME_FILE = "last.pth"
BEST_FILE = "best.pth"
FINAL_FILE = "final.pth"
# Recipe sections a resumed run must share with the run that wrote the checkpoint: anything that
# changes the schedule, the batches or the model.
_RESUME_MUST_MATCH = ("model", "loss", "optim", "augment")
_RESUME_TRAIN_KEYS = ("epochs", "iterations", "batch_size", "seed")


class CheckpointError(ValueError):
    """A resume checkpoint is unreadable (truncated, corrupt) or belongs to a different run."""


@dataclass
class Progress:
    """How far a run is: what a resume checkpoint carries besides the model and optimizer states.

    Attributes:
        iteration: iterations done, in total over the resumes.
        best_miou, last_miou: validation mIoU (nan before any validation).
        history: the validation records (iteration, epoch, miou, pixel_accuracy).
    """

    iteration: int = 0
    best_miou: float = float("nan")
    last_miou: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)

    def record_validation(self, epoch: float, miou: float, accuracy: float) -> bool:
        """Add a validation at the current iteration; True when it is the best so far."""
        self.last_miou = miou
        self.history.append({"iteration": self.iteration, "epoch": epoch, "miou": miou, "pixel_accuracy": accuracy})
        improved = not math.isnan(miou) and (math.isnan(self.best_miou) or miou > self.best_miou)
        if improved:
            self.best_miou = miou
        return improved

    @property
    def validated_here(self) -> bool:
        """The last validation was at the current iteration."""
        return bool(self.history) and self.history[-1]["iteration"] == self.iteration


def write_weights(model: nn.Module, path: Path, *, model_name: str, label_set: str, progress: Progress,
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` in the ``save_weights`` format, with the run's last mIoU and iteration."""
    from rtseg_ros.nets import save_weights

    return save_weights(model, path, model_name=model_name, label_set=label_set,
                        extra={"miou": progress.last_miou, "iteration": progress.iteration, **(extra or {})})


def copy_weights(source: Path, target: Path) -> None:
    """Copy a weights file atomically (a reader never sees half a file)."""
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (readable with ``weights_only=True``)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state(*, recipe: Mapping[str, Any], world_size: int, progress: Progress, iterations_per_epoch: int,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``training`` entry of ``last.pth``.

    Args:
        rng: every rank's :func:`rng_state`, in rank order.
    """
    return {
        "recipe": recipe, "world_size": world_size, "iteration": progress.iteration,
        "epoch": progress.iteration // iterations_per_epoch, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "best_miou": progress.best_miou, "last_miou": progress.last_miou, "history": progress.history, "rng": rng,
    }


def read_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``last.pth`` resume file.

    Raises:
        CheckpointError: missing, truncated/corrupt, or not a resume file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint not found: {path}")
    from rtseg_ros.nets.checkpoint import WeightsError, load_checkpoint_file

    try:
        state = load_checkpoint_file(path)
    except WeightsError as error:
        raise CheckpointError(f"cannot read resume checkpoint: {error}") from error
    if not isinstance(state, dict) or "training" not in state:
        raise CheckpointError(f"{path} is a weights file, not a resume checkpoint (no training state); "
                              f"to start from its weights use init.weights instead")
    return state


def check_resume_compatible(state: Mapping[str, Any], recipe: Mapping[str, Any], world_size: int,
                            path: str | Path) -> None:
    """Refuse a resume file written by a different recipe or number of processes.

    Raises:
        CheckpointError: naming the recipe sections (or keys) that differ.
    """
    saved = state["training"]["recipe"]
    differences = [section for section in _RESUME_MUST_MATCH if saved.get(section) != recipe[section]]
    differences += [f"train.{key}" for key in _RESUME_TRAIN_KEYS if saved["train"].get(key) != recipe["train"][key]]
    if saved["data"]["dataset"] != recipe["data"]["dataset"]:
        differences.append("data.dataset")
    if differences:
        raise CheckpointError(f"{path} was written by a run with a different {', '.join(differences)}; "
                              f"resume with the same recipe, or start a new run with init.weights={path}")
    if state["training"]["world_size"] != world_size:
        raise CheckpointError(f"{path} was written by {state['training']['world_size']} process(es); "
                              f"resume with the same number (now {world_size})")


def restore_resume(state: Mapping[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                   rank: int) -> Progress:
    """Load a resume file's states into the run's objects and this rank's RNGs; return its progress."""
    training = state["training"]
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    scaler.load_state_dict(training["scaler"])
    progress = Progress(int(training["iteration"]), float(training["best_miou"]), float(training["last_miou"]),
                        list(training["history"]))
    restore_rng_state(training["rng"][rank])
    return progress
