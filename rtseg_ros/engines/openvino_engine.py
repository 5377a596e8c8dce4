"""OpenVINO backend: the segmentation head compiled for an Intel CPU, GPU or NPU, fp32 or NNCF int8.

The whole :class:`~rtseg_ros.engines.base.SegmentationHead` (network, the one logits resize, argmax
and, if asked, confidence) is captured with ``torch.export`` at a static input and output size and
converted with ``openvino.convert_model``. Static shapes keep ATONet's pyramid pooling exact (its
adaptive pooling grids depend on the input size) and let OpenVINO fold every shape computation.
The route through ``torch.export`` needs neither onnx nor onnxscript, and converts in less time than
the ONNX export does here.

int8 is NNCF post-training quantization, calibrated on the same frames as the TensorRT int8 path
(:mod:`rtseg_ros.engines.calibration`). What is cached is the compiled model
(``CompiledModel.export_model``), so a restart neither converts nor calibrates again; it is only
valid for the OpenVINO build and the device that made it, which is why both are in its key.

Precision is pinned, never left to the plugin: on CPUs with AVX-512 BF16 or AMX, OpenVINO's default
inference precision is bf16, which would make ``fp32`` silently lossy.
"""
from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg_ros.engines.base import EngineSpec, InferenceEngine, SegmentationHead
from rtseg_ros.engines.cache import ArtifactCache
from rtseg_ros.engines.calibration import CalibrationImages, calibration_key
from rtseg_ros.engines.config import ConfigError, openvino_device_name, openvino_device_present

LOG = logging.getLogger(__name__)

ARTIFACT = "model.blob"
CONVERTER = "torch.export+openvino.convert_model"
# NNCF's target device per OpenVINO device kind (it shapes which operations get quantized).
_NNCF_TARGETS = {"CPU": "CPU", "GPU": "GPU", "NPU": "NPU"}


