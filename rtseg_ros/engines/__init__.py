"""Inference engines: one :class:`Segmenter` over PyTorch (eager or compiled), Torch-TensorRT and ONNX Runtime.

>>> from rtseg_ros.engines import Segmenter, SegmenterConfig
>>> segmenter = Segmenter(SegmenterConfig(model="mfaranet", weights="models/mfaranet.pth", backend="onnxruntime"))
>>> result = segmenter.segment(frame, color_order="bgr", want_confidence=True)

Backends are imported only when chosen: ``torch_tensorrt`` and ``onnxruntime`` are optional.
``SegmenterConfig`` and its checks load no torch; ``Segmenter``, ``SegmentationResult`` and
``FrameError`` are imported on first use, so a client that only describes a deployment (a node
command line, a report) stays free of torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rtseg_ros.engines.config import (
    BACKENDS,
    OUTPUT_RESOLUTIONS,
    PRECISIONS,
    ConfigError,
    SegmenterConfig,
    check_runtime,
    default_cache_dir,
)

if TYPE_CHECKING:
    from rtseg_ros.engines.preprocessing import FrameError
    from rtseg_ros.engines.segmenter import BatchFrame, BatchFrameError, SegmentationResult, Segmenter

# Names whose modules import torch: attribute -> module.
_LAZY = {
    "BatchFrame": "rtseg_ros.engines.segmenter",
    "BatchFrameError": "rtseg_ros.engines.segmenter",
    "FrameError": "rtseg_ros.engines.preprocessing",
    "SegmentationResult": "rtseg_ros.engines.segmenter",
    "Segmenter": "rtseg_ros.engines.segmenter",
    "set_cpu_threads": "rtseg_ros.engines.segmenter",
}

__all__ = [
    "BACKENDS",
    "BatchFrame",
    "BatchFrameError",
    "OUTPUT_RESOLUTIONS",
    "PRECISIONS",
    "ConfigError",
    "FrameError",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "check_runtime",
    "default_cache_dir",
    "set_cpu_threads",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
