"""PyTorch backends: eager (``torch``) and ``torch.compile`` (``compile``)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rtseg_ros.engines.base import EngineSpec, InferenceEngine, LogitsFinish, NetworkBody, SegmentationHead

LOG = logging.getLogger(__name__)


def _use_inductor_cache(directory: Path) -> None:
    """Point inductor's on-disk cache at ``directory`` unless the user chose a location.

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` and writes its own default there on first use
    (torch.onnx's exporter does too), so a value equal to that default was not the user's choice.
    """
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        inductor_default = default_cache_dir()
    except ImportError:  # private module moved: only honour an unset variable
        inductor_default = None
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current == inductor_default:
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)


class TorchEngine(InferenceEngine):
    """Eager PyTorch in inference mode, channels_last, fp32 (or fp16 on CUDA)."""

    concurrent_finishes = True  # torch's kernels (eager and inductor's) release the GIL and share no state

    name = "torch"
    builds_per_variant = False
    labels_by_cells = True
    # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolution layouts, and
    # the logits come out channels_last, which makes the per-pixel argmax a contiguous reduction.
    channels_last = True

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        self.input_dtype = torch.float16 if spec.config.precision == "fp16" else torch.float32
        self.model = spec.model.to(device=self.device, dtype=self.input_dtype, memory_format=torch.channels_last)
        self.model.eval()

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        return SegmentationHead(self.model, output_size, with_confidence)

    def _build_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return NetworkBody(self.model)


class CompiledEngine(TorchEngine):
    """The segmentation head through ``torch.compile`` (inductor), one compilation per output size.

    Shapes are static (dynamic shapes would lose the static pooling grids) and the argmax is part of
    the compiled graph, so inductor fuses the last logits interpolation into it. Compiled code and
    inductor's FX graph cache live under ``<cache_dir>/inductor`` (``TORCHINDUCTOR_CACHE_DIR``), so
    a restart reuses them. On CUDA the ``reduce-overhead`` mode also records CUDA graphs.
    """

    name = "compile"
    builds_per_variant = True
    labels_by_cells = False  # inductor fuses the resize into the argmax already

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        _use_inductor_cache(spec.config.resolved_cache_dir() / "inductor")
        self.mode = "reduce-overhead" if self.device.type == "cuda" else None

    def _build_head(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        return self._compile(SegmentationHead(self.model, output_size, with_confidence))

    def _build_body(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network body compiled twice at most: batch 1, and one graph dynamic in the batch size for
        2 to ``max_batch`` (height and width stay static, which keeps the pooling grids exact)."""
        compiled = self._compile(NetworkBody(self.model))
        dynamic_from = 2 if self.max_batch > 2 else None

        def run(images: torch.Tensor) -> torch.Tensor:
            if dynamic_from is not None and images.shape[0] >= dynamic_from:
                # Dynamo would specialise on the first batch size seen and recompile for every other.
                torch._dynamo.mark_dynamic(images, 0, min=dynamic_from, max=self.max_batch)
            return compiled(images)

        return run

    def _build_finish(self, output_size: tuple[int, int], with_confidence: bool) -> Callable[[torch.Tensor], Any]:
        # Inductor fuses the resize into the argmax (full-size logits are never written): measured here
        # 3-5x faster than eager at 1024x2048, for a compile of a few seconds per output size.
        return self._compile(LogitsFinish(self.model, output_size, with_confidence))

    def _compile(self, module: torch.nn.Module) -> Callable[[torch.Tensor], Any]:
        compiled = torch.compile(module, mode=self.mode, dynamic=False)
        if self.mode != "reduce-overhead":
            return compiled

        def run_and_keep(tensor: torch.Tensor) -> Any:
            # CUDA-graph outputs are overwritten by the next replay; the caller keeps these.
            out = compiled(tensor)
            return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

        return run_and_keep

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "compile_mode": self.mode or "default",
                "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
