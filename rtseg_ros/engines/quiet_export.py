"""Export calls without third-party log noise that tells a user nothing.

``torch.onnx``'s exporter logs one "torchvision is not installed" warning per torchvision operator it
could register (we use none of them), and ``torch.export`` emits ``FutureWarning``s about its own
internals. Both are silenced only inside :func:`quiet_export`, only by their exact source, so every
other warning (and these, outside an export) still reaches the user.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_export"]

# The logger torch.onnx's operator registry writes its torchvision notices to.
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


class _DropMessages(logging.Filter):
    """Drops log records whose message contains one of ``fragments``."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextmanager
def quiet_export() -> Iterator[None]:
    """Around an ONNX/``torch.export`` call: drop the torchvision notices and torch's internal
    ``FutureWarning``s (tree-spec deprecations) that the exporter itself triggers."""
    logger = logging.getLogger(_REGISTRATION_LOGGER)
    drop = _DropMessages("torchvision is not installed")
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(LeafSpec|TreeSpec).*")
            yield
    finally:
        logger.removeFilter(drop)
