"""What every inference backend provides to the :class:`~rtseg_ros.engines.Segmenter`."""
from __future__ import annotations

import concurrent.futures
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtseg_ros.engines.cache import graph_source_sha256
from rtseg_ros.engines.config import SegmenterConfig
from rtseg_ros.engines.label_upsampling import UpsampledLabels
from rtseg_ros.engines.preprocessing import labels_and_confidence
from rtseg_ros.nets.base import SegmentationModel

HeadOutput = tuple[torch.Tensor, "torch.Tensor | None"]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built from: the settings, the network and the identity of its weights."""

    config: SegmenterConfig
    model: nn.Module
    weights_id: str  # sha256 of the weights file, or of the state dict when randomly initialised
    num_classes: int

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.torch_device)

    def cache_key(self, output_size: tuple[int, int], with_confidence: bool, **extra: Any) -> dict[str, Any]:
        """The fields an exported or compiled artifact depends on (stored next to it in the cache).

        ``graph_source_sha256`` covers the code that defines the exported graph (``nets/`` and the
        head), so a change to a network invalidates every artifact built from the old code.
        Backends add their own fields (library versions, device, build settings) as ``extra``.
        """
        config = self.config
        return {
            "model": config.model,
            "weights_sha256": self.weights_id,
            "graph_source_sha256": graph_source_sha256(),
            "num_classes": self.num_classes,
            "input_size": list(config.network_size),
            "output_size": list(output_size),
            "outputs": ["labels", "confidence"] if with_confidence else ["labels"],
            "scales": list(config.scales),
            "precision": config.precision,
            "torch": torch.__version__,
            **extra,
        }

    @property
    def logits_size(self) -> tuple[int, int]:
        """(height, width) of the network's logits before its final resize (the network size over its stride)."""
        stride = self.model.output_stride
        return (self.config.input_height // stride, self.config.input_width // stride)

    def batch_cache_key(self, **extra: Any) -> dict[str, Any]:
        """The key of a batched network body (:class:`NetworkBody`): batches of 1 to ``max_batch``."""
        config = self.config
        return {
            "part": "network body: logits before the final resize",
            "model": config.model,
            "weights_sha256": self.weights_id,
            "graph_source_sha256": graph_source_sha256(),
            "num_classes": self.num_classes,
            "input_size": list(config.network_size),
            "max_batch": config.max_batch,
            "scales": list(config.scales),
            "precision": config.precision,
            "torch": torch.__version__,
            **extra,
        }

    def batch_cache_name(self) -> str:
        config = self.config
        scales = "".join(str(s) for s in config.scales)
        return (f"{config.model}-s{scales}-{config.input_height}x{config.input_width}-batch1to{config.max_batch}"
                f"-logits-{config.precision}")

    def finish_cache_key(self, output_size: tuple[int, int], with_confidence: bool, **extra: Any) -> dict[str, Any]:
        """The key of one frame's finish (:class:`LogitsFinish`): it has no weights, only sizes and the resize."""
        return {
            "part": "finish: final resize, argmax, confidence",
            "model": self.config.model,
            "graph_source_sha256": graph_source_sha256(),
            "num_classes": self.num_classes,
            "logits_size": list(self.logits_size),
            "output_size": list(output_size),
            "outputs": ["labels", "confidence"] if with_confidence else ["labels"],
            "torch": torch.__version__,
            **extra,
        }

    def finish_cache_name(self, output_size: tuple[int, int], with_confidence: bool) -> str:
        height, width = self.logits_size
        outputs = "labels+confidence" if with_confidence else "labels"
        return (f"finish-{self.config.model}-{self.num_classes}c-{height}x{width}"
                f"-to-{output_size[0]}x{output_size[1]}-{outputs}")

    def cache_name(self, output_size: tuple[int, int], with_confidence: bool) -> str:
        """The cache slot: one per model, sizes, outputs, scales and precision (the rest is in the key)."""
        config = self.config
        scales = "".join(str(s) for s in config.scales)
        outputs = "labels+confidence" if with_confidence else "labels"
        return (f"{config.model}-s{scales}-{config.input_height}x{config.input_width}"
                f"-to-{output_size[0]}x{output_size[1]}-{outputs}-{config.precision}")


class SegmentationHead(nn.Module):
    """Network, argmax and (optionally) confidence as one graph with a fixed output size.

    Compilers and exporters get the whole frame-to-labels computation: inductor fuses the final
    logits interpolation into the argmax, so full-resolution logits are never written to memory.
    ``forward`` returns labels (HxW, ``label_dtype``: uint8 unless a backend asks otherwise) and, if
    ``with_confidence``, float32 confidence (HxW).
    """

    def __init__(self, model: nn.Module, output_size: tuple[int, int], with_confidence: bool,
                 label_dtype: torch.dtype = torch.uint8, labels_by_reductions: bool = False):
        super().__init__()
        self.model = model
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.with_confidence = with_confidence
        self.label_dtype = label_dtype
        self.labels_by_reductions = labels_by_reductions  # see labels_and_confidence

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image, output_size=self.output_size)
        labels, confidence = labels_and_confidence(logits, self.with_confidence, self.label_dtype,
                                                   self.labels_by_reductions)
        return (labels, confidence) if self.with_confidence else labels


