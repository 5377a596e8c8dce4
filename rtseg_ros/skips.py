"""What a run skips instead of failing: the reasons, and the tally that counts them.

A bad file, message or frame costs that one item, not the run. Whoever meets it (the bag reader,
a data set source, the evaluator, live matching) records it in a :class:`SkipTally` under one of
the reasons below; the reasons are the keys of the ``skipped`` and ``issues`` counts of evaluation
reports, so they are defined here, once. This module imports nothing from the package, so the
readers in ``io`` and the ``evaluation`` both use it without depending on each other.
"""
from __future__ import annotations

import logging
from collections import Counter

__all__ = [
    "SkipTally",
    "SKIP_UNDECODABLE_MESSAGE", "SKIP_BAD_IMAGE", "SKIP_BAD_LABELS", "SKIP_LABELS_WITHOUT_IMAGE",
    "SKIP_DUPLICATE_STAMP", "SKIP_BAG_READ_ERROR", "SKIP_UNREADABLE_FILE", "SKIP_MISSING_GT",
    "SKIP_SIZE_MISMATCH", "SKIP_INFERENCE_ERROR", "SKIP_BAD_PREDICTION", "SKIP_DROPPED", "ISSUE_UNKNOWN_LABEL",
]

LOG = logging.getLogger(__name__)

# Reading a bag (rtseg_ros.io.bags).
SKIP_UNDECODABLE_MESSAGE = "undecodable message"
SKIP_BAD_IMAGE = "bad image"
SKIP_BAD_LABELS = "bad ground-truth image"
SKIP_LABELS_WITHOUT_IMAGE = "ground truth without image"
SKIP_DUPLICATE_STAMP = "duplicate stamp"
SKIP_BAG_READ_ERROR = "bag read error"
# Reading a data set folder (rtseg_ros.evaluation.sources).
SKIP_UNREADABLE_FILE = "unreadable file"
# Scoring a frame (rtseg_ros.evaluation.evaluator).
SKIP_MISSING_GT = "missing ground truth"
SKIP_SIZE_MISMATCH = "size mismatch"
SKIP_INFERENCE_ERROR = "inference error"
SKIP_BAD_PREDICTION = "prediction out of range"
# Live evaluation: a frame whose output never came back (rtseg_ros.evaluation.live).
SKIP_DROPPED = "dropped by the node"
# Not a skip: the frame is scored, but some of its ground-truth pixels are not.
ISSUE_UNKNOWN_LABEL = "unknown label value"


class SkipTally:
    """Things skipped (or flagged) while reading or scoring, counted by reason.

    The first ``keep_per_reason`` messages of each reason are kept for reports and logged; later
    ones are only counted, so a bag full of bad frames neither floods the log nor grows memory.
    """

    def __init__(self, keep_per_reason: int = 5) -> None:
        self.counts: Counter = Counter()
        self.messages: list[str] = []
        self.keep_per_reason = keep_per_reason

    def record(self, reason: str, detail: str) -> None:
        """Count one occurrence of ``reason``; ``detail`` says which item and why."""
        self.counts[reason] += 1
        if self.counts[reason] <= self.keep_per_reason:
            self.messages.append(f"{reason}: {detail}")
            LOG.warning("%s: %s", reason, detail)

    @property
    def total(self) -> int:
        """How many items were recorded, all reasons together."""
        return sum(self.counts.values())

    @staticmethod
    def merged(*tallies: "SkipTally") -> "SkipTally":
        """A new tally with the counts added up and the messages concatenated."""
        total = SkipTally()
        for tally in tallies:
            total.counts.update(tally.counts)
            total.messages.extend(tally.messages)
        return total
