"""Torch-TensorRT backend (CUDA only): fp32, fp16 or calibrated int8 engines, cached on disk as ``.pt2``.

``torch_tensorrt`` links CUDA and TensorRT at import time, so it is imported only when this backend
is built; anywhere else it is never touched. The module handed to TensorRT is built by
:func:`tensorrt_head` and exported by :func:`export_head`; the CPU audit
(:mod:`rtseg_ros.engines.export_audit`) checks exactly that module's graph against the ops
Torch-TensorRT converts.

Typing is explicit: the network's dtype decides the precision. fp16 converts the network to half;
int8 quantizes that fp16 network (ModelOpt quantize/dequantize nodes around the convolutions), so the
layers int8 does not cover run in fp16 rather than fp32. ``enabled_precisions`` is never passed:
Torch-TensorRT 2.8-2.12 rejects it together with ``use_explicit_typing``, and 2.13 has neither
(:func:`compile_settings`, checked against both versions' signatures in the audit data).

Labels leave the engine as int32 (argmax's indices cast to a type TensorRT converts) and become
uint8 outside it, so the whole head runs as one TensorRT engine.

Engines are built outside inference mode (ModelOpt calibration, export and saving need ordinary
tensors). An engine is valid only for the GPU and library build that made it, so its cache key holds
the GPU's compute capability and SM count, the CUDA, TensorRT, Torch-TensorRT and ModelOpt versions,
the quantization config and calibration content, a hash of the network code and the build settings;
TensorRT's timing cache is kept per GPU and library build for the same reason.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtseg_ros.engines.base import (
    EngineSpec, InferenceEngine, NetworkBody, SegmentationHead, batch_dynamic_shapes, batch_example,
)
from rtseg_ros.engines.cache import ArtifactCache, graph_source_sha256
from rtseg_ros.engines.config import ConfigError
from rtseg_ros.engines.preprocessing import Preprocessor, frame_to_device
from rtseg_ros.machine import distribution_version

LOG = logging.getLogger(__name__)

ARTIFACT = "engine.pt2"
CALIBRATION_ARTIFACT = "quantizers.pt"
# Labels inside the engine: TensorRT's argmax gives int32 indices and int32 is a cast its converter
# accepts (uint8 is not); the cast to uint8 runs after the engine, on the small label image only.
ENGINE_LABEL_DTYPE = torch.int32
# What every build uses; part of the cache key, so changing any of it rebuilds the engines.
BUILD_SETTINGS: dict[str, Any] = {
    "export": "torch.export.export(strict=False)",
    "compile": "torch_tensorrt.dynamo.compile",
    "typing": "explicit (the network's dtype)",
    "min_block_size": 1,
    "engine_label_dtype": "int32",
    "int8": "ModelOpt INT8_DEFAULT_CFG on the fp16 network",
    "artifact": "torch_tensorrt.save(output_format='exported_program')",
    "batch": "body exported with a dynamic batch Dim(1..max_batch); Input(min 1, opt and max max_batch)",
}


def network_dtype(precision: str) -> torch.dtype:
    """The dtype the network runs in for ``precision``: int8 quantizes the fp16 network."""
    return torch.float32 if precision == "fp32" else torch.float16


def tensorrt_head(model: nn.Module, output_size: tuple[int, int], with_confidence: bool,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> SegmentationHead:
    """The exact module the TensorRT backend exports: a copy of ``model`` in ``dtype`` on ``device``,
    with the head returning int32 labels (and float32 confidence)."""
    network = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    return SegmentationHead(network, output_size, with_confidence, label_dtype=ENGINE_LABEL_DTYPE).eval()


def export_head(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` as the backend does it (non-strict, no autograd)."""
    with torch.no_grad():
        return torch.export.export(module, (example,), strict=False)


def tensorrt_body(model: nn.Module, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> NetworkBody:
    """The exact module the TensorRT backend exports for batches: a copy of ``model`` in ``dtype`` on
    ``device``, returning the logits before the final resize (which runs per frame, outside TensorRT)."""
    return NetworkBody(copy.deepcopy(model).to(device=device, dtype=dtype).eval()).eval()


def export_body(module: nn.Module, example: torch.Tensor, max_batch: int) -> torch.export.ExportedProgram:
    """``torch.export`` of a batched body as the backend does it: the batch dimension dynamic, 1 to
    ``max_batch`` (static when that is 1), height and width static. ``example`` needs a batch of 2 or
    more when ``max_batch`` is (an example of 1 would specialise the graph to 1)."""
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=batch_dynamic_shapes(max_batch), strict=False)


