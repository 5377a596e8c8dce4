"""Training losses of the two papers, kept outside the networks.

* :class:`MultiScaleSupervisionLoss` (MFARANet's joint multi-scale supervision): cross-entropy on the
  fused output plus one loss per scale head. As in the authors' ``model_MFARANet.py``, every scale
  head's stride-4 logits are upsampled bilinearly (``align_corners=True``) to the label size and each
  term has weight 1. The authors' per-scale criterion in the released config is an OHEM cross-entropy
  (threshold 0.7, at least 100000 pixels kept) plus boundary terms; the boundary heads are not part of
  our networks (they are never used at inference), so those terms are left out.
* :class:`AuxiliaryLoss` (ATONet's multi-level auxiliary loss): main cross-entropy plus auxiliary
  classifiers 3, 4 and 5 by default, each at its own stride against labels downsampled with nearest
  neighbour sampling, all with weight 1 (``ATONet.py``: ``signal = [F, F, T, T, T]``).
* :class:`OhemCrossEntropy`: online hard example mining cross-entropy.

Label value 255 is ignored everywhere. Any other value outside ``[0, num_classes)`` raises
:class:`LabelRangeError` instead of the opaque device assert or silent garbage it would cause.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtseg_ros.datasets.labels import IGNORE_INDEX

__all__ = [
    "AuxiliaryLoss",
    "LabelRangeError",
    "MultiScaleSupervisionLoss",
    "OhemCrossEntropy",
    "build_loss",
    "check_label_range",
    "downsample_labels",
]

ATONET_AUX_HEADS: tuple[int, ...] = (1, 2, 3, 4, 5)


class LabelRangeError(ValueError):
    """A label map holds a value that is neither a class id nor the ignore value."""


def check_label_range(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX,
                      source: str = "labels") -> None:
    """Raise :class:`LabelRangeError` if ``labels`` holds a value outside ``[0, num_classes)`` and not ``ignore_index``."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()[:10]
        raise LabelRangeError(
            f"{source} hold value(s) {values} outside the {num_classes} classes [0, {num_classes - 1}] "
            f"and not the ignore value {ignore_index}: check the label set / num_classes, or map those "
            f"values to {ignore_index}"
        )


