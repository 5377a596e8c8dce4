"""Inference engines: one :class:`Segmenter` over PyTorch (eager or compiled), Torch-TensorRT and ONNX Runtime.

>>> from rtseg_ros.engines import Segmenter, SegmenterConfig
>>> segmenter = Segmenter(SegmenterConfig(model="mfaranet", weights="models/mfaranet.pth", backend="onnxruntime"))
>>> result = segmenter.segment(frame, color_order="bgr", want_confidence=True)

Backends are imported only when chosen: ``torch_tensorrt`` and ``onnxruntime`` are optional.
"""
from rtseg_ros.engines.config import (
    BACKENDS,
    OUTPUT_RESOLUTIONS,
    PRECISIONS,
    ConfigError,
    SegmenterConfig,
    check_runtime,
    default_cache_dir,
)
from rtseg_ros.engines.preprocessing import FrameError
from rtseg_ros.engines.segmenter import SegmentationResult, Segmenter

__all__ = [
    "BACKENDS",
    "OUTPUT_RESOLUTIONS",
    "PRECISIONS",
    "ConfigError",
    "FrameError",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "check_runtime",
    "default_cache_dir",
]
