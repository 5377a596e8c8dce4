"""Where a process sits in a training run, and the few collective operations the loop needs.

One process, or many started by ``torchrun`` (its ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
variables): NCCL on CUDA, gloo on CPU. Everything here is a no-op in a single process, so the
loop is written once for both cases.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

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


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank, world_size: this process's place among all of them.
        local_rank: its place on this machine (the CUDA device index it takes).
        initialized_here: this process joined the group itself (and so leaves it at the end).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0


def device_kind(setting: str) -> str:
    """``cuda`` or ``cpu``: what a recipe's ``train.device`` selects (``auto``: CUDA when present)."""
    if (setting == "auto" and torch.cuda.is_available()) or str(setting).startswith("cuda"):
        return "cuda"
    return "cpu"


def init_distributed(kind: str) -> DistributedContext:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables.

    Args:
        kind: ``cuda`` (NCCL) or ``cpu`` (gloo).

    Without those variables (or with a world of one), nothing is started.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)
    backend = "nccl" if kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, initialized_here=True)


def close_distributed(context: DistributedContext) -> None:
    """Leave the process group if ``context`` joined it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


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


def all_reduce_sum(values: np.ndarray, device: torch.device, context: DistributedContext) -> np.ndarray:
    """Element-wise sum of ``values`` over all processes (``values`` itself in one process)."""
    if not context.distributed:
        return values
    counts = torch.from_numpy(values).to(device)
    dist.all_reduce(counts)
    return counts.cpu().numpy()


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every process's ``value``, in rank order (picklable values; ``[value]`` in one process)."""
    if not context.distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
