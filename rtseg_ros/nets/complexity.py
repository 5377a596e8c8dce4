"""Parameters and FLOPs of a network's inference graph, measured without real computation.

The model is built on PyTorch's ``meta`` device, so nothing is allocated or computed and a 1024x2048
measurement takes well under a second. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``,
which counts 2 FLOPs per multiply-add of convolutions and matrix products; resizes, grid sampling,
pooling, normalisation and element-wise operations are not counted. Parameters are those of the modules
that actually run in ``forward`` (training-only heads are excluded).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rtseg_ros.names import ALL_SCALES, normalize_scales
from rtseg_ros.nets.registry import build_model

FLOPS_NOTE = (
    "FLOPs = 2 x multiply-adds of convolutions/matmuls (torch FlopCounterMode); "
    "resizes, grid sampling, pooling and element-wise ops are not counted"
)


@dataclass(frozen=True)
class ModelComplexity:
    """Cost of one forward pass at batch size 1."""

    model: str
    scales: tuple[int, ...]
    num_classes: int
    height: int
    width: int
    parameters: int
    flops: int

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def mparams(self) -> float:
        return self.parameters / 1e6

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "scales": list(self.scales), "gflops": self.gflops, "flops_note": FLOPS_NOTE}


def inference_cost(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Returns ``(parameters, flops)`` of one forward pass of ``model`` on a 1x3xHxW input.

    Parameters are counted over the modules that ran. The model should live on the ``meta`` device
    (see ``measure_complexity``) unless a real forward pass is intended.
    """
    called: set[nn.Module] = set()
    hooks = [m.register_forward_hook(lambda module, _i, _o: called.add(module)) for m in model.modules()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, height, width, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    parameters = sum(p.numel() for module in called for p in module.parameters(recurse=False))
    return parameters, int(counter.get_total_flops())


def measure_complexity(
    name: str,
    *,
    scales: Sequence[int] = ALL_SCALES,
    height: int = 1024,
    width: int = 2048,
    num_classes: int = 19,
) -> ModelComplexity:
    """Parameters and FLOPs of ``build_model(name, num_classes, scales)`` in eval mode at ``height`` x ``width``.

    Raises:
        ValueError: bad model name, scales or size (e.g. ATONet with sizes not divisible by 16).
    """
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {height}x{width}")
    chosen = normalize_scales(scales)
    with torch.device("meta"):
        model = build_model(name, num_classes, chosen).eval()
    parameters, flops = inference_cost(model, height, width)
    return ModelComplexity(name, chosen, num_classes, height, width, parameters, flops)
