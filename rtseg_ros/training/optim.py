"""The optimizer and learning-rate schedule of a recipe's ``optim`` section."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["ScheduleFactor", "build_optimizer", "build_scheduler"]


class ScheduleFactor:
    """Learning-rate multiplier at an iteration.

    A callable object rather than a closure so that ``LambdaLR.state_dict()`` saves it (its
    attributes are part of the resume file: keep their names).

    Args:
        kind: ``poly`` (per iteration), ``cosine`` (per epoch) or ``constant``.
        total: iterations in the whole run.
        iterations_per_epoch, epochs: the epoch grid the cosine schedule steps on.
        power: the poly exponent.
        floor: the cosine schedule's final factor (``min_lr`` over the group's base rate).
    """

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


def build_optimizer(model: nn.Module, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD or AdamW over two parameter groups: the encoder's, then everything else.

    The groups take ``backbone_lr_mult`` / ``decoder_lr_mult`` times ``lr``, and the encoder's
    weight decay ``backbone_wd_mult`` times ``weight_decay``.
    """
    lr, decay = float(optim["lr"]), float(optim["weight_decay"])
    encoder, decoder = [], []
    for name, parameter in model.named_parameters():
        (encoder if name.startswith("encoder.") else decoder).append(parameter)
    groups = [
        {"params": encoder, "lr": lr * float(optim["backbone_lr_mult"]),
         "weight_decay": decay * float(optim["backbone_wd_mult"])},
        {"params": decoder, "lr": lr * float(optim["decoder_lr_mult"]), "weight_decay": decay},
    ]
    if optim["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=float(optim["momentum"]), nesterov=bool(optim["nesterov"]))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Mapping[str, Any], *, total: int,
                    iterations_per_epoch: int, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule, stepped once per iteration, one :class:`ScheduleFactor` per group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [
        ScheduleFactor(optim["schedule"], total, iterations_per_epoch, epochs, float(optim["power"]),
                       float(optim["min_lr"]) / group["lr"] if group["lr"] else 0.0)
        for group in optimizer.param_groups])
