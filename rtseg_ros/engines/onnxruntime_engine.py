"""ONNX Runtime backend: cached static-shape ONNX exports run by the best available provider.

The exported graph is the whole :class:`SegmentationHead` (network, logits resize, argmax and, if
asked, confidence) with a fixed input size (the network size) and a fixed output size, because
``adaptive_avg_pool2d`` (ATONet's pyramid pooling) is only exported correctly at static shapes.
One export per output size (and per with/without confidence) is made on first use and cached on
disk, so labels at a frame's own resolution come from the same single logits interpolation as in
the torch backends. A camera's frame size is fixed, so in practice that is one export per camera;
:meth:`Segmenter.warmup` can make it before the first frame.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg_ros.engines.base import (
    EngineSpec, InferenceEngine, LogitsFinish, NetworkBody, SegmentationHead, batch_dynamic_shapes, batch_example,
)
from rtseg_ros.engines.cache import ArtifactCache
from rtseg_ros.engines.config import ConfigError
from rtseg_ros.engines.quiet_export import quiet_export

LOG = logging.getLogger(__name__)

OPSET = 18
IMAGE = "image"
LABELS = "labels"
LOGITS = "logits"
CONFIDENCE = "confidence"


def execution_providers(device: torch.device, cache_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Providers in order of preference for ``device``: TensorRT, then CUDA, then CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if device.type == "cpu":
        return [("CPUExecutionProvider", {})]
    index = device.index or 0
    chosen: list[tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available:
        trt_cache = cache_dir / "onnxruntime-tensorrt"
        trt_cache.mkdir(parents=True, exist_ok=True)
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise ConfigError(
            f"onnxruntime on {device} needs the CUDA or TensorRT execution provider, but this onnxruntime "
            f"has only {sorted(available)}; install onnxruntime-gpu or use device='cpu'")
    return chosen + [("CPUExecutionProvider", {})]


class OnnxRuntimeEngine(InferenceEngine):
    """Runs cached ONNX exports of the segmentation head with ONNX Runtime (fp32)."""

    concurrent_finishes = True  # each call binds its own tensors; session.run is thread-safe and drops the GIL

    name = "onnxruntime"
    labels_by_cells = True
    channels_last = False  # ONNX Runtime takes dense NCHW

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        import onnxruntime as ort

        self._ort = ort
        self.cache_dir = spec.config.resolved_cache_dir()
        self.providers = execution_providers(self.device, self.cache_dir)
        self._cache = ArtifactCache(self.cache_dir, "onnx")
        self._export_model = spec.model.to("cpu", dtype=torch.float32).eval()
        self.active_providers: list[str] | None = None

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        name = self.spec.cache_name(output_size, with_confidence)
        key = self.spec.cache_key(output_size, with_confidence, opset=OPSET, exporter="torch.onnx dynamo")
        entry = self._cache.entry(name, "model.onnx", key)
        session = entry.load_or_build(
            load=self._open_session,
            build=lambda path: self._export(path, output_size, with_confidence),
            what=f"ONNX export ({name})")
        self.active_providers = session.get_providers()
        return _SessionRunner(session, output_size, with_confidence)

    def _export(self, path: Path, output_size: tuple[int, int], with_confidence: bool) -> None:
        example = torch.zeros((1, 3, *self.network_size), dtype=torch.float32)
        head = SegmentationHead(self._export_model, output_size, with_confidence).eval()
        output_names = [LABELS, CONFIDENCE] if with_confidence else [LABELS]
        with torch.no_grad(), quiet_export():
            torch.onnx.export(head, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=[IMAGE], output_names=output_names, external_data=False,
                              verbose=False)

    def _build_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """One export for every batch size: the batch dimension is dynamic (1 to ``max_batch``), height and
        width static (the pooling grids stay exact)."""
        entry = self._cache.entry(self.spec.batch_cache_name(), "model.onnx",
                                  self.spec.batch_cache_key(opset=OPSET, exporter="torch.onnx dynamo"))
        # Its threads do not spin once the network is done: the batch's finishes need the cores then.
        session = entry.load_or_build(load=lambda path: self._open_session(path, spin=False), build=self._export_body,
                                      what=f"ONNX export ({self.spec.batch_cache_name()})")
        return _BatchSessionRunner(session, (self.spec.num_classes, *self.spec.logits_size))

    def _export_body(self, path: Path) -> None:
        example = batch_example(self.network_size, self.max_batch)
        with torch.no_grad(), quiet_export():
            torch.onnx.export(NetworkBody(self._export_model).eval(), (example,), str(path), dynamo=True,
                              opset_version=OPSET, input_names=[IMAGE], output_names=[LOGITS],
                              dynamic_shapes=batch_dynamic_shapes(self.max_batch), external_data=False,
                              verbose=False)

    def _build_finish(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        """ONNX Runtime's own resize and argmax at ``output_size``: a small export per output size."""
        name = self.spec.finish_cache_name(output_size, with_confidence)
        entry = self._cache.entry(name, "model.onnx", self.spec.finish_cache_key(
            output_size, with_confidence, opset=OPSET, exporter="torch.onnx dynamo"))
        # One thread each: a batch's finishes run side by side on the cores (concurrent_finishes), and
        # threads of their own within each would only contend with the other finishes.
        session = entry.load_or_build(load=lambda path: self._open_session(path, threads=1),
                                      build=lambda path: self._export_finish(path, output_size, with_confidence),
                                      what=f"ONNX export ({name})")
        return _SessionRunner(session, output_size, with_confidence, input_name=LOGITS)

    def _export_finish(self, path: Path, output_size: tuple[int, int], with_confidence: bool) -> None:
        example = torch.zeros((1, self.spec.num_classes, *self.spec.logits_size), dtype=torch.float32)
        output_names = [LABELS, CONFIDENCE] if with_confidence else [LABELS]
        with torch.no_grad(), quiet_export():
            torch.onnx.export(LogitsFinish(self._export_model, output_size, with_confidence).eval(), (example,),
                              str(path), dynamo=True, opset_version=OPSET, input_names=[LOGITS],
                              output_names=output_names, external_data=False, verbose=False)

    def _open_session(self, path: Path, threads: int | None = None, spin: bool = True):
        ort = self._ort
        options = ort.SessionOptions()
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Follow torch's thread setting so one knob (--threads, torch.set_num_threads) rules both.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        names = [name for name, _ in self.providers]
        provider_options = [opts for _, opts in self.providers]
        return ort.InferenceSession(str(path), sess_options=options, providers=names,
                                    provider_options=provider_options)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": self.active_providers or [name for name, _ in self.providers],
                "onnxruntime": self._ort.__version__, "opset": OPSET}