def import_openvino():
    """``openvino``, or a :class:`ConfigError` naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise ConfigError(
            f"the openvino backend needs OpenVINO, which failed to import ({exc}); "
            "pip install 'rtseg_ros[openvino]'") from exc
    return openvino


def compile_properties(device: str, precision: str, threads: int) -> dict[str, Any]:
    """OpenVINO compile properties for ``device`` (an OpenVINO name such as ``CPU``) and ``precision``.

    The inference precision is explicit (see the module docstring); fp16 is for GPU/NPU only and
    int8 keeps the operations NNCF left unquantized at fp32 on the CPU and fp16 elsewhere. On the CPU
    the thread count follows torch's, so one knob (``--threads``, ``torch.set_num_threads``) rules
    every backend.
    """
    kind = device.split(".")[0]
    if precision == "fp16" or (precision == "int8" and kind != "CPU"):
        inference_precision = "f16"
    else:
        inference_precision = "f32"
    properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision}
    if kind == "CPU":
        properties["INFERENCE_NUM_THREADS"] = int(threads)
    return properties


class OpenVINOEngine(InferenceEngine):
    """Runs compiled OpenVINO models of the segmentation head, one per output size, cached on disk."""

    name = "openvino"
    channels_last = False  # the converted graph takes dense NCHW

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self._ov = import_openvino()
        config = spec.config
        self.precision = config.precision
        self.core = self._ov.Core()
        self.ov_device = openvino_device_name(config.device)
        available = list(self.core.available_devices)
        if not openvino_device_present(self.ov_device, available):
            raise ConfigError(f"OpenVINO device {self.ov_device} not found; this machine has {', '.join(available)}")
        self.device_name = str(self.core.get_property(self.ov_device, "FULL_DEVICE_NAME"))
        self.properties = compile_properties(self.ov_device, self.precision, torch.get_num_threads())
        self.cache_dir = config.resolved_cache_dir()
        self._cache = ArtifactCache(self.cache_dir, "openvino")
        self._export_model = spec.model.to("cpu", dtype=torch.float32).eval()

    def _key(self, output_size: tuple[int, int], with_confidence: bool) -> dict[str, Any]:
        config = self.spec.config
        # Threads are a run-time property; everything else changes the compiled code.
        compiled_as = {k: v for k, v in self.properties.items() if k != "INFERENCE_NUM_THREADS"}
        extra: dict[str, Any] = {"openvino": self._ov.__version__, "device": self.ov_device,
                                 "device_name": self.device_name, "properties": compiled_as, "converter": CONVERTER}
        if self.precision == "int8":
            # The version from the package metadata: importing nncf takes seconds, a cache hit needs none.
            extra["calibration"] = {**calibration_key(config.calibration_data, config.calibration_frames),
                                    "nncf": importlib.metadata.version("nncf")}
        return self.spec.cache_key(output_size, with_confidence, **extra)

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        name = f"{self.spec.cache_name(output_size, with_confidence)}-{self.ov_device}"
        entry = self._cache.entry(name, ARTIFACT, self._key(output_size, with_confidence))
        compiled = entry.load_or_build(load=self._import, build=lambda path: self._build(path, output_size,
                                                                                         with_confidence),
                                       what=f"OpenVINO {self.precision} model ({name})")
        return _InferRunner(self._ov, compiled, output_size, with_confidence)

    def _import(self, path: Path):
        # The cache logs how long a hit took; the properties (threads) apply to the imported model.
        return self.core.import_model(path.read_bytes(), self.ov_device, self.properties)

    def convert(self, output_size: tuple[int, int], with_confidence: bool):
        """The fp32 ``openvino.Model`` of the segmentation head at the network input size."""
        example = torch.zeros((1, 3, *self.network_size), dtype=torch.float32)
        head = SegmentationHead(self._export_model, output_size, with_confidence).eval()
        with torch.no_grad():
            exported = torch.export.export(head, (example,))
        return self._ov.convert_model(exported)

    def _build(self, path: Path, output_size: tuple[int, int], with_confidence: bool) -> None:
        started = time.perf_counter()
        model = self.convert(output_size, with_confidence)
        LOG.info("converted the %s head to OpenVINO in %.1f s", self.spec.config.model, time.perf_counter() - started)
        if self.precision == "int8":
            model = self._quantize(model)
        compiled = self.core.compile_model(model, self.ov_device, self.properties)
        blob = compiled.export_model()  # bytes in older OpenVINO releases, a BytesIO in newer ones
        path.write_bytes(blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob))

    def _quantize(self, model):
        """NNCF post-training int8 quantization on the configured calibration frames."""
        import nncf

        config = self.spec.config
        images = CalibrationImages(config.calibration_data, config.calibration_frames, self.network_size)
        started = time.perf_counter()
        LOG.info("calibrating int8 with NNCF on up to %d frames from %s", config.calibration_frames,
                 config.calibration_data)
        quantized = nncf.quantize(
            model, nncf.Dataset(images, lambda image: image.numpy()), subset_size=config.calibration_frames,
            target_device=nncf.TargetDevice[_NNCF_TARGETS[self.ov_device.split(".")[0]]])
        LOG.info("int8 calibration took %.1f s", time.perf_counter() - started)
        return quantized

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "openvino": self._ov.__version__, "device": self.ov_device,
                "device_name": self.device_name,
                "inference_precision": self.properties["INFERENCE_PRECISION_HINT"]}


class _InferRunner:
    """One compiled model called on torch tensors, sharing their memory with OpenVINO.

    The input tensor is read in place and the outputs are written straight into fresh torch tensors
    (the caller keeps them, so they cannot be reused across calls): no copy on the CPU.
    """

    def __init__(self, ov: Any, compiled: Any, output_size: tuple[int, int], with_confidence: bool):
        self._ov = ov
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.with_confidence = with_confidence

    def __call__(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ov = self._ov
        pixels = np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy())
        self.request.set_input_tensor(ov.Tensor(pixels, shared_memory=True))
        labels = torch.empty(self.output_size, dtype=torch.uint8)
        self.request.set_output_tensor(0, ov.Tensor(labels.numpy(), shared_memory=True))
        confidence = None
        if self.with_confidence:
            confidence = torch.empty(self.output_size, dtype=torch.float32)
            self.request.set_output_tensor(1, ov.Tensor(confidence.numpy(), shared_memory=True))
        self.request.infer()
        return (labels, confidence) if self.with_confidence else labels
