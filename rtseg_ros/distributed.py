"""Where a process sits among those ``torchrun`` started, and the collectives that combine their results.

One process, or many started by ``torchrun --nproc_per_node=N`` (its ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` variables): NCCL when the processes work on CUDA devices, gloo on CPUs. In one process
nothing is started and every collective returns its input, so callers are written once for both.
This module knows nothing of training or evaluation; both share it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "all_reduce_sum",
    "close_distributed",
    "collective_device",
    "gather_objects",
    "init_distributed",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank, world_size: this process's place among all of them.
        local_rank: its place on this machine (the CUDA device index it takes).
        initialized_here: this process joined the group itself (and so leaves it at the end).
        backend: ``nccl``, ``gloo``, or empty in a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0


def init_distributed(kind: str) -> DistributedContext:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables.

    Args:
        kind: ``cuda`` (NCCL; the process takes the GPU of its local rank) or ``cpu`` (gloo).

    Without those variables (or with a world of one), nothing is started. The group's address is
    torchrun's ``MASTER_ADDR``/``MASTER_PORT``.

    Raises:
        ValueError: ``WORLD_SIZE`` is set above 1 but ``RANK`` is missing, or either is no integer.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return DistributedContext()
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} needs integer RANK (and LOCAL_RANK) "
                         f"variables, as torchrun sets them: {exc}") from None
    backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, backend=dist.get_backend())
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, initialized_here=True, backend=backend)


def close_distributed(context: DistributedContext) -> None:
    """Leave the process group if ``context`` joined it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def collective_device(context: DistributedContext) -> torch.device:
    """Where tensors for collectives live: the local GPU under NCCL, else the CPU."""
    return torch.device("cuda", context.local_rank) if context.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: np.ndarray, device: torch.device, context: DistributedContext) -> np.ndarray:
    """Element-wise sum of ``values`` over all processes (``values`` itself in one process).

    Integer counts stay exact: the sum is taken in ``values``' own dtype.
    """
    if not context.distributed:
        return values
    counts = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    dist.all_reduce(counts)
    return counts.cpu().numpy()


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every process's ``value``, in rank order (picklable values; ``[value]`` in one process)."""
    if not context.distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
