"""One epoch of training and one pass of validation, as plain functions.

:func:`train_one_epoch` runs the optimisation steps of one epoch (or the part of it a run still
has to do) and hands each step's loss to a callback, which is where the caller logs, validates and
writes checkpoints. :func:`evaluate` scores a model with the evaluator's metric
(:class:`rtseg_ros.metrics.ConfusionMatrix`), merged over the processes of a distributed run.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from rtseg_ros.metrics import ConfusionMatrix
from rtseg_ros.training.distributed import DistributedContext, all_reduce_sum

__all__ = ["StepCallback", "TrainingForward", "evaluate", "train_one_epoch", "train_step"]

# Called after each step with (iterations done in total, the step's loss, the loss's parts).
StepCallback = Callable[[int, float, dict[str, float]], None]


class TrainingForward(nn.Module):
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


def train_step(training_module: nn.Module, images: Tensor, labels: Tensor, *, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
               device: torch.device, amp: bool, iteration: int) -> tuple[float, dict[str, float]]:
    """One optimisation step on one batch; returns the loss and its parts.

    Args:
        training_module: :class:`TrainingForward` (or its DistributedDataParallel wrapper).
        amp: float16 autocast (CUDA).
        iteration: the step's number, counted from 1, for the error message.

    Raises:
        FloatingPointError: the loss is not finite (nothing is updated).
    """
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        loss, parts = training_module(images, labels)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {float(loss.detach())} at iteration {iteration} "
                                 f"(parts {parts}); lower optim.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach()), parts


def train_one_epoch(training_module: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], *,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, device: torch.device, amp: bool, iteration: int, end: int,
                    after_step: StepCallback | None = None) -> int:
    """Train on ``loader``'s batches until it runs out or ``end`` iterations are done in total.

    Args:
        loader: the batches left in this epoch (``data.train_loader``).
        iteration: iterations done before this call, in total.
        end: stop once this many are done.
        after_step: called after every step (logging, validation, checkpoints).

    Returns:
        The iterations done in total after this call.
    """
    if iteration >= end:
        return iteration
    training_module.train()
    for images, labels in loader:
        loss, parts = train_step(training_module, images, labels, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler, device=device, amp=amp, iteration=iteration + 1)
        iteration += 1
        if after_step is not None:
            after_step(iteration, loss, parts)
        if iteration >= end:
            break
    return iteration


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], num_classes: int, *,
             device: torch.device, amp: bool = False,
             context: DistributedContext | None = None) -> tuple[ConfusionMatrix, int]:
    """The confusion matrix of ``model``'s predictions over ``loader``, summed over all processes.

    The model's own final resize takes the logits to the label size, so the prediction is scored
    at the labels' resolution whatever size the images were given at. The model is put back into the
    mode (train or eval) it was in.

    Returns:
        The matrix, and the count of this process's ground-truth pixels whose value is neither a
        class nor the ignore value (left out of the matrix).
    """
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    unknown = 0
    for images, labels in loader:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images.to(device), output_size=tuple(labels.shape[-2:]))
        predictions = logits.argmax(1).to(torch.uint8).cpu().numpy()
        for prediction, truth in zip(predictions, labels.numpy()):
            unknown += matrix.update(prediction, truth)
    if context is not None:
        matrix.matrix = all_reduce_sum(matrix.matrix, device, context)
    model.train(was_training)
    return matrix, unknown
