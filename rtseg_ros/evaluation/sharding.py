"""Evaluation on many processes: each scores a share of the frames, the counts are combined at the end.

``torchrun --nproc_per_node=N $(which rtseg) eval ...`` starts N processes (one per GPU, or N on a
CPU machine); :func:`rtseg_ros.evaluation.evaluator.run_evaluation` gives each a
:class:`ShardedSource` and, once every frame is scored, :func:`combine_shards` adds the confusion
matrices up (an all-reduce: NCCL on GPUs, gloo on CPUs) and gathers the tallies, latencies and
per-frame records. A confusion matrix is a sum over frames, so the scores equal one process's
exactly, whatever share each process had.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from rtseg_ros.distributed import DistributedContext, all_reduce_sum, collective_device, gather_objects
from rtseg_ros.skips import SkipTally

if TYPE_CHECKING:
    # Types only: the evaluator imports this module when a run is distributed.
    from rtseg_ros.evaluation.evaluator import Evaluation, FrameSource

__all__ = ["ShardedSource", "combine_shards"]


class ShardedSource:
    """Every ``world_size``-th frame of ``source``, from the ``rank``-th on.

    A source that can split its own list of frames (``shard(rank, world_size)``, as a data set
    folder can) reads only its share; any other (a bag, read front to back) is read whole by every
    process, which decodes it but segments only its own frames. Then what the reader skips is
    counted by rank 0 alone, since every process meets the same.

    Args:
        source: the frames of the whole run.
        context: this process's place.
        max_frames: the whole run's limit (the first ``max_frames`` frames of the stream, as one
            process would read them); a source with a limit is read as a stream.
    """

    def __init__(self, source: FrameSource, context: DistributedContext, max_frames: int | None = None) -> None:
        self.rank, self.world_size = context.rank, context.world_size
        self.max_frames = max_frames
        shard = getattr(source, "shard", None)
        # With a frame limit, which frames count depends on what was readable before them: only a
        # stream read the same way by every process gives the same frames as one process.
        self._split = shard is not None and max_frames is None
        self._source = shard(self.rank, self.world_size) if self._split else source
        whole = source.total if max_frames is None else min(source.total or max_frames, max_frames)
        self.total = None if whole is None else len(range(self.rank, whole, self.world_size))
        self.description = source.description

    @property
    def damage(self) -> Any:
        """The damage the source met, if it reports any (a bag's)."""
        return getattr(self._source, "damage", None)

    def frames(self, skipped: SkipTally) -> Iterator[Any]:
        """This process's frames; reader skips recorded in ``skipped`` (see the class notes)."""
        if self._split:
            yield from self._source.frames(skipped)
            return
        # keep_per_reason=0: the other processes neither keep nor log the messages rank 0 logs.
        tally = skipped if self.rank == 0 else SkipTally(keep_per_reason=0)
        for index, frame in enumerate(self._source.frames(tally)):
            if self.max_frames is not None and index >= self.max_frames:
                return
            if index % self.world_size == self.rank:
                yield frame


def combine_shards(evaluation: Evaluation, shares: dict[str, Any],
                   context: DistributedContext) -> tuple[Evaluation, dict[str, Any]]:
    """The evaluation of all processes' frames, and their run figures; every process must call it.

    Args:
        evaluation: this process's share.
        shares: this process's ``elapsed_s``, ``predicted`` and ``exported`` counts and ``records``
            (its per-frame log entries).

    Returns:
        ``(evaluation, totals)``: the combined evaluation (tallies and latencies in rank order), and
        the slowest process's ``elapsed_s``, the summed counts and every record sorted by stamp
        (stream order).
    """
    matrix = all_reduce_sum(evaluation.confusion.matrix, collective_device(context), context)
    own_matrix = evaluation.confusion.matrix
    # The matrix is summed already; the gathered copies carry none, so it is not counted twice.
    evaluation.confusion.matrix = np.zeros_like(own_matrix)
    try:
        gathered = gather_objects((evaluation, shares), context)
    finally:
        evaluation.confusion.matrix = own_matrix
    combined = type(evaluation)(evaluation.label_set)
    for part, _ in gathered:
        combined.merge(part)
    combined.confusion.matrix = np.asarray(matrix, dtype=own_matrix.dtype)
    records = [record for _, part in gathered for record in part["records"]]
    records.sort(key=lambda record: record["stamp_ns"])
    totals = {"elapsed_s": max(part["elapsed_s"] for _, part in gathered),
              "predicted": sum(part["predicted"] for _, part in gathered),
              "exported": sum(part["exported"] for _, part in gathered),
              "records": records}
    return combined, totals
