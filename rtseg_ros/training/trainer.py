"""The training loop: one process, or many under ``torchrun`` with DistributedDataParallel.

:class:`Trainer` turns a recipe (:mod:`rtseg_ros.training.recipe`) into a run:

* everything that can fail is checked before the first iteration: the recipe, the data (an empty
  folder, label values outside the classes), the resume file (a truncated checkpoint) and the
  initial weights;
* SGD (or AdamW) with a poly or cosine schedule, mixed precision on CUDA, DDP with SyncBatchNorm on
  CUDA and gloo on CPU (the ``torchrun`` environment variables select it);
* checkpoints are written atomically: ``last.pth`` (resume: model, optimizer, scheduler, scaler,
  position, RNG states of every rank) and ``best.pth`` / ``final.pth`` (weights only). All three
  are in the ``save_weights`` format, so ``load_weights``, the node and the evaluator read them as is;
* a resumed run continues the same schedule from the same batch, and in deterministic mode ends
  with the weights the uninterrupted run would have;
* periodic validation with the evaluator's metric (:class:`rtseg_ros.metrics.ConfusionMatrix`),
  best-checkpoint tracking, a tqdm bar, a CSV log and TensorBoard when it is importable.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rtseg_ros.datasets import get_label_set
from rtseg_ros.io.files import atomic_output
from rtseg_ros.metrics import ConfusionMatrix
from rtseg_ros.training.data import EpochSampler, build_datasets, scan_labels
from rtseg_ros.training.losses import build_loss
from rtseg_ros.training.recipe import RecipeError, validate_recipe
from rtseg_ros.training.transforms import build_train_transform

LOG = logging.getLogger(__name__)

__all__ = ["CheckpointError", "DistributedContext", "TrainResult", "Trainer", "run_training"]

RESUME_FILE = "last.pth"
BEST_FILE = "best.pth"
FINAL_FILE = "final.pth"
CSV_FILE = "metrics.csv"
CSV_COLUMNS = ("kind", "iteration", "epoch", "lr", "loss", "miou", "pixel_accuracy", "seconds")
# Recipe sections a resumed run must share with the run that wrote the checkpoint: anything that
# changes the schedule, the batches or the model.
_RESUME_MUST_MATCH = ("model", "loss", "optim", "augment")
_RESUME_TRAIN_KEYS = ("epochs", "iterations", "batch_size", "seed")


class CheckpointError(ValueError):
    """A resume checkpoint is unreadable (truncated, corrupt) or belongs to a different run."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        output_dir: the run folder (checkpoints, CSV, TensorBoard).
        final_weights: ``final.pth`` (``None`` if the run was stopped early).
        best_weights: ``best.pth`` (``None`` before any validation).
        best_miou, last_miou: validation mIoU (nan before any validation).
        iteration: iterations done, in total over the resumes.
        seconds: wall time of this process's run.
        history: the validation records (iteration, epoch, miou, pixel_accuracy).
    """

    output_dir: Path
    final_weights: Path | None
    best_weights: Path | None
    best_miou: float
    last_miou: float
    iteration: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class _TrainingForward(nn.Module):
    """``forward(images, labels) -> (loss, parts)``: the model's ``forward_train`` followed by the loss.

    DistributedDataParallel only synchronises ``forward``, and it finds the parameters that get no
    gradient (ATONet's auxiliary classifiers the loss leaves out) by walking back from what
    ``forward`` returns: so the loss, not the logits, is returned.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        outputs = self.model.forward_train(images)
        # The loss in float32, outside autocast: softmax over fp16 logits loses the small probabilities
        # OHEM ranks.
        with torch.autocast(images.device.type, enabled=False):
            return self.criterion({k: v.float() for k, v in outputs.items()}, labels)


class _ScheduleFactor:
    """Learning-rate multiplier at an iteration (a callable object so the scheduler can save it)."""

    def __init__(self, kind: str, total: int, iterations_per_epoch: int, epochs: int, power: float,
                 floor: float) -> None:
        self.kind, self.total, self.iterations_per_epoch = kind, total, iterations_per_epoch
        self.epochs, self.power, self.floor = epochs, power, floor

    def __call__(self, iteration: int) -> float:
        if self.kind == "poly":
            return max(1.0 - iteration / self.total, 0.0) ** self.power
        if self.kind == "cosine":
            # Stepped once per epoch, as torch's CosineAnnealingLR in the ATONet authors' script.
            epoch = min(iteration // self.iterations_per_epoch, self.epochs)
            return self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * epoch / self.epochs)) / 2.0
        return 1.0


