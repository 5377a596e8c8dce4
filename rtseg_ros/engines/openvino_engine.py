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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg_ros.engines.base import (
    EngineSpec, InferenceEngine, LogitsFinish, NetworkBody, SegmentationHead, batch_dynamic_shapes, batch_example,
)
from rtseg_ros.engines.cache import ArtifactCache
from rtseg_ros.engines.calibration import CalibrationImages, calibration_key
from rtseg_ros.engines.config import ConfigError, openvino_device_name, openvino_device_present
from rtseg_ros.engines.quiet_export import quiet_export

LOG = logging.getLogger(__name__)

ARTIFACT = "model.blob"
IR_NAME = "model.xml"  # the same model as IR, beside the blob (ir_path)
# "+module-names": operations are named after the torch module that made them (see name_by_module);
# "+static-input": the input is fixed at 1x3xHxW; "+labels-by-reductions": the fused head's argmax is
# computed by reductions (labels_and_confidence) and int8 leaves the final resize and the head in float.
STATIC_INPUT = True
CONVERTER = ("torch.export+openvino.convert_model+module-names" + ("+static-input" if STATIC_INPUT else "")
             + "+labels-by-reductions")
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


# What name_by_module calls the segmentation head's own operations (argmax, confidence), not the network's.
HEAD_MODULE = "head"
HEAD_OPERATIONS = rf"^{HEAD_MODULE}/.*"


def final_resize_outputs(model: Any, output_size: tuple[int, int]) -> list[str]:
    """Names of ``model``'s resize operations that output the labels' size: the network's final resize of
    its logits (nothing else of the network works at that size)."""
    names = []
    for op in model.get_ordered_ops():
        shape = op.get_output_partial_shape(0) if op.get_output_size() else None
        if (op.get_type_name() == "Interpolate" and shape is not None and shape.is_static
                and tuple(shape.to_shape())[-2:] == tuple(output_size)):
            names.append(op.get_friendly_name())
    return names


def name_by_module(model: Any, exported: torch.export.ExportedProgram) -> int:
    """Rename the operations of ``model`` (converted from ``exported``) after the torch modules that made them.

    The converter names an operation after the graph node it came from (``relu_3/aten.relu.default/Relu``),
    except where it fused or folded several (a convolution with its batch norm becomes ``Multiply_8292``,
    numbered per process). Every operation whose output carries a graph node's tensor name, or whose name
    starts with one, is renamed ``<module path>/<node>/<type>`` (``model.encoder.layer1.0.conv1/conv2d_3/
    Convolution``; ``head`` for the segmentation head's own operations), so performance counters and
    NNCF's ignored scopes can name parts of the network by module, in every process. Operations with no
    graph node (constants, converter helpers) keep their names. Names stay unique. Returns how many
    operations were renamed.
    """
    modules: dict[str, str] = {}
    for node in exported.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        modules[node.name] = (list(stack.values())[-1][0] or HEAD_MODULE) if stack else HEAD_MODULE
    used: set[str] = {op.get_friendly_name() for op in model.get_ops()}
    renamed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        candidates = [name.split(":")[0] for output in op.outputs() for name in output.get_names()]
        candidates.append(op.get_friendly_name().split("/")[0])
        node = next((name for name in candidates if name in modules), None)
        if node is None:
            continue
        base = f"{modules[node]}/{node}/{op.get_type_name()}"
        name, suffix = base, 1
        while name in used:
            suffix += 1
            name = f"{base}_{suffix}"
        used.add(name)
        op.set_friendly_name(name)
        renamed += 1
    return renamed