def batch_input(trt: Any, network_size: tuple[int, int], max_batch: int, dtype: torch.dtype) -> Any:
    """TensorRT's optimization profile for batches: ``torch_tensorrt.Input`` with min batch 1 and opt and
    max batch ``max_batch`` (a multi-camera node mostly runs full batches). The same object goes to
    ``dynamo.compile`` and ``save``: 2.13's ``save`` re-exports with the dynamic shapes it infers
    from it, 2.8's ignores it and keeps the compiled graph's own."""
    height, width = network_size
    return trt.Input(min_shape=(1, 3, height, width), opt_shape=(max_batch, 3, height, width),
                     max_shape=(max_batch, 3, height, width), dtype=dtype)


def compile_settings(compile_fn: Callable[..., Any], device: torch.device, timing_cache: Path) -> dict[str, Any]:
    """Keyword arguments for ``torch_tensorrt.dynamo.compile`` that mean the same on 2.8 and 2.13.

    2.8 (JetPack 6) has ``use_explicit_typing`` (default False: TensorRT would pick layer
    precisions itself) and asserts when ``enabled_precisions`` is also given; 2.13 has neither
    parameter, types strongly always, and would swallow either in ``**kwargs`` unnoticed. So
    ``use_explicit_typing=True`` is passed only where the signature names it, and
    ``enabled_precisions`` never. ``device`` is a ``torch.device``, which both accept.
    """
    parameters = inspect.signature(compile_fn).parameters
    settings: dict[str, Any] = {
        "device": device,
        "min_block_size": BUILD_SETTINGS["min_block_size"],
        "timing_cache_path": str(timing_cache),
    }
    if "use_explicit_typing" in parameters:
        settings["use_explicit_typing"] = True
    return settings


def library_versions() -> dict[str, str | None]:
    """CUDA (torch's build), TensorRT, Torch-TensorRT and ModelOpt versions (``None``: not installed).

    cu12 and cu13 builds of TensorRT share version strings, hence the CUDA version beside them.
    """
    return {
        "cuda": torch.version.cuda,
        "tensorrt": _distribution_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        "torch_tensorrt": _distribution_version("torch_tensorrt", "torch-tensorrt"),
        "modelopt": _distribution_version("modelopt", "nvidia-modelopt"),
    }


def _distribution_version(module: str, *distributions: str) -> str | None:
    try:
        version = getattr(importlib.import_module(module), "__version__", None)
    except Exception:  # noqa: BLE001 - a library that cannot load is reported as missing
        version = None
    return str(version) if version else distribution_version(*distributions)


def gpu_identity(device: torch.device) -> dict[str, Any]:
    """Name, compute capability and SM count: Jetson Orin modules all report the name "Orin"."""
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count}


def timing_cache_path(cache_dir: Path, gpu: Mapping[str, Any], versions: Mapping[str, Any]) -> Path:
    """TensorRT's timing cache for this GPU and library build (timings do not carry across either)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(gpu["name"])).strip("-").lower()
    name = (f"{slug}-sm{str(gpu['compute_capability']).replace('.', '')}-{gpu['sm_count']}sms"
            f"-cuda{versions.get('cuda')}-trt{versions.get('tensorrt')}.bin")
    return Path(cache_dir) / "tensorrt" / "timing_cache" / name


def calibration_content_sha256(path: str | Path, frames: int) -> str:
    """Hex sha256 of the decoded calibration frames that calibration uses (pixels and colour order)."""
    from rtseg_ros.engines.calibration import iter_calibration_frames  # OpenCV and rosbags: int8 only

    digest = hashlib.sha256()
    for frame, order in iter_calibration_frames(path, frames):
        digest.update(f"{frame.shape}:{order}\n".encode())
        digest.update(frame.tobytes())
    return digest.hexdigest()


def quantization_config() -> dict[str, Any]:
    """ModelOpt's int8 config (weights per channel, activations per tensor, max calibration)."""
    import modelopt.torch.quantization as mtq

    return copy.deepcopy(mtq.INT8_DEFAULT_CFG)


