"""What every inference backend provides to the :class:`~rtseg_ros.engines.Segmenter`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtseg_ros.engines.cache import graph_source_sha256
from rtseg_ros.engines.config import SegmenterConfig
from rtseg_ros.engines.preprocessing import labels_and_confidence

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
                 label_dtype: torch.dtype = torch.uint8):
        super().__init__()
        self.model = model
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.with_confidence = with_confidence
        self.label_dtype = label_dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image, output_size=self.output_size)
        labels, confidence = labels_and_confidence(logits, self.with_confidence, self.label_dtype)
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

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.device = spec.device
        self.network_size = spec.config.network_size
        self._heads: dict[tuple[tuple[int, int], bool], Callable[[torch.Tensor], Any]] = {}

    @abstractmethod
    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        """A callable mapping the input image to what :class:`SegmentationHead` returns."""

    def run(self, image: torch.Tensor, output_size: tuple[int, int], with_confidence: bool) -> HeadOutput:
        """uint8 labels (HxW) and float32 confidence (HxW, or ``None``) at ``output_size``, on the device."""
        key = ((int(output_size[0]), int(output_size[1])), bool(with_confidence))
        head = self._heads.get(key)
        if head is None:
            with torch.inference_mode(False):
                head = self._heads[key] = self._build_head(*key)
        with torch.inference_mode():
            out = head(image)
        return (out[0], out[1]) if with_confidence else (out, None)

    def prepare(self, output_size: tuple[int, int], with_confidence: bool = False) -> None:
        """Build or load what ``output_size`` needs and run it once, so the next call is fast."""
        image = torch.zeros((1, 3, *self.network_size), dtype=self.input_dtype, device=self.device)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        self.run(image, output_size, with_confidence)

    def describe(self) -> dict[str, Any]:
        """Facts worth reporting with a measurement (provider, compile mode, ...)."""
        return {"backend": self.name}
