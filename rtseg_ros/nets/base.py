"""What every segmentation network of the package is: :class:`SegmentationModel`.

The base class holds the contract the engines, the trainer and the weight loader rely on, so none of
them needs to know which network it has:

* ``model_name`` (set by :func:`~rtseg_ros.nets.registry.register_model`), ``num_classes`` and
  ``scales`` (validated here, once, for every network);
* ``forward(x, output_size=None)``: logits resized to ``output_size`` (default: the input size) by the
  network's own final resize;
* ``forward_train(x, output_size=None)``: the same logits under ``"out"`` plus the training outputs
  (per-scale or auxiliary logits at their native strides).

A subclass implements :meth:`SegmentationModel.logits` only.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from rtseg_ros.names import ALL_SCALES, normalize_scales


class SegmentationModel(nn.Module):
    """Base class of the networks: a normalised RGB batch B x 3 x H x W in, class logits out.

    Subclasses take ``(num_classes, scales, *, training_heads)`` as their first arguments, so that
    :func:`~rtseg_ros.nets.registry.build_model` and the weight loader can build any of them, and
    implement :meth:`logits`.

    Attributes:
        model_name: the registry name (``mfaranet``, ``atonet``).
        scale_selection: whether the network can drop prediction scales (MFARANet's stages).
        output_stride: stride of the logits before the final resize.
        align_corners: ``align_corners`` of the final bilinear resize, as in the authors' code.
        num_classes: number of output classes.
        scales: the prediction scales in use, sorted. A network without scale selection has one
            setting, always :data:`~rtseg_ros.names.ALL_SCALES` (the value configurations, caches and
            weight files record for it), so callers never need to ask which kind they hold.
    """

    model_name: ClassVar[str] = ""
    scale_selection: ClassVar[bool] = False
    output_stride: ClassVar[int]
    align_corners: ClassVar[bool]

    def __init__(self, num_classes: int, scales: Sequence[int] = ALL_SCALES) -> None:
        """Raises ``ValueError`` for a bad class count or scales (any scales but all of them, for a
        network without scale selection)."""
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        chosen = normalize_scales(scales)
        if not self.scale_selection and chosen != ALL_SCALES:
            raise ValueError(
                f"{type(self).__name__} has no scale selection; scales must stay {ALL_SCALES}, got {chosen}")
        self.num_classes = num_classes
        self.scales: tuple[int, ...] = chosen

    def logits(self, x: Tensor, *, training_outputs: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The network proper: logits at ``output_stride`` and, if ``training_outputs``, the named
        training outputs (empty otherwise, and always empty at inference)."""
        raise NotImplementedError

    def resize_logits(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """The network's final bilinear resize of its logits to ``size`` (height, width)."""
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Logits B x C x H x W of a normalised RGB batch, at ``output_size`` (default: the input size).

        Resizing straight to the wanted size (the camera frame's) keeps one interpolation between
        the network and the labels, which compiling backends fuse into the argmax.
        """
        logits, _ = self.logits(x)
        return self.resize_logits(logits, output_size or x.shape[-2:])

    def forward_train(self, x: Tensor, output_size: Sequence[int] | None = None) -> dict[str, Tensor]:
        """``{"out": logits as forward}`` plus the network's training outputs at their native strides."""
        logits, extra = self.logits(x, training_outputs=True)
        return {"out": self.resize_logits(logits, output_size or x.shape[-2:]), **extra}


CheckpointFilter = Callable[[Mapping[str, Tensor], SegmentationModel], tuple[dict[str, Tensor], list[str]]]


@dataclass(frozen=True)
class UpstreamCheckpoint:
    """How a network's authors named its parameters in their released checkpoints.

    Registered with the network (``register_model(name, upstream=...)``); the generic loader in
    :mod:`rtseg_ros.nets.checkpoint` uses it to tell whose file it holds and to rename it.

    Attributes:
        markers: key prefixes that only this network's upstream files have.
        filter_fn: ``(state_dict, model) -> (state_dict in our names, ignored training-only keys)``,
            the counterpart of timm's ``checkpoint_filter_fn``; raises ``WeightsError`` for keys it
            does not know.
    """

    markers: tuple[str, ...]
    filter_fn: CheckpointFilter

    def recognizes(self, state: Mapping[str, Tensor]) -> bool:
        """Whether ``state`` uses this network's upstream names."""
        return any(key.startswith(self.markers) for key in state)
