"""What training adds to :mod:`rtseg_ros.distributed`: the recipe's device and DDP wrapping.

The process group and the collectives (shared with multi-process evaluation) are
:mod:`rtseg_ros.distributed`'s; they are re-exported here so the loop imports one module.
"""
from __future__ import annotations

import torch
from torch import nn

from rtseg_ros.distributed import (
    DistributedContext,
    all_reduce_sum,
    close_distributed,
    gather_objects,
    init_distributed,
)
from rtseg_ros.training.recipe import RecipeError

__all__ = [
    "DistributedContext",
    "all_reduce_sum",
    "close_distributed",
    "data_parallel",
    "device_kind",
    "gather_objects",
    "init_distributed",
    "select_device",
]


def device_kind(setting: str) -> str:
    """``cuda`` or ``cpu``: what a recipe's ``train.device`` selects (``auto``: CUDA when present)."""
    if (setting == "auto" and torch.cuda.is_available()) or str(setting).startswith("cuda"):
        return "cuda"
    return "cpu"


def select_device(setting: str, context: DistributedContext) -> torch.device:
    """The device of ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) for this process.

    A bare ``cuda`` takes the process's local rank, so each process of a node gets its own GPU.

    Raises:
        RecipeError: CUDA asked for but not available.
    """
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


def data_parallel(module: nn.Module, device: torch.device, context: DistributedContext, *,
                  sync_bn: bool) -> nn.Module:
    """``module`` itself in one process; otherwise wrapped in DistributedDataParallel.

    Args:
        module: what the loop calls (the model and its loss, returning the loss).
        sync_bn: on CUDA, convert batch norms to SyncBatchNorm first (statistics over the global batch).
    """
    if not context.distributed:
        return module
    if device.type == "cuda" and sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    # ATONet's auxiliary classifiers that the loss leaves out (1 and 2 by default) get no gradient.
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