def batch_example(network_size: tuple[int, int], max_batch: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The example batch a batched body is exported with: 2 images (1 when ``max_batch`` is 1), since an
    example of 1 would specialise the exported graph to batch 1."""
    return torch.zeros((min(max_batch, 2), 3, *network_size), dtype=dtype, device=device)


def batch_dynamic_shapes(max_batch: int) -> dict[str, dict[int, Any]] | None:
    """``dynamic_shapes`` of a batched body's export: the batch of its ``image`` input 1 to ``max_batch``
    (static when that is 1); height and width stay static, which keeps the pooling grids exact."""
    return {"image": {0: torch.export.Dim("batch", min=1, max=max_batch)}} if max_batch > 1 else None


class NetworkBody(nn.Module):
    """The batched part of :meth:`Segmenter.segment_batch`: a Bx3xHxW batch at the network size in, the
    network's logits before its final resize out (BxCxhxw at its output stride)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model.logits(image)
        return logits


class LogitsFinish(nn.Module):
    """One frame's part after the batched :class:`NetworkBody`: its 1xCxhxw logits resized to the frame's
    ``output_size`` by the network's own final resize, then argmax and (optionally) confidence.

    ``NetworkBody`` followed by this computes what :class:`SegmentationHead` computes in one graph. It
    holds no weights: the network is kept as its resize method only, so exporting it carries no
    parameters.
    """

    def __init__(self, model: nn.Module, output_size: tuple[int, int], with_confidence: bool,
                 label_dtype: torch.dtype = torch.uint8):
        super().__init__()
        self.resize_logits = model.resize_logits  # a bound method, not a submodule: no parameters
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.with_confidence = with_confidence
        self.label_dtype = label_dtype

    def forward(self, logits: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        resized = self.resize_logits(logits, self.output_size)
        labels, confidence = labels_and_confidence(resized, self.with_confidence, self.label_dtype)
        return (labels, confidence) if self.with_confidence else labels


class InferenceEngine(ABC):
    """Runs the network: a normalised 1x3xhxw image in, labels (and confidence) at ``output_size`` out.

    Subclasses build one callable per (output size, with confidence) pair with :meth:`_build_head`;
    it is built on first use (or by :meth:`prepare`) and kept. Builds run outside inference mode
    even when the caller is inside it (the :class:`Segmenter` is): exporting, calibrating and
    saving need ordinary tensors.

    Attributes:
        name: backend name as in :class:`SegmenterConfig` (``torch``, ``compile``, ...).
        input_dtype: dtype the engine expects its input in.
        channels_last: whether the engine wants its input in channels_last memory format.
    """

    name: str = ""
    input_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    # Whether a new (output size, with confidence) pair needs a build (export, compile) before it runs;
    # eager PyTorch runs any size as it is, so the node serves a new size at once instead of meanwhile.
    builds_per_variant: bool = True
    # Whether the per-frame finishes of a batch may run at the same time on several threads (their runtime
    # calls are thread-safe and release the GIL); False where a compiled finish holds one request object.
    concurrent_finishes: bool = False
    # Whether labels without confidence, on a CPU, come from the network's logits cell by cell
    # (:class:`UpsampledLabels`: no full-resolution logits) instead of the backend's resize and argmax.
    # The network then runs as the batched body for single frames too: one build for every output size.
    labels_by_cells: bool = False
    # The same for batches only (:meth:`finish_batch`), where a backend's one-frame head stays its own.
    batch_labels_by_cells: bool = False

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.device = spec.device
        self.network_size = spec.config.network_size
        self._heads: dict[tuple[tuple[int, int], bool], Callable[[torch.Tensor], Any]] = {}
        self.max_batch = spec.config.max_batch
        self._body: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._finishes: dict[tuple[tuple[int, int], bool], Callable[[torch.Tensor], Any]] = {}
        self._finish_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._batch_ready = False

    @abstractmethod
    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        """A callable mapping the input image to what :class:`SegmentationHead` returns."""

    def run(self, image: torch.Tensor, output_size: tuple[int, int], with_confidence: bool) -> HeadOutput:
        """uint8 labels (HxW) and float32 confidence (HxW, or ``None``) at ``output_size``, on the device."""
        key = ((int(output_size[0]), int(output_size[1])), bool(with_confidence))
        head = self._heads.get(key)
        if head is None:
            with torch.inference_mode(False):
                head = self._heads[key] = (self._cell_labels_head(key[0]) if self._uses_cell_labels(key[1])
                                           else self._build_head(*key))
        with torch.inference_mode():
            out = head(image)
        return (out[0], out[1]) if with_confidence else (out, None)

    def _uses_cell_labels(self, with_confidence: bool, batch: bool = False) -> bool:
        # Only for the base class's bilinear final resize: UpsampledLabels reproduces exactly that one.
        return ((self.labels_by_cells or (batch and self.batch_labels_by_cells))
                and not with_confidence and self.device.type == "cpu"
                and type(self.spec.model).resize_logits is SegmentationModel.resize_logits)

    def _cell_labels_head(self, output_size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
        body = self._batch_body()
        finish = self._finish(output_size, False)
        return lambda image: finish(body(image))

    def prepare(self, output_size: tuple[int, int], with_confidence: bool = False) -> None:
        """Build or load what ``output_size`` needs and run it once, so the next call is fast."""
        image = torch.zeros((1, 3, *self.network_size), dtype=self.input_dtype, device=self.device)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        self.run(image, output_size, with_confidence)

    # Batches ---------------------------------------------------------------------------------------
    def _build_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable mapping a Bx3xHxW batch (1 <= B <= ``max_batch``) to :class:`NetworkBody`'s logits."""
        raise NotImplementedError(f"the {self.name} backend runs no batches")

    def _build_finish(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        """A callable mapping one frame's 1xCxhxw logits to what :class:`LogitsFinish` returns.

        Eager PyTorch on the engine's device; backends that compile replace it with their own graph.
        """
        return LogitsFinish(self.spec.model, output_size, with_confidence)

    def run_batch(self, images: torch.Tensor, output_sizes: Sequence[tuple[int, int]],
                  with_confidence: bool) -> list[HeadOutput]:
        """Labels (and confidence) of each image of a Bx3xHxW batch, the i-th at ``output_sizes[i]``.

        The network runs once for the whole batch; the final resize, argmax and confidence run per
        frame, each at its own output size. What a step needs is built on first use.

        Raises:
            ValueError: the batch is empty or larger than ``max_batch``, or the sizes do not match it.
        """
        if len(output_sizes) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(output_sizes)} output sizes")
        return self.finish_batch(self.run_body(images), output_sizes, with_confidence)

    def run_body(self, images: torch.Tensor) -> torch.Tensor:
        """The network's logits (BxCxhxw, a new tensor each call) of a Bx3xHxW batch: the first half of
        :meth:`run_batch`.

        Raises:
            ValueError: the batch is empty or larger than ``max_batch``.
        """
        count = images.shape[0]
        if not 1 <= count <= self.max_batch:
            raise ValueError(f"a batch holds 1 to max_batch={self.max_batch} images, got {count}")
        body = self._batch_body()
        with torch.inference_mode():
            return body(images)

    def finish_batch(self, logits: torch.Tensor, output_sizes: Sequence[tuple[int, int]],
                     with_confidence: bool) -> list[HeadOutput]:
        """The second half of :meth:`run_batch`: each frame's labels (and confidence) from the batch's
        ``logits``, the i-th at ``output_sizes[i]``; may run while the next batch's :meth:`run_body` does."""
        count = logits.shape[0]
        if len(output_sizes) != count:
            raise ValueError(f"{count} logits but {len(output_sizes)} output sizes")
        if self._uses_cell_labels(with_confidence, batch=True):
            return self._labels_by_cells(logits, output_sizes)
        finishes = [self._finish(size, with_confidence) for size in output_sizes]  # built here, in order

        def finish(index: int) -> HeadOutput:
            with torch.inference_mode():  # thread-local: set on the thread that runs it
                out = finishes[index](logits[index:index + 1])
            return (out[0], out[1]) if with_confidence else (out, None)

        if count > 1 and self.concurrent_finishes and self.device.type == "cpu":
            # The finishes (a resize to the camera's size and an argmax) are most of a small network's
            # batch on a CPU, and each one runs on one thread: run them side by side on the cores.
            return list(self._finish_pool().map(finish, range(count)))
        return [finish(index) for index in range(count)]

    def _labels_by_cells(self, logits: torch.Tensor, output_sizes: Sequence[tuple[int, int]]) -> list[HeadOutput]:
        """Labels of a batch cell by cell, one pass per output size: a batch of small frames is mostly
        per-operation overhead, which one pass for all its frames pays once."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(output_sizes):
            by_size.setdefault((int(size[0]), int(size[1])), []).append(index)
        results: list[HeadOutput | None] = [None] * len(output_sizes)
        for size, indices in by_size.items():
            finish = self._finish(size, False)
            assert isinstance(finish, UpsampledLabels)
            with torch.inference_mode():
                labels = finish.batch(logits[indices] if len(indices) < logits.shape[0] else logits)
            for position, index in enumerate(indices):
                results[index] = (labels[position], None)
        return results  # type: ignore[return-value]  # every index is in one group

    def _finish_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._finish_executor is None:
            from rtseg_ros.machine import usable_cores

            self._finish_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, min(self.max_batch, usable_cores())), thread_name_prefix="batch-finish")
        return self._finish_executor

    def _batch_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._body is None:
            with torch.inference_mode(False):
                self._body = self._build_body()
        return self._body

    def _finish(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        key = ((int(output_size[0]), int(output_size[1])), bool(with_confidence))
        finish = self._finishes.get(key)
        if finish is None:
            with torch.inference_mode(False):
                finish = self._finishes[key] = (
                    UpsampledLabels(key[0], self.spec.model.align_corners)
                    if self._uses_cell_labels(key[1], batch=True) else self._build_finish(*key))
        return finish

    def _warmup_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes :meth:`prepare_batch` runs: the engines take any size in range once built, so the
        smallest and the largest (compile builds batch 1 apart from the others)."""
        return tuple(sorted({1, self.max_batch}))

    def prepare_batch(self, output_sizes: Sequence[tuple[int, int]] = (), with_confidence: bool = False) -> None:
        """Build or load the batched network for batches of 1 to ``max_batch`` and the finish of each of
        ``output_sizes``, and run each once, so :meth:`run_batch` builds nothing for them."""
        body = self._batch_body()
        logits = None
        for count in self._warmup_batch_sizes():
            image = torch.zeros((count, 3, *self.network_size), dtype=self.input_dtype, device=self.device)
            if self.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                logits = body(image)
        for size in output_sizes:
            finish = self._finish(size, with_confidence)
            with torch.inference_mode():
                finish(torch.zeros_like(logits[:1]))
        self._batch_ready = True

    @property
    def batch_ready(self) -> bool:
        """Whether the batched network is built for every batch size (:meth:`prepare_batch` has run)."""
        return self._batch_ready or not self.builds_per_variant

    def finish_ready(self, output_size: tuple[int, int], with_confidence: bool) -> bool:
        """Whether the finish of ``output_size`` is built (always, where it is eager)."""
        key = ((int(output_size[0]), int(output_size[1])), bool(with_confidence))
        return not self.builds_per_variant or key in self._finishes

    def describe(self) -> dict[str, Any]:
        """Facts worth reporting with a measurement (provider, compile mode, ...)."""
        return {"backend": self.name}