def quantize_head(module: nn.Module, inputs: Iterable[torch.Tensor], config: Mapping[str, Any]) -> nn.Module:
    """Insert int8 fake-quantize nodes into ``module`` (in place), calibrated on ``inputs``.

    Runs on any device ModelOpt's fake quantization supports (CPU too); the inputs must already be
    in the module's dtype and on its device.
    """
    import modelopt.torch.quantization as mtq

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for image in inputs:
                model(image)

    return mtq.quantize(module, dict(config), forward_loop=forward_loop)


def export_quantized_head(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of a quantized head, with ModelOpt's quantizers exported as TensorRT Q/DQ ops."""
    from modelopt.torch.quantization.utils import export_torch_mode

    with export_torch_mode():
        return export_head(module, example)


def count_partitions(compiled: nn.Module) -> dict[str, int]:
    """TensorRT engines and PyTorch-run subgraphs in a compiled module (names set by Torch-TensorRT)."""
    names = [name for name, _ in compiled.named_children()]
    return {"tensorrt": sum(n.startswith("_run_on_acc") for n in names),
            "pytorch": sum(n.startswith("_run_on_gpu") for n in names)}


def import_torch_tensorrt():
    """``torch_tensorrt``, or a :class:`ConfigError` saying why it cannot be used here."""
    if not torch.cuda.is_available():
        raise ConfigError("the tensorrt backend needs CUDA and torch_tensorrt: CUDA is not available on this machine")
    try:
        import torch_tensorrt
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer/libcudart
        raise ConfigError(
            f"the tensorrt backend needs CUDA and torch_tensorrt, which failed to import "
            f"({type(exc).__name__}: {exc}); on a desktop GPU pip install 'rtseg_ros[tensorrt]', on a "
            "Jetson install NVIDIA's torch and torch_tensorrt wheels (docs/jetson.md)") from exc
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
        self.network_dtype = network_dtype(self.precision)
        self.input_dtype = self.network_dtype
        self.cache_dir = config.resolved_cache_dir()
        self._cache = ArtifactCache(self.cache_dir, "tensorrt")
        self.gpu = gpu_identity(self.device)
        self.versions = library_versions()
        self.timing_cache = timing_cache_path(self.cache_dir, self.gpu, self.versions)
        self.partitions: dict[str, dict[str, int]] = {}
        self._calibration: dict[str, Any] | None = None

    def _calibration_fields(self) -> dict[str, Any]:
        """What int8 engines depend on beyond the network: data, its content, ModelOpt and its config."""
        if self._calibration is None:
            from rtseg_ros.engines.calibration import calibration_key

            config = self.spec.config
            self._calibration = {
                **calibration_key(config.calibration_data, config.calibration_frames),
                "content_sha256": calibration_content_sha256(config.calibration_data, config.calibration_frames),
                "quantization_config": quantization_config(),
                "modelopt": self.versions["modelopt"],
            }
        return self._calibration

    def _key(self, output_size: tuple[int, int], with_confidence: bool) -> dict[str, Any]:
        return self.spec.cache_key(output_size, with_confidence, **self._key_fields())

    def _key_fields(self) -> dict[str, Any]:
        """What an engine depends on beyond the graph: the GPU, the libraries, the build, the calibration."""
        extra: dict[str, Any] = {
            "gpu": self.gpu, **self.versions, "network_dtype": str(self.network_dtype),
            "build_settings": BUILD_SETTINGS,
            "backend_source_sha256": graph_source_sha256(("engines/tensorrt_engine.py",)),
        }
        if self.precision == "int8":
            extra["calibration"] = self._calibration_fields()
        return extra

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        name = self.spec.cache_name(output_size, with_confidence)
        entry = self._cache.entry(name, ARTIFACT, self._key(output_size, with_confidence))
        module = entry.load_or_build(
            load=lambda path: torch.export.load(str(path)).module(),
            build=lambda path: self._build(path, output_size, with_confidence),
            what=f"TensorRT engine ({name})")

        def run(image: torch.Tensor) -> Any:
            out = module(image.contiguous())
            if with_confidence:
                return out[0].to(torch.uint8), out[1]
            return out.to(torch.uint8)

        return run

    def _build(self, path: Path, output_size: tuple[int, int], with_confidence: bool) -> None:
        module = tensorrt_head(self.spec.model, output_size, with_confidence, self.network_dtype, self.device)
        example = torch.zeros((1, 3, *self.network_size), device=self.device, dtype=self.network_dtype)
        self._compile_and_save(path, module, lambda m: export_head(m, example), [example],
                               f"{output_size[0]}x{output_size[1]}{'+confidence' if with_confidence else ''}")

    def _build_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """One engine for batches of 1 to ``max_batch`` (an optimization profile); the per-frame finish
        stays eager PyTorch on the GPU, where a resize and argmax take well under a millisecond."""
        name = self.spec.batch_cache_name()
        entry = self._cache.entry(name, ARTIFACT, self.spec.batch_cache_key(**self._key_fields()))
        module = entry.load_or_build(load=lambda path: torch.export.load(str(path)).module(),
                                     build=self._build_body_engine, what=f"TensorRT engine ({name})")

        def run(images: torch.Tensor) -> torch.Tensor:
            return module(images.contiguous())

        return run

    def _build_body_engine(self, path: Path) -> None:
        module = tensorrt_body(self.spec.model, self.network_dtype, self.device)
        example = batch_example(self.network_size, self.max_batch, self.network_dtype, self.device)
        inputs = ([batch_input(self._trt, self.network_size, self.max_batch, self.network_dtype)]
                  if self.max_batch > 1 else [example])
        self._compile_and_save(path, module, lambda m: export_body(m, example, self.max_batch), inputs,
                               f"batch1to{self.max_batch}")

    def _compile_and_save(self, path: Path, module: nn.Module,
                          export: Callable[[nn.Module], torch.export.ExportedProgram], inputs: list[Any],
                          label: str) -> None:
        """Export ``module`` (quantized first for int8), compile it for ``inputs`` and save it to ``path``."""
        trt = self._trt
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        settings = compile_settings(trt.dynamo.compile, self.device, self.timing_cache)
        with torch.no_grad():
            if self.precision == "int8":
                from modelopt.torch.quantization.utils import export_torch_mode

                module = self._quantize(module)
                # As NVIDIA's examples: export and compile both see ModelOpt's quantizers as TensorRT Q/DQ ops.
                with export_torch_mode():
                    compiled = trt.dynamo.compile(export(module), arg_inputs=inputs, **settings)
            else:
                compiled = trt.dynamo.compile(export(module), arg_inputs=inputs, **settings)
        partitions = count_partitions(compiled)
        self.partitions[label] = partitions
        if partitions["pytorch"]:
            LOG.warning("TensorRT engine %s runs %d subgraph(s) in PyTorch (%s); see the export audit",
                        label, partitions["pytorch"], partitions)
        trt.save(compiled, str(path), output_format="exported_program", arg_inputs=inputs)

    def _quantize(self, module: nn.Module) -> nn.Module:
        """Insert int8 quantize/dequantize nodes calibrated on the configured frames.

        The calibrated quantizer state is saved under ``calibration/`` and reused when an engine is
        rebuilt for another output size, so calibration runs once per network, weights, data and
        ModelOpt build.
        """
        import modelopt.torch.opt as mto

        from rtseg_ros.engines.calibration import iter_calibration_frames

        config = self.spec.config
        key = {"model": config.model, "weights_sha256": self.spec.weights_id,
               "graph_source_sha256": graph_source_sha256(), "input_size": list(config.network_size),
               "scales": list(config.scales), "network_dtype": str(self.network_dtype),
               "calibration": self._calibration_fields(), "device": self.device.type}
        entry = ArtifactCache(self.cache_dir, "calibration").entry(
            f"{config.model}-{self.spec.weights_id[:16]}-{config.input_height}x{config.input_width}",
            CALIBRATION_ARTIFACT, key)
        cached = entry.lookup()
        if cached is not None:
            LOG.info("reusing int8 calibration %s", cached)
            return mto.restore(module, str(cached))
        LOG.info("calibrating int8 on up to %d frames from %s", config.calibration_frames, config.calibration_data)
        preprocess = Preprocessor(self.network_size, self.device, self.network_dtype, channels_last=False)
        frames = (preprocess(frame_to_device(frame, self.device), order)
                  for frame, order in iter_calibration_frames(config.calibration_data, config.calibration_frames))
        quantize_head(module, frames, self._calibration_fields()["quantization_config"])
        entry.store(lambda path: mto.save(module, str(path)))
        return module

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "gpu": self.gpu, **self.versions, "partitions": self.partitions}
