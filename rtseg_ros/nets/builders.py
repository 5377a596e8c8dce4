"""``build_model``: the one way to construct a network by name."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from rtseg_ros.nets.atonet import ATONet
from rtseg_ros.nets.mfaranet import ALL_SCALES, MFARANet

MODEL_NAMES: tuple[str, ...] = ("mfaranet", "atonet")


def normalize_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Validates ``scales`` (a non-empty subset of {1, 2, 3, 4}, no repeats) and returns it sorted.

    Raises:
        ValueError: empty, repeated or out-of-range scales.
    """
    try:
        values = [int(s) for s in scales]
    except (TypeError, ValueError):
        raise ValueError(f"scales must be integers from {ALL_SCALES}, got {scales!r}") from None
    if not values:
        raise ValueError(f"scales must be a non-empty subset of {ALL_SCALES}")
    if len(set(values)) != len(values):
        raise ValueError(f"scales must not repeat, got {tuple(values)}")
    bad = [s for s in values if s not in ALL_SCALES]
    if bad:
        raise ValueError(f"scales must be taken from {ALL_SCALES}, got {tuple(values)}")
    return tuple(sorted(values))


def build_model(
    name: str,
    num_classes: int = 19,
    scales: Sequence[int] = ALL_SCALES,
    *,
    training_heads: bool = False,
) -> nn.Module:
    """Builds a float32 segmentation network with random weights (load weights with ``load_weights``).

    Args:
        name: one of ``MODEL_NAMES``.
        num_classes: number of output classes.
        scales: MFARANet only: the stages fused into the output; a single scale is the pruned model.
            ATONet accepts only the default.
        training_heads: ATONet: build the auxiliary classifiers returned by ``forward_train``.
            MFARANet's training outputs are its per-scale classifiers, which it always has.

    Returns:
        The model; ``model(x, output_size=None)`` maps a normalised RGB batch B x 3 x H x W to logits
        B x C x H x W (or ``output_size``), and ``model.forward_train(x)`` returns a dict of logits.

    Raises:
        ValueError: unknown name, bad ``num_classes`` or ``scales``.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    chosen = normalize_scales(scales)
    if key == "mfaranet":
        return MFARANet(num_classes, chosen)
    if chosen != ALL_SCALES:
        raise ValueError(f"ATONet has no scale selection; scales must stay {ALL_SCALES}, got {chosen}")
    return ATONet(num_classes, training_heads=training_heads)
