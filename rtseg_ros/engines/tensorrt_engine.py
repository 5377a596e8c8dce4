"""Torch-TensorRT backend (CUDA only): fp32, fp16 or calibrated int8 engines, cached on disk.

``torch_tensorrt`` links CUDA and TensorRT at import time, so it is imported only when this backend
is built; anywhere else it is never touched. Engines are compiled ahead of time from
``torch.export`` with explicit typing (the network's dtype decides the precision: fp16 converts the
network to half; int8 inserts calibrated quantize/dequantize nodes with NVIDIA ModelOpt) and
serialised as an ExportedProgram. The cache key holds the GPU name and the TensorRT and
Torch-TensorRT versions, because an engine is only valid for the GPU and library build that made it.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rtseg_ros.engines.base import EngineSpec, InferenceEngine, SegmentationHead
from rtseg_ros.engines.cache import ArtifactCache
from rtseg_ros.engines.calibration import iter_calibration_frames
from rtseg_ros.engines.config import ConfigError
from rtseg_ros.engines.preprocessing import Preprocessor, frame_to_device

LOG = logging.getLogger(__name__)


def import_torch_tensorrt():
    """``torch_tensorrt``, or a :class:`ConfigError` saying why it cannot be used here."""
    if not torch.cuda.is_available():
        raise ConfigError("the tensorrt backend needs CUDA and torch_tensorrt: CUDA is not available on this machine")
    try:
        import torch_tensorrt
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer/libcudart
        raise ConfigError(
            f"the tensorrt backend needs CUDA and torch_tensorrt, which failed to import "
            f"({type(exc).__name__}: {exc}); pip install 'rtseg_ros[tensorrt]'") from exc
    return torch_tensorrt


class TensorRTEngine(InferenceEngine):
    """Runs Torch-TensorRT engines, one per output size, built once and reloaded from the cache."""

    name = "tensorrt"
    channels_last = False  # TensorRT picks its own layouts; its input binding is dense NCHW

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self._trt = import_torch_tensorrt()
        config = spec.config
        self.precision = config.precision
        self.input_dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.cache_dir = config.resolved_cache_dir()
        self._cache = ArtifactCache(self.cache_dir, "tensorrt")
        self.gpu_name = torch.cuda.get_device_name(self.device)
        import tensorrt

        self.versions = {"tensorrt": tensorrt.__version__, "torch_tensorrt": self._trt.__version__}

    def _key(self, output_size: tuple[int, int], with_confidence: bool) -> dict[str, Any]:
        config = self.spec.config
        extra: dict[str, Any] = {"gpu": self.gpu_name, "dla_core": config.dla_core, **self.versions}
        if self.precision == "int8":
            extra["calibration"] = {"data": str(Path(config.calibration_data).expanduser().resolve()),
                                    "frames": config.calibration_frames}
        return self.spec.cache_key(output_size, with_confidence, **extra)

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        dla_core = self.spec.config.dla_core
        name = self.spec.cache_name(output_size, with_confidence) + (f"-dla{dla_core}" if dla_core is not None else "")
        entry = self._cache.entry(name, "engine.ep", self._key(output_size, with_confidence))
        module = entry.load_or_build(
            load=lambda path: torch.export.load(str(path)).module(),
            build=lambda path: self._build(path, output_size, with_confidence),
            what=f"TensorRT engine ({name})")
        return lambda image: module(image.contiguous())

    def _target_device(self):
        dla_core = self.spec.config.dla_core
        if dla_core is not None:
            return self._trt.Device(f"dla:{dla_core}", allow_gpu_fallback=True)
        return self._trt.Device(f"cuda:{self.device.index or 0}")

    def _build(self, path: Path, output_size: tuple[int, int], with_confidence: bool) -> None:
        trt = self._trt
        timing_cache = self.cache_dir / "tensorrt" / "timing_cache.bin"  # shared by all engines: faster builds
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        network = copy.deepcopy(self.spec.model).to(self.device).eval()
        example = torch.zeros((1, 3, *self.network_size), device=self.device, dtype=self.input_dtype)
        if self.precision == "fp16":
            network = network.half()
        module = SegmentationHead(network, output_size, with_confidence).eval()
        with torch.no_grad():
            if self.precision == "int8":
                module = self._quantize(module)
                from modelopt.torch.quantization.utils import export_torch_mode

                with export_torch_mode():
                    exported = torch.export.export(module, (example,), strict=False)
            else:
                exported = torch.export.export(module, (example,))
            compiled = trt.dynamo.compile(
                exported, inputs=[example], device=self._target_device(), min_block_size=1,
                use_explicit_typing=True,
                timing_cache_path=str(timing_cache))
        trt.save(compiled, str(path), output_format="exported_program", inputs=[example])

    def _quantize(self, module: torch.nn.Module) -> torch.nn.Module:
        """Insert int8 quantize/dequantize nodes calibrated on the configured frames.

        The calibrated quantizer state is saved next to the engines (``calibration/*.pt``) and
        reused when an engine is rebuilt for another output size or after a library update, so
        calibration runs once per model, weights and data set.
        """
        import modelopt.torch.opt as mto
        import modelopt.torch.quantization as mtq

        config = self.spec.config
        calibration_key = {"model": config.model, "weights_sha256": self.spec.weights_id,
                           "input_size": list(config.network_size), "scales": list(config.scales),
                           "data": str(Path(config.calibration_data).expanduser().resolve()),
                           "frames": config.calibration_frames}
        entry = ArtifactCache(self.cache_dir, "calibration").entry(
            f"{config.model}-{self.spec.weights_id[:16]}-{config.input_height}x{config.input_width}",
            "quantizers.pt", calibration_key)

        def calibrate(path: Path) -> None:
            preprocess = Preprocessor(self.network_size, self.device, torch.float32, channels_last=False)

            def forward_loop(model: torch.nn.Module) -> None:
                for frame, order in iter_calibration_frames(config.calibration_data, config.calibration_frames):
                    model(preprocess(frame_to_device(frame, self.device), order))

            mtq.quantize(module, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
            mto.save(module, str(path))

        cached = entry.lookup()
        if cached is not None:
            LOG.info("reusing int8 calibration %s", cached)
            return mto.restore(module, str(cached))
        LOG.info("calibrating int8 on up to %d frames from %s", config.calibration_frames, config.calibration_data)
        entry.store(calibrate)
        return module

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "gpu": self.gpu_name, "dla_core": self.spec.config.dla_core, **self.versions}