def init_distributed(device_kind: str) -> DistributedContext:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables.

    NCCL on CUDA, gloo on CPU. Without those variables (or with a world of one), nothing is started.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, initialized_here=True)


def _select_device(setting: str, context: DistributedContext) -> torch.device:
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(f"train.device is {setting!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


def _atomic_copy(source: Path, target: Path) -> None:
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _init_loader_worker(worker_id: int) -> None:
    # OpenCV's own thread pool inside every loader worker oversubscribes the CPU.
    import cv2

    cv2.setNumThreads(0)


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


class Trainer:
    """Train or fine-tune one model from a recipe.

    Args:
        recipe: a loaded recipe (``load_recipe``).
        resume: a ``last.pth`` to continue from (same recipe, same number of processes).
        stop_after: stop (with a resume checkpoint) once this many iterations are done in total: the
            way to split a run into sessions, and how tests simulate an interruption.

    Raises:
        RecipeError, DatasetError, LabelRangeError, CheckpointError, WeightsError: before any training.
    """

    def __init__(self, recipe: Mapping[str, Any], *, resume: str | Path | None = None,
                 stop_after: int | None = None) -> None:
        self.recipe = copy.deepcopy(dict(recipe))
        validate_recipe(self.recipe)
        cfg = self.recipe
        train = cfg["train"]
        self.stop_after = stop_after
        wanted = train["device"]
        kind = "cuda" if (wanted == "auto" and torch.cuda.is_available()) or str(wanted).startswith("cuda") else "cpu"
        if train["deterministic"] and kind == "cuda":
            # Must be set before cuBLAS is first used.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.context = init_distributed(kind)
        self.device = _select_device(wanted, self.context)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not train["deterministic"]
        self.output_dir = Path(str(cfg["output"]["dir"]).format(name=cfg["name"])).expanduser()

        # Data first: the cheapest checks, and the ones most often wrong.
        model_cfg = cfg["model"]
        self.label_set = get_label_set(model_cfg["label_set"])
        self.num_classes = int(model_cfg["num_classes"] or self.label_set.num_classes)
        val_size = tuple(cfg["data"]["val_size"]) if cfg["data"]["val_size"] else None
        self.train_set, self.val_set = build_datasets(
            cfg["data"], self.label_set.name, build_train_transform(cfg["augment"]), val_size, int(train["seed"]))
        scan_labels(self.train_set, self.num_classes)
        scan_labels(self.val_set, self.num_classes)
        world = self.context.world_size
        if train["batch_size"] % world:
            raise RecipeError(f"train.batch_size {train['batch_size']} does not split evenly over {world} processes")
        self.batch_per_process = train["batch_size"] // world
        per_rank = -(-len(self.train_set) // world)
        self.iterations_per_epoch = per_rank // self.batch_per_process
        if self.iterations_per_epoch < 1:
            raise RecipeError(f"the training set ({len(self.train_set)} frames) is smaller than one batch "
                              f"({self.batch_per_process} per process)")
        self.total_iterations = int(train["iterations"] or train["epochs"] * self.iterations_per_epoch)
        self.epochs = -(-self.total_iterations // self.iterations_per_epoch)

        resume_state = read_resume_checkpoint(resume) if resume is not None else None
        if resume_state is not None:
            self._check_resume_compatible(resume_state, resume)

        torch.manual_seed(int(train["seed"]))
        self.model = self._build_model(resume_state is None)
        self.criterion = build_loss(model_cfg["name"], self.num_classes, cfg["loss"])
        training_module: nn.Module = _TrainingForward(self.model, self.criterion)
        if self.context.distributed:
            if self.device.type == "cuda" and train["sync_bn"]:
                training_module = nn.SyncBatchNorm.convert_sync_batchnorm(training_module)
                self.model = training_module.model
            # ATONet's unused auxiliary classifiers (1 and 2 by default) get no gradient.
            training_module = nn.parallel.DistributedDataParallel(
                training_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.training_module = training_module
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            _ScheduleFactor(cfg["optim"]["schedule"], self.total_iterations, self.iterations_per_epoch, self.epochs,
                            float(cfg["optim"]["power"]),
                            float(cfg["optim"]["min_lr"]) / group["lr"] if group["lr"] else 0.0)
            for group in self.optimizer.param_groups])
        self.amp = bool(train["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iteration = 0
        self.best_miou = float("nan")
        self.last_miou = float("nan")
        self.history: list[dict[str, float]] = []

        # Per-rank torch seed, so dropout differs across ranks; the model above is the same everywhere.
        torch.manual_seed(int(train["seed"]) + self.context.rank)
        if resume_state is not None:
            self._restore(resume_state)

    # ----------------------------------------------------------------------------------------------
    # Construction

    def _build_model(self, fresh: bool) -> nn.Module:
        from rtseg_ros.nets import build_model
        from rtseg_ros.nets.checkpoint import load_checkpoint
        from rtseg_ros.nets.encoder import load_imagenet_weights

        model_cfg, init = self.recipe["model"], self.recipe["init"]
        scales = tuple(model_cfg["scales"]) if model_cfg["name"] == "mfaranet" else (1, 2, 3, 4)
        model = build_model(model_cfg["name"], self.num_classes, scales, training_heads=True)
        if fresh and init["backbone"]:
            load_imagenet_weights(model, Path(init["backbone"]).expanduser())
        if fresh and init["weights"]:
            report = load_checkpoint(model, Path(init["weights"]).expanduser(), strict_classes=False)
            if report.reinitialized:
                self._log("fine-tuning from %s (%s classes) to %d classes: re-initialised %s",
                          init["weights"], report.checkpoint_classes, self.num_classes,
                          ", ".join(report.reinitialized))
            else:
                self._log("initialised all %d tensors from %s", len(report.loaded), init["weights"])
        if fresh and not (init["backbone"] or init["weights"]):
            self._log("training %s from random initialisation (no init.backbone / init.weights)", model_cfg["name"])
        return model.to(self.device)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.recipe["optim"]
        lr, decay = float(optim["lr"]), float(optim["weight_decay"])
        encoder, decoder = [], []
        for name, parameter in self.model.named_parameters():
            (encoder if name.startswith("encoder.") else decoder).append(parameter)
        groups = [
            {"params": encoder, "lr": lr * float(optim["backbone_lr_mult"]),
             "weight_decay": decay * float(optim["backbone_wd_mult"])},
            {"params": decoder, "lr": lr * float(optim["decoder_lr_mult"]), "weight_decay": decay},
        ]
        if optim["optimizer"] == "adamw":
            return torch.optim.AdamW(groups, lr=lr)
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim["momentum"]), nesterov=bool(optim["nesterov"]))

    def _check_resume_compatible(self, state: Mapping[str, Any], path: str | Path) -> None:
        saved = state["training"]["recipe"]
        differences = [section for section in _RESUME_MUST_MATCH if saved.get(section) != self.recipe[section]]
        differences += [f"train.{key}" for key in _RESUME_TRAIN_KEYS
                        if saved["train"].get(key) != self.recipe["train"][key]]
        if saved["data"]["dataset"] != self.recipe["data"]["dataset"]:
            differences.append("data.dataset")
        if differences:
            raise CheckpointError(f"{path} was written by a run with a different {', '.join(differences)}; "
                                  f"resume with the same recipe, or start a new run with init.weights={path}")
        if state["training"]["world_size"] != self.context.world_size:
            raise CheckpointError(f"{path} was written by {state['training']['world_size']} process(es); "
                                  f"resume with the same number (now {self.context.world_size})")

    def _restore(self, state: Mapping[str, Any]) -> None:
        training = state["training"]
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        self.iteration = int(training["iteration"])
        self.best_miou = float(training["best_miou"])
        self.last_miou = float(training["last_miou"])
        self.history = list(training["history"])
        _set_rng_state(training["rng"][self.context.rank])
        self._log("resumed at iteration %d of %d (epoch %d)", self.iteration, self.total_iterations,
                  self.iteration // self.iterations_per_epoch)

    # ----------------------------------------------------------------------------------------------
    # Running

    def _log(self, message: str, *args: Any, level: int = logging.INFO) -> None:
        if self.context.is_main:
            LOG.log(level, message, *args)

    def _train_loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.train_set.set_epoch(epoch)
        sampler = EpochSampler(len(self.train_set), seed=int(self.recipe["train"]["seed"]), rank=self.context.rank,
                               world_size=self.context.world_size, epoch=epoch,
                               start=start_batch * self.batch_per_process)
        workers = int(self.recipe["data"]["workers"])
        # A private generator: creating the loader must not consume the global RNG, or a run resumed
        # mid-epoch would draw different dropout masks from the uninterrupted one.
        generator = torch.Generator().manual_seed(int(self.recipe["train"]["seed"]) + epoch)
        return DataLoader(self.train_set, batch_size=self.batch_per_process, sampler=sampler, num_workers=workers,
                          drop_last=True, pin_memory=self.device.type == "cuda", worker_init_fn=_init_loader_worker,
                          generator=generator, persistent_workers=False)

    def _train_step(self, images: Tensor, labels: Tensor) -> tuple[float, dict[str, float]]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss, parts = self.training_module(images, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {float(loss)} at iteration {self.iteration + 1} "
                                     f"(parts {parts}); lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach()), parts

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """mIoU (over the classes present) and pixel accuracy on the validation set, merged over ranks."""
        self.model.eval()
        matrix = ConfusionMatrix(self.num_classes)
        indices = list(range(self.context.rank, len(self.val_set), self.context.world_size))
        loader = DataLoader(self.val_set, batch_size=int(self.recipe["val"]["batch_size"]), sampler=indices,
                            num_workers=min(int(self.recipe["data"]["workers"]), 2))
        unknown = 0
        for images, labels in loader:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                # The model's own final resize takes the logits to the label size.
                logits = self.model(images.to(self.device), output_size=tuple(labels.shape[-2:]))
            predictions = logits.argmax(1).to(torch.uint8).cpu().numpy()
            for prediction, truth in zip(predictions, labels.numpy()):
                unknown += matrix.update(prediction, truth)
        if self.context.distributed:
            counts = torch.from_numpy(matrix.matrix).to(self.device)
            dist.all_reduce(counts)
            matrix.matrix = counts.cpu().numpy()
        if unknown:
            self._log("validation: %d pixels with label values outside the %d classes were left out", unknown,
                      self.num_classes, level=logging.WARNING)
        self.model.train()
        return matrix.mean_iou(), matrix.pixel_accuracy()

    def _save_weights(self, path: Path, extra: Mapping[str, Any] | None = None) -> Path:
        from rtseg_ros.nets import save_weights

        return save_weights(self.model, path, model_name=self.recipe["model"]["name"],
                            label_set=self.label_set.name,
                            extra={"miou": self.last_miou, "iteration": self.iteration, **(extra or {})})

    def _save_resume(self) -> None:
        rng = _rng_state()
        states = [None] * self.context.world_size
        if self.context.distributed:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if not self.context.is_main:
            return
        training = {
            "recipe": self.recipe, "world_size": self.context.world_size, "iteration": self.iteration,
            "epoch": self.iteration // self.iterations_per_epoch, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "best_miou": self.best_miou, "last_miou": self.last_miou, "history": self.history, "rng": states,
        }
        self._save_weights(self.output_dir / RESUME_FILE, {"training": training})

    def _record_validation(self, writer: Any, csv_rows: Callable[[dict[str, Any]], None], started: float) -> None:
        miou, accuracy = self.validate()
        self.last_miou = miou
        epoch = self.iteration / self.iterations_per_epoch
        self.history.append({"iteration": self.iteration, "epoch": epoch, "miou": miou, "pixel_accuracy": accuracy})
        improved = not math.isnan(miou) and (math.isnan(self.best_miou) or miou > self.best_miou)
        if improved:
            self.best_miou = miou
        if not self.context.is_main:
            return
        self._log("validation at iteration %d (epoch %.2f): mIoU %.4f, pixel accuracy %.4f%s", self.iteration, epoch,
                  miou, accuracy, " (best)" if improved else "")
        csv_rows({"kind": "val", "iteration": self.iteration, "epoch": f"{epoch:.3f}", "miou": f"{miou:.6f}",
                  "pixel_accuracy": f"{accuracy:.6f}", "seconds": f"{time.monotonic() - started:.1f}"})
        if writer is not None:
            writer.add_scalar("val/miou", miou, self.iteration)
            writer.add_scalar("val/pixel_accuracy", accuracy, self.iteration)
        if improved:
            self._save_weights(self.output_dir / BEST_FILE)

    def fit(self) -> TrainResult:
        """Run (or continue) training to the end of the schedule, or to ``stop_after`` iterations.

        ``train.threads`` and ``train.deterministic`` are process-wide torch settings: they hold during
        the run and are put back afterwards.
        """
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        train = self.recipe["train"]
        if train["threads"]:
            torch.set_num_threads(int(train["threads"]))
        torch.use_deterministic_algorithms(bool(train["deterministic"]) or deterministic)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)

    def _fit(self) -> TrainResult:
        started = time.monotonic()
        cfg = self.recipe
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        writer = self._tensorboard() if self.context.is_main and cfg["output"]["tensorboard"] else None
        csv_file = None
        if self.context.is_main:
            csv_path = self.output_dir / CSV_FILE
            new = not csv_path.exists() or self.iteration == 0
            csv_file = open(csv_path, "w" if new else "a", newline="")
            csv_writer = csv.DictWriter(csv_file, CSV_COLUMNS)
            if new:
                csv_writer.writeheader()

        def csv_rows(row: dict[str, Any]) -> None:
            if csv_file is not None:
                csv_writer.writerow(row)
                csv_file.flush()

        progress = None
        if self.context.is_main and cfg["output"]["progress"]:
            from tqdm import tqdm

            progress = tqdm(total=self.total_iterations, initial=self.iteration, unit="it", dynamic_ncols=True)
        if cfg["data"]["dataset"] == "synthetic":
            self._log("training on synthetic scenes: the result is a toy model for the plumbing (demo, tests), "
                      "not a model of real streets", level=logging.WARNING)
        self._log("%s: %d iterations (%d epochs of %d), batch %d x %d process(es), device %s", cfg["name"],
                  self.total_iterations, self.epochs, self.iterations_per_epoch, self.batch_per_process,
                  self.context.world_size, self.device)
        log_every = max(int(cfg["output"]["log_every"]), 1)
        val_every_it = cfg["val"]["every_iterations"]
        val_every_epochs = int(cfg["val"]["every_epochs"] or 0)
        ckpt_every = cfg["checkpoint"]["every_iterations"]
        end = min(self.total_iterations, self.stop_after) if self.stop_after else self.total_iterations
        self.model.train()
        try:
            running, count = 0.0, 0
            while self.iteration < end:
                epoch, position = divmod(self.iteration, self.iterations_per_epoch)
                for images, labels in self._train_loader(epoch, position):
                    loss, parts = self._train_step(images, labels)
                    self.iteration += 1
                    running, count = running + loss, count + 1
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{loss:.3f}", miou=f"{self.last_miou:.3f}")
                    if self.iteration % log_every == 0 and self.context.is_main:
                        lr = self.optimizer.param_groups[-1]["lr"]
                        csv_rows({"kind": "train", "iteration": self.iteration,
                                  "epoch": f"{self.iteration / self.iterations_per_epoch:.3f}", "lr": f"{lr:.6g}",
                                  "loss": f"{running / count:.5f}", "seconds": f"{time.monotonic() - started:.1f}"})
                        if writer is not None:
                            writer.add_scalar("train/loss", running / count, self.iteration)
                            writer.add_scalar("train/lr", lr, self.iteration)
                            for key, value in parts.items():
                                writer.add_scalar(f"train/loss_{key}", value, self.iteration)
                        if progress is None:
                            self._log("iteration %d/%d: loss %.4f, lr %.3g", self.iteration, self.total_iterations,
                                      running / count, lr)
                        running, count = 0.0, 0
                    epoch_done = self.iteration % self.iterations_per_epoch == 0
                    if val_every_it and self.iteration % int(val_every_it) == 0:
                        self._record_validation(writer, csv_rows, started)
                    elif epoch_done and val_every_epochs and (self.iteration // self.iterations_per_epoch) % val_every_epochs == 0:
                        self._record_validation(writer, csv_rows, started)
                    if (epoch_done or self.iteration == end
                            or (ckpt_every and self.iteration % int(ckpt_every) == 0)):
                        self._save_resume()
                    if self.iteration >= end or epoch_done:
                        break
            finished = self.iteration >= self.total_iterations
            final = None
            if finished:
                if not self.history or self.history[-1]["iteration"] != self.iteration:
                    self._record_validation(writer, csv_rows, started)
                if self.context.is_main:
                    final = self._save_weights(self.output_dir / FINAL_FILE)
                    target = cfg["output"]["weights"]
                    if target:
                        target_path = Path(str(target)).expanduser()
                        _atomic_copy(final, target_path)
                        self._log("final weights copied to %s", target_path)
                    self._log("done: %d iterations, best mIoU %.4f, last %.4f, weights %s", self.iteration,
                              self.best_miou, self.last_miou, final)
            else:
                self._log("stopped at iteration %d of %d; continue with --resume %s", self.iteration,
                          self.total_iterations, self.output_dir / RESUME_FILE)
        except KeyboardInterrupt:
            self._log("interrupted at iteration %d; saving %s", self.iteration, self.output_dir / RESUME_FILE,
                      level=logging.WARNING)
            self._save_resume()
            raise
        finally:
            if progress is not None:
                progress.close()
            if csv_file is not None:
                csv_file.close()
            if writer is not None:
                writer.close()
        best = self.output_dir / BEST_FILE
        return TrainResult(self.output_dir, final, best if best.exists() else None, self.best_miou, self.last_miou,
                           self.iteration, time.monotonic() - started, list(self.history))

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._log("tensorboard is not installed: logging to %s only", CSV_FILE)
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def close(self) -> None:
        """Leave the process group if this trainer started it."""
        if self.context.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def run_training(recipe: Mapping[str, Any], *, resume: str | Path | None = None,
                 stop_after: int | None = None) -> TrainResult:
    """Build a :class:`Trainer`, run it, and leave the process group afterwards."""
    trainer = Trainer(recipe, resume=resume, stop_after=stop_after)
    try:
        return trainer.fit()
    finally:
        trainer.close()
