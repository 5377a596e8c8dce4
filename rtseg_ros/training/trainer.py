"""A training run: a recipe turned into the objects of :mod:`~rtseg_ros.training.loop` and driven to the end.

:class:`Trainer` puts the parts together, the way torchvision's ``references/segmentation`` does:

* everything that can fail is checked before the first iteration: the recipe, the data (an empty
  folder, label values outside the classes), the resume file (a truncated checkpoint) and the
  initial weights;
* :mod:`~rtseg_ros.training.distributed`: one process, or DDP under ``torchrun`` (SyncBatchNorm and
  NCCL on CUDA, gloo on CPU); :mod:`~rtseg_ros.training.optim`: SGD or AdamW with a poly or cosine
  schedule; mixed precision on CUDA;
* :mod:`~rtseg_ros.training.loop`: ``train_one_epoch`` and ``evaluate`` (the evaluator's metric);
* :mod:`~rtseg_ros.training.checkpoints`: ``last.pth`` (resume), ``best.pth`` and ``final.pth``, all
  in the ``save_weights`` format. A resumed run continues the same schedule from the same batch, and
  in deterministic mode ends with the weights the uninterrupted run would have;
* :mod:`~rtseg_ros.training.metrics_log`: the CSV log, TensorBoard and the progress bar.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from rtseg_ros.datasets import get_label_set
from rtseg_ros.names import ALL_SCALES
from rtseg_ros.training.checkpoints import (
    BEST_FILE,
    FINAL_FILE,
    RESUME_FILE,
    Progress,
    check_resume_compatible,
    copy_weights,
    read_resume_checkpoint,
    restore_resume,
    resume_state,
    rng_state,
    write_weights,
)
from rtseg_ros.training.data import build_datasets, scan_labels, train_loader, val_loader
from rtseg_ros.training.distributed import (
    close_distributed,
    data_parallel,
    device_kind,
    gather_objects,
    init_distributed,
    select_device,
)
from rtseg_ros.training.loop import TrainingForward, evaluate, train_one_epoch
from rtseg_ros.training.losses import build_loss
from rtseg_ros.training.metrics_log import RunLog
from rtseg_ros.training.optim import build_optimizer, build_scheduler
from rtseg_ros.nets.checkpoint import write_half_copy
from rtseg_ros.training.recipe import RecipeError, validate_recipe
from rtseg_ros.training.transforms import build_train_transform
from rtseg_ros.user_cache import expand_path

LOG = logging.getLogger(__name__)

__all__ = ["TrainResult", "Trainer", "run_training"]


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
        self.stop_after = stop_after
        self._join_run()
        self.output_dir = self._recipe_path(self.recipe["output"]["dir"])
        # Data first: the cheapest checks, and the ones most often wrong.
        self._prepare_data()
        resume_state = read_resume_checkpoint(resume) if resume is not None else None
        if resume_state is not None:
            check_resume_compatible(resume_state, self.recipe, self.context.world_size, resume)
        self._build_training(fresh=resume_state is None)
        self.progress = Progress()
        # Per-rank torch seed, so dropout differs across ranks; the model above is the same everywhere.
        torch.manual_seed(int(self.recipe["train"]["seed"]) + self.context.rank)
        if resume_state is not None:
            self.progress = restore_resume(resume_state, model=self.model, optimizer=self.optimizer,
                                           scheduler=self.scheduler, scaler=self.scaler, rank=self.context.rank)
            self._log("resumed at iteration %d of %d (epoch %d)", self.progress.iteration, self.total_iterations,
                      self.progress.iteration // self.iterations_per_epoch)

    # ----------------------------------------------------------------------------------------------
    # Construction

    def _recipe_path(self, text: str) -> Path:
        """A path of the recipe: ``{cache}`` the user cache, ``{name}`` the recipe's name, ``~`` home."""
        return expand_path(text, name=self.recipe["name"])

    def _join_run(self) -> None:
        """The process group (under torchrun) and this process's device."""
        train = self.recipe["train"]
        kind = device_kind(train["device"])
        if train["deterministic"] and kind == "cuda":
            # Must be set before cuBLAS is first used.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.context = init_distributed(kind)
        self.device = select_device(train["device"], self.context)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not train["deterministic"]

    def _prepare_data(self) -> None:
        """The data sets, their label check, and the run's length in iterations and epochs."""
        cfg, train = self.recipe, self.recipe["train"]
        # A built-in name or a label set file; its classes (names, colours) go into every weights file.
        self.label_set = get_label_set(cfg["model"]["label_set"])
        self.num_classes = int(cfg["model"]["num_classes"] or self.label_set.num_classes)
        val_size = tuple(cfg["data"]["val_size"]) if cfg["data"]["val_size"] else None
        data = dict(cfg["data"])
        if data["dataset"] == "folder" and not data["label_map"]:
            data["label_map"] = self.label_set.folder_label_map()  # a label set file's label_ids map the masks
        self.train_set, self.val_set = build_datasets(
            data, self.label_set.name, build_train_transform(cfg["augment"]), val_size, int(train["seed"]))
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

    def _build_training(self, *, fresh: bool) -> None:
        """Model, loss, (DDP) training module, optimizer, schedule and gradient scaler."""
        cfg, train = self.recipe, self.recipe["train"]
        torch.manual_seed(int(train["seed"]))
        model = self._build_model(fresh)
        self.criterion = build_loss(cfg["model"]["name"], self.num_classes, cfg["loss"])
        self.training_module = data_parallel(TrainingForward(model, self.criterion), self.device, self.context,
                                             sync_bn=bool(train["sync_bn"]))
        # SyncBatchNorm conversion may rebuild modules: take the model from what the loop will run.
        self.model: nn.Module = getattr(self.training_module, "module", self.training_module).model
        self.optimizer = build_optimizer(self.model, cfg["optim"])
        self.scheduler = build_scheduler(self.optimizer, cfg["optim"], total=self.total_iterations,
                                         iterations_per_epoch=self.iterations_per_epoch, epochs=self.epochs)
        self.amp = bool(train["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def _build_model(self, fresh: bool) -> nn.Module:
        from rtseg_ros.nets import build_model
        from rtseg_ros.nets.checkpoint import load_checkpoint
        from rtseg_ros.nets.weights import resolve_weights
        from rtseg_ros.nets.encoder import load_imagenet_weights

        model_cfg, init = self.recipe["model"], self.recipe["init"]
        # Only MFARANet selects scales; ATONet is built with its one setting.
        scales = tuple(model_cfg["scales"]) if model_cfg["name"] == "mfaranet" else ALL_SCALES
        model = build_model(model_cfg["name"], self.num_classes, scales, training_heads=True)
        if fresh and init["backbone"]:
            load_imagenet_weights(model, self._recipe_path(init["backbone"]))
        if fresh and init["weights"]:
            # A path, a file name in the models folders or a manifest entry, as everywhere else.
            report = load_checkpoint(model, resolve_weights(self._recipe_path(init["weights"])), strict_classes=False)
            if report.reinitialized:
                self._log("fine-tuning from %s (%s classes) to %d classes: re-initialised %s",
                          init["weights"], report.checkpoint_classes, self.num_classes,
                          ", ".join(report.reinitialized))
            else:
                self._log("initialised all %d tensors from %s", len(report.loaded), init["weights"])
        if fresh and not (init["backbone"] or init["weights"]):
            self._log("training %s from random initialisation (no init.backbone / init.weights)", model_cfg["name"])
        return model.to(self.device)

    # ----------------------------------------------------------------------------------------------
    # Parts of a run

    @property
    def iteration(self) -> int:
        """Iterations done, in total over the resumes."""
        return self.progress.iteration

    def _log(self, message: str, *args: Any, level: int = logging.INFO) -> None:
        if self.context.is_main:
            LOG.log(level, message, *args)

    def validate(self) -> tuple[float, float]:
        """mIoU (over the classes present) and pixel accuracy on the validation set, merged over ranks."""
        loader = val_loader(self.val_set, batch_size=int(self.recipe["val"]["batch_size"]), context=self.context,
                            workers=min(int(self.recipe["data"]["workers"]), 2))
        matrix, unknown = evaluate(self.model, loader, self.num_classes, device=self.device, amp=self.amp,
                                   context=self.context)
        if unknown:
            self._log("validation: %d pixels with label values outside the %d classes were left out", unknown,
                      self.num_classes, level=logging.WARNING)
        return matrix.mean_iou(), matrix.pixel_accuracy()

    def _save_weights(self, name: str, extra: Mapping[str, Any] | None = None) -> Path:
        # The whole label set when it fits the model; by name only when model.num_classes overrides its count.
        label_set = self.label_set if self.label_set.num_classes == self.num_classes else self.label_set.name
        return write_weights(self.model, self.output_dir / name, model_name=self.recipe["model"]["name"],
                             label_set=label_set, progress=self.progress, extra=extra)

    def _save_resume(self) -> None:
        # Every rank takes part (its RNG states go into the file); only the main one writes.
        rng = gather_objects(rng_state(), self.context)
        if not self.context.is_main:
            return
        training = resume_state(recipe=self.recipe, world_size=self.context.world_size, progress=self.progress,
                                iterations_per_epoch=self.iterations_per_epoch, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, rng=rng)
        self._save_weights(RESUME_FILE, {"training": training})

    def _record_validation(self, log: RunLog) -> None:
        miou, accuracy = self.validate()
        improved = self.progress.record_validation(self.iteration / self.iterations_per_epoch, miou, accuracy)
        log.validation(self.iteration, miou, accuracy, best=improved)
        if improved and self.context.is_main:
            self._save_weights(BEST_FILE)

    def _validation_due(self, iteration: int) -> bool:
        val = self.recipe["val"]
        if val["every_iterations"]:
            if iteration % int(val["every_iterations"]) == 0:
                return True
        every_epochs = int(val["every_epochs"] or 0)
        epoch, position = divmod(iteration, self.iterations_per_epoch)
        return position == 0 and bool(every_epochs) and epoch % every_epochs == 0

    def _checkpoint_due(self, iteration: int, end: int) -> bool:
        every = self.recipe["checkpoint"]["every_iterations"]
        return (iteration % self.iterations_per_epoch == 0 or iteration == end
                or bool(every and iteration % int(every) == 0))

    def _run_epoch(self, end: int, log: RunLog) -> None:
        """The rest of the current epoch (or up to ``end``), validating and saving on schedule."""
        epoch, position = divmod(self.iteration, self.iterations_per_epoch)
        train = self.recipe["train"]
        loader = train_loader(self.train_set, epoch=epoch, start_batch=position, batch_size=self.batch_per_process,
                              seed=int(train["seed"]), context=self.context, workers=int(self.recipe["data"]["workers"]),
                              pin_memory=self.device.type == "cuda")

        def after_step(iteration: int, loss: float, parts: dict[str, float]) -> None:
            self.progress.iteration = iteration
            log.train_step(iteration, loss, parts, self.optimizer.param_groups[-1]["lr"], self.progress.last_miou)
            if self._validation_due(iteration):
                self._record_validation(log)
            if self._checkpoint_due(iteration, end):
                self._save_resume()

        train_one_epoch(self.training_module, loader, optimizer=self.optimizer, scheduler=self.scheduler,
                        scaler=self.scaler, device=self.device, amp=self.amp, iteration=self.iteration, end=end,
                        after_step=after_step)

    def _finish(self, log: RunLog) -> Path | None:
        """At the end of the schedule: a last validation if due, ``final.pth`` and its copy."""
        if not self.progress.validated_here:
            self._record_validation(log)
        if not self.context.is_main:
            return None
        final = self._save_weights(FINAL_FILE)
        target = self.recipe["output"]["weights"]
        if target:
            target_path = self._recipe_path(target)
            if self.recipe["output"].get("weights_fp16"):
                write_half_copy(final, target_path)
            else:
                copy_weights(final, target_path)
            self._log("final weights copied to %s", target_path)
        self._log("done: %d iterations, best mIoU %.4f, last %.4f, weights %s", self.iteration,
                  self.progress.best_miou, self.progress.last_miou, final)
        return final

    # ----------------------------------------------------------------------------------------------
    # Running

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
        end = min(self.total_iterations, self.stop_after) if self.stop_after else self.total_iterations
        final = None
        with RunLog(self.output_dir, enabled=self.context.is_main, total=self.total_iterations,
                    iteration=self.iteration, iterations_per_epoch=self.iterations_per_epoch,
                    log_every=cfg["output"]["log_every"], tensorboard=bool(cfg["output"]["tensorboard"]),
                    progress=bool(cfg["output"]["progress"]), started=started) as log:
            if cfg["data"]["dataset"] == "synthetic":
                self._log("training on synthetic scenes: the result is a toy model for the plumbing (demo, tests), "
                          "not a model of real streets", level=logging.WARNING)
            self._log("%s: %d iterations (%d epochs of %d), batch %d x %d process(es), device %s", cfg["name"],
                      self.total_iterations, self.epochs, self.iterations_per_epoch, self.batch_per_process,
                      self.context.world_size, self.device)
            self.model.train()
            try:
                while self.iteration < end:
                    self._run_epoch(end, log)
                if self.iteration >= self.total_iterations:
                    final = self._finish(log)
                else:
                    self._log("stopped at iteration %d of %d; continue with --resume %s", self.iteration,
                              self.total_iterations, self.output_dir / RESUME_FILE)
            except KeyboardInterrupt:
                self._log("interrupted at iteration %d; saving %s", self.iteration, self.output_dir / RESUME_FILE,
                          level=logging.WARNING)
                self._save_resume()
                raise
        best = self.output_dir / BEST_FILE
        return TrainResult(self.output_dir, final, best if best.exists() else None, self.progress.best_miou,
                           self.progress.last_miou, self.iteration, time.monotonic() - started,
                           list(self.progress.history))

    def close(self) -> None:
        """Leave the process group if this trainer started it."""
        close_distributed(self.context)


def run_training(recipe: Mapping[str, Any], *, resume: str | Path | None = None,
                 stop_after: int | None = None) -> TrainResult:
    """Build a :class:`Trainer`, run it, and leave the process group afterwards."""
    trainer = Trainer(recipe, resume=resume, stop_after=stop_after)
    try:
        return trainer.fit()
    finally:
        trainer.close()