def downsample_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of a Bx HxW label map, sampling each output cell at its centre.

    Centre sampling (``nearest-exact``) is what the ATONet authors' PIL ``NEAREST`` resize does;
    labels are never blended.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[:, 0].to(labels.dtype)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only.

    A pixel is hard when the predicted probability of its true class is at most ``threshold``. If fewer
    than ``min_kept`` pixels are that hard, the threshold rises to keep the ``min_kept`` hardest; when a
    batch has no more than ``min_kept`` valid pixels, all of them count. Defaults (0.7, 100000) are those
    of the MFARANet authors' ``OhemCrossEntropy2dTensor``.
    """

    def __init__(self, threshold: float = 0.7, min_kept: int = 100_000, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"OHEM threshold must be in (0, 1], got {threshold}")
        if min_kept < 0:
            raise ValueError(f"OHEM min_kept must be >= 0, got {min_kept}")
        self.threshold = float(threshold)
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        valid = labels != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid <= self.min_kept or num_valid == 0:
            return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)
        with torch.no_grad():
            prob = F.softmax(logits.float(), dim=1)
            safe = labels.masked_fill(~valid, 0)
            true_prob = prob.gather(1, safe[:, None].long())[:, 0]
            true_prob = true_prob.masked_fill(~valid, 1.0)
            threshold = torch.tensor(self.threshold, device=logits.device)
            if self.min_kept > 0:
                kth = torch.kthvalue(true_prob[valid], self.min_kept).values
                threshold = torch.maximum(threshold, kth)
            hard = valid & (true_prob <= threshold)
        return F.cross_entropy(logits, labels.masked_fill(~hard, self.ignore_index), ignore_index=self.ignore_index)


def _plain_cross_entropy(ignore_index: int) -> nn.Module:
    return nn.CrossEntropyLoss(ignore_index=ignore_index)


class MultiScaleSupervisionLoss(nn.Module):
    """MFARANet's loss: ``CE(out) + scale_weight * sum_s criterion(upsample(scale_s))``.

    Args:
        num_classes: number of classes (labels are checked against it).
        scale_weight: weight of every per-scale term (1 in the authors' code).
        scale_criterion: loss for the scale heads; plain cross-entropy when ``None``. The authors use
            :class:`OhemCrossEntropy` there.
        ignore_index: label value left out.
    """

    def __init__(self, num_classes: int, scale_weight: float = 1.0, scale_criterion: nn.Module | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale_weight = float(scale_weight)
        self.ignore_index = ignore_index
        self.main_criterion = _plain_cross_entropy(ignore_index)
        self.scale_criterion = scale_criterion if scale_criterion is not None else _plain_cross_entropy(ignore_index)

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Return the total loss and its parts (as floats, for logging)."""
        check_label_range(labels, self.num_classes, self.ignore_index)
        size = labels.shape[-2:]
        total = self.main_criterion(_match_size(outputs["out"], size, align_corners=True), labels)
        parts = {"main": float(total.detach())}
        scale_keys = sorted(k for k in outputs if k.startswith("scale"))
        if not scale_keys:
            raise KeyError("MultiScaleSupervisionLoss needs the scale heads' logits ('scale1'..'scale4') from "
                           "model.forward_train")
        for key in scale_keys:
            term = self.scale_criterion(_match_size(outputs[key], size, align_corners=True), labels)
            parts[key] = float(term.detach())
            total = total + self.scale_weight * term
        return total, parts


class AuxiliaryLoss(nn.Module):
    """ATONet's loss: ``CE(out) + aux_weight * sum_k CE(aux_k, nearest-downsampled labels)``.

    Args:
        num_classes: number of classes (labels are checked against it).
        heads: which auxiliary classifiers (1..5) contribute; the authors use 3, 4 and 5.
        aux_weight: weight of every auxiliary term (1 in the authors' code).
        criterion: loss for every term; plain cross-entropy when ``None``.
        ignore_index: label value left out.
    """

    def __init__(self, num_classes: int, heads: Sequence[int] = (3, 4, 5), aux_weight: float = 1.0,
                 criterion: nn.Module | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        unknown = sorted(set(heads) - set(ATONET_AUX_HEADS))
        if unknown:
            raise ValueError(f"unknown ATONet auxiliary head(s) {unknown}; choose from {list(ATONET_AUX_HEADS)}")
        self.num_classes = num_classes
        self.heads = tuple(sorted(set(heads)))
        self.aux_weight = float(aux_weight)
        self.ignore_index = ignore_index
        self.criterion = criterion if criterion is not None else _plain_cross_entropy(ignore_index)

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Return the total loss and its parts (as floats, for logging)."""
        check_label_range(labels, self.num_classes, self.ignore_index)
        total = self.criterion(_match_size(outputs["out"], labels.shape[-2:], align_corners=False), labels)
        parts = {"main": float(total.detach())}
        for head in self.heads:
            key = f"aux{head}"
            if key not in outputs:
                raise KeyError(f"AuxiliaryLoss needs {key!r} from model.forward_train: build the model with "
                               f"training_heads=True")
            logits = outputs[key]
            term = self.criterion(logits, downsample_labels(labels, logits.shape[-2:]))
            parts[key] = float(term.detach())
            total = total + self.aux_weight * term
        return total, parts


def _match_size(logits: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def build_loss(model_name: str, num_classes: int, loss_config: Mapping[str, object]) -> nn.Module:
    """The paper's loss for ``model_name`` configured by a recipe's ``loss`` section.

    Keys: ``ohem`` (bool), ``ohem_threshold``, ``ohem_min_kept``, ``scale_weight`` (MFARANet),
    ``aux_heads`` and ``aux_weight`` (ATONet).
    """
    ohem = None
    if loss_config.get("ohem"):
        ohem = OhemCrossEntropy(float(loss_config.get("ohem_threshold", 0.7)),
                                int(loss_config.get("ohem_min_kept", 100_000)))
    if model_name == "mfaranet":
        return MultiScaleSupervisionLoss(num_classes, float(loss_config.get("scale_weight", 1.0)), ohem)
    if model_name == "atonet":
        heads = loss_config.get("aux_heads", (3, 4, 5))
        return AuxiliaryLoss(num_classes, tuple(int(h) for h in heads),  # type: ignore[union-attr]
                             float(loss_config.get("aux_weight", 1.0)), ohem)
    raise ValueError(f"no training loss for model {model_name!r}")