def _as_converted(exported: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``exported`` decomposed as OpenVINO's converter decomposes it before converting, so its node names
    are the ones the converted operations carry (the converter's own table; ``exported`` as it is if this
    OpenVINO release keeps it elsewhere)."""
    try:
        from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder
    except ImportError:
        return exported
    table = getattr(TorchFXPythonDecoder, "_decomp_table", None)
    if table is None:
        return exported
    with quiet_export():
        return exported.run_decompositions(table)


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
        # A batch's labels by cells on the CPU device (engines.label_upsampling): one pass for the batch
        # instead of a compiled finish per frame, each holding its own inference request (4 cameras at
        # 25 Hz: 88 served frames/s against 64 for four nodes). One frame keeps the compiled head, the
        # model that the profiles and benchmark_app figures measure. An Intel GPU/NPU keeps its finishes.
        self.batch_labels_by_cells = self.ov_device.split(".")[0] == "CPU"
        self.properties = compile_properties(self.ov_device, self.precision, torch.get_num_threads())
        self.cache_dir = config.resolved_cache_dir()
        self._cache = ArtifactCache(self.cache_dir, "openvino")
        self._export_model = spec.model.to("cpu", dtype=torch.float32).eval()

    def _key(self, output_size: tuple[int, int], with_confidence: bool) -> dict[str, Any]:
        return self.spec.cache_key(output_size, with_confidence, **self._key_fields())

    def _key_fields(self) -> dict[str, Any]:
        """What a compiled model depends on beyond the graph: OpenVINO, the device, properties, calibration."""
        config = self.spec.config
        # Threads are a run-time property; everything else changes the compiled code.
        compiled_as = {k: v for k, v in self.properties.items() if k != "INFERENCE_NUM_THREADS"}
        extra: dict[str, Any] = {"openvino": self._ov.__version__, "device": self.ov_device,
                                 "device_name": self.device_name, "properties": compiled_as, "converter": CONVERTER}
        if self.precision == "int8":
            # The version from the package metadata: importing nncf takes seconds, a cache hit needs none.
            extra["calibration"] = {**calibration_key(config.calibration_data, config.calibration_frames),
                                    "nncf": importlib.metadata.version("nncf")}
        return extra

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        name = f"{self.spec.cache_name(output_size, with_confidence)}-{self.ov_device}"
        entry = self._cache.entry(name, ARTIFACT, self._key(output_size, with_confidence))
        compiled = entry.load_or_build(load=self._import, build=lambda path: self._build(path, output_size,
                                                                                         with_confidence),
                                       what=f"OpenVINO {self.precision} model ({name})")
        return _InferRunner(self._ov, compiled, output_size, with_confidence, entry.artifact)

    def _import(self, path: Path):
        # The cache logs how long a hit took; the properties (threads) apply to the imported model.
        return self.core.import_model(path.read_bytes(), self.ov_device, self.properties)

    def convert(self, output_size: tuple[int, int], with_confidence: bool):
        """The fp32 ``openvino.Model`` of the segmentation head at the network input size, its operations
        named after their torch modules (:func:`name_by_module`)."""
        example = torch.zeros((1, 3, *self.network_size), dtype=torch.float32)
        # The fused head's logits arrive in the plugin's channels-last layout: argmax by reductions.
        head = SegmentationHead(self._export_model, output_size, with_confidence, labels_by_reductions=True).eval()
        with torch.no_grad(), quiet_export():
            exported = torch.export.export(head, (example,))
            model = self._ov.convert_model(exported)
        if STATIC_INPUT:
            # The converter leaves the input's batch and size dynamic ([?,3,?,?]) even though every shape
            # behind it was folded for this size; a dynamic input keeps the plugin's per-call shape path.
            model.reshape([1, 3, *self.network_size])
        name_by_module(model, _as_converted(exported))
        return model

    def compiled_artifact(self, output_size: tuple[int, int], with_confidence: bool = False) -> Path:
        """The cached compiled model (``CompiledModel.export_model``) that serves ``output_size``; built if
        missing. ``benchmark_app -m`` takes it as it is."""
        key = ((int(output_size[0]), int(output_size[1])), bool(with_confidence))
        if key not in self._heads:
            self.prepare(*key)
        return self._heads[key].artifact

    def profiling_model(self, output_size: tuple[int, int], with_confidence: bool = False):
        """The served compiled model imported again with performance counters on (``PERF_COUNT``), so
        ``request.profiling_info`` gives each executed layer's time and kernel: same blob, same properties."""
        path = self.compiled_artifact(output_size, with_confidence)
        return self.core.import_model(path.read_bytes(), self.ov_device, {**self.properties, "PERF_COUNT": True})

    def graph(self, output_size: tuple[int, int], with_confidence: bool):
        """The ``openvino.Model`` that is compiled for ``output_size``: converted, and quantized for int8."""
        started = time.perf_counter()
        model = self.convert(output_size, with_confidence)
        LOG.info("converted the %s head to OpenVINO in %.1f s", self.spec.config.model, time.perf_counter() - started)
        if self.precision == "int8":
            model = self._quantize(model, final_resize_outputs(model, output_size))
        return model

    def ir_path(self, output_size: tuple[int, int], with_confidence: bool = False) -> Path:
        """The OpenVINO IR (``.xml`` + ``.bin``, weights as they are) of the model compiled for ``output_size``,
        kept beside the cached blob, for tools that compile it themselves such as ``benchmark_app`` (it
        refuses a precision for an imported blob, and a blob imported without one runs bf16 on CPUs that
        have it). Written once if an older cache entry lacks it (int8 then calibrates again)."""
        path = self.compiled_artifact(output_size, with_confidence).parent / IR_NAME
        if not path.is_file():
            self._ov.save_model(self.graph(output_size, with_confidence), str(path), compress_to_fp16=False)
        return path

    def _build(self, path: Path, output_size: tuple[int, int], with_confidence: bool) -> None:
        model = self.graph(output_size, with_confidence)
        self._ov.save_model(model, str(path.parent / IR_NAME), compress_to_fp16=False)  # see ir_path
        self._write_blob(path, model)

    def _quantize(self, model, float_operations: Sequence[str] = ()):
        """NNCF post-training int8 quantization on the configured calibration frames; ``float_operations``
        (names) and the head's own operations stay in floating point."""
        import nncf

        config = self.spec.config
        images = CalibrationImages(config.calibration_data, config.calibration_frames, self.network_size)
        started = time.perf_counter()
        LOG.info("calibrating int8 with NNCF on up to %d frames from %s", config.calibration_frames,
                 config.calibration_data)
        quantized = nncf.quantize(
            model, nncf.Dataset(images, lambda image: image.numpy()), subset_size=config.calibration_frames,
            target_device=nncf.TargetDevice[_NNCF_TARGETS[self.ov_device.split(".")[0]]],
            # The final resize and the head's own operations (argmax, confidence) turn the logits into
            # labels: int8 there makes near-equal classes tie and changes labels, for no time saved.
            ignored_scope=nncf.IgnoredScope(names=list(float_operations), patterns=[HEAD_OPERATIONS],
                                            validate=False))
        LOG.info("int8 calibration took %.1f s", time.perf_counter() - started)
        return quantized

    def _build_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """One compiled model for every batch size: batch 1 to ``max_batch``, height and width static."""
        name = f"{self.spec.batch_cache_name()}-{self.ov_device}"
        entry = self._cache.entry(name, ARTIFACT, self.spec.batch_cache_key(**self._key_fields()))
        compiled = entry.load_or_build(load=self._import, build=self._build_body_blob,
                                       what=f"OpenVINO {self.precision} model ({name})")
        return _BatchInferRunner(self._ov, compiled, (self.spec.num_classes, *self.spec.logits_size))

    def _build_body_blob(self, path: Path) -> None:
        example = batch_example(self.network_size, self.max_batch)
        with torch.no_grad(), quiet_export():
            exported = torch.export.export(NetworkBody(self._export_model).eval(), (example,),
                                           dynamic_shapes=batch_dynamic_shapes(self.max_batch))
            model = self._ov.convert_model(exported)
        # The converter leaves height and width dynamic too; static ones keep the pooling grids folded.
        model.reshape([self._ov.Dimension(1, self.max_batch), 3, *self.network_size])
        if self.precision == "int8":
            model = self._quantize(model)
        self._write_blob(path, model)

    def _build_finish(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        """OpenVINO's own resize and argmax at ``output_size`` (fp32 logits in): one small model per size."""
        name = f"{self.spec.finish_cache_name(output_size, with_confidence)}-{self.ov_device}"
        fields = {k: v for k, v in self._key_fields().items() if k != "calibration"}  # nothing to quantize
        entry = self._cache.entry(name, ARTIFACT, self.spec.finish_cache_key(output_size, with_confidence, **fields))

        def build(path: Path) -> None:
            example = torch.zeros((1, self.spec.num_classes, *self.spec.logits_size), dtype=torch.float32)
            finish = LogitsFinish(self._export_model, output_size, with_confidence).eval()
            with torch.no_grad(), quiet_export():
                model = self._ov.convert_model(torch.export.export(finish, (example,)))
            model.reshape([1, self.spec.num_classes, *self.spec.logits_size])
            self._write_blob(path, model)

        compiled = entry.load_or_build(load=self._import, build=build, what=f"OpenVINO finish ({name})")
        return _InferRunner(self._ov, compiled, output_size, with_confidence, entry.artifact)

    def _write_blob(self, path: Path, model: Any) -> None:
        compiled = self.core.compile_model(model, self.ov_device, self.properties)
        blob = compiled.export_model()  # bytes in older OpenVINO releases, a BytesIO in newer ones
        path.write_bytes(blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "openvino": self._ov.__version__, "device": self.ov_device,
                "device_name": self.device_name,
                "inference_precision": self.properties["INFERENCE_PRECISION_HINT"]}


class _InferRunner:
    """One compiled model called on torch tensors, sharing their memory with OpenVINO.

    The input tensor is read in place and the outputs are written straight into fresh torch tensors
    (the caller keeps them, so they cannot be reused across calls): no copy on the CPU.
    """

    def __init__(self, ov: Any, compiled: Any, output_size: tuple[int, int], with_confidence: bool, artifact: Path):
        self._ov = ov
        self.compiled = compiled
        self.artifact = artifact  # the cached blob it was imported from
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


class _BatchInferRunner:
    """The batched body's compiled model called on a Bx3xHxW batch; the logits are written into a torch tensor."""

    def __init__(self, ov: Any, compiled: Any, logits_shape: tuple[int, int, int]):
        self._ov = ov
        self.request = compiled.create_infer_request()
        self.logits_shape = logits_shape

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        ov = self._ov
        pixels = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        self.request.set_input_tensor(ov.Tensor(pixels, shared_memory=True))
        logits = torch.empty((pixels.shape[0], *self.logits_shape), dtype=torch.float32)
        self.request.set_output_tensor(0, ov.Tensor(logits.numpy(), shared_memory=True))
        self.request.infer()
        return logits