class _SessionRunner:
    """Calls one ONNX Runtime session on torch tensors through I/O binding.

    Binding hands ONNX Runtime the tensors' own memory: no host round trip on CUDA, no copy on CPU.
    """

    def __init__(self, session: Any, output_size: tuple[int, int], with_confidence: bool, input_name: str = IMAGE):
        self.session = session
        self.output_size = output_size
        self.with_confidence = with_confidence
        self.input_name = input_name

    def __call__(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = image.contiguous()
        device = image.device
        device_type = "cuda" if device.type == "cuda" else "cpu"
        device_id = device.index or 0
        labels = torch.empty(self.output_size, dtype=torch.uint8, device=device)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, device_type, device_id, np.float32, tuple(image.shape),
                           image.data_ptr())
        binding.bind_output(LABELS, device_type, device_id, np.uint8, tuple(labels.shape), labels.data_ptr())
        confidence = None
        if self.with_confidence:
            confidence = torch.empty(self.output_size, dtype=torch.float32, device=device)
            binding.bind_output(CONFIDENCE, device_type, device_id, np.float32, tuple(confidence.shape),
                                confidence.data_ptr())
        if device_type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the input must be written before ORT reads it
        self.session.run_with_iobinding(binding)
        return (labels, confidence) if self.with_confidence else labels


class _BatchSessionRunner:
    """Calls the batched body session: a Bx3xHxW image batch in, BxCxhxw logits out, bound in place."""

    def __init__(self, session: Any, logits_shape: tuple[int, int, int]):
        self.session = session
        self.logits_shape = logits_shape

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(torch.float32).contiguous()
        device = images.device
        device_type = "cuda" if device.type == "cuda" else "cpu"
        device_id = device.index or 0
        logits = torch.empty((images.shape[0], *self.logits_shape), dtype=torch.float32, device=device)
        binding = self.session.io_binding()
        binding.bind_input(IMAGE, device_type, device_id, np.float32, tuple(images.shape), images.data_ptr())
        binding.bind_output(LOGITS, device_type, device_id, np.float32, tuple(logits.shape), logits.data_ptr())
        if device_type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the input must be written before ORT reads it
        self.session.run_with_iobinding(binding)
        return logits
