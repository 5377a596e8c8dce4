"""MFARANet: multi-scale features, flow alignment and attention-weighted scale fusion.

The structure and numerics follow the authors' released Cityscapes model (Zhang et al.; code at
github.com/Yanhua-Zhang/MFARANet): a deep-stem ResNet-18 with dilated layer3/layer4, lateral projections to
128 channels, a top-down and a bottom-up pyramid merged per stage, learned flow fields that warp every
coarser stage to stride 4, one classifier per stage ("scale") and a sigmoid attention that weights and
sums the per-scale logits.

``scales`` selects the stages whose logits form the output. A single scale is the "pruned" model: that
scale's classifier alone, no attention. Only the modules the chosen scales need are built and run: the
flow fields are chained from coarse to fine, so scale ``s`` needs the stage features 1..s and the flow
fields 1..s-1, while the top-down pyramid is always needed (stage 1 depends on every level).

The authors' parameter names and how they map to ours sit just before the model class
(:func:`checkpoint_filter_fn`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtseg_ros.names import ALL_SCALES
from rtseg_ros.nets.base import SegmentationModel, UpstreamCheckpoint
from rtseg_ros.nets.checkpoint import KeyMap, WeightsError, rename_state_dict
from rtseg_ros.nets.encoder import UPSTREAM_KEY_RULES, ResNetEncoder
from rtseg_ros.nets.layers import ConvBNReLU
from rtseg_ros.nets.registry import register_model


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    # The authors use align_corners=True for every bilinear resize in this network.
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class DualPyramidAggregation(nn.Module):
    """Top-down and bottom-up feature pyramids, merged into one feature map per stage (the paper's
    multi-level feature aggregation module, MFAM).

    Both pyramids move between levels by bilinear resizing, add the lateral feature, and refine with a
    3x3 conv-BN-ReLU. Stage 1 is the top-down result, stage 4 the bottom-up result, stages 2 and 3 a
    refined sum of both.

    Args:
        channels: width of every level.
        num_stages: how many stage features (1..4, finest first) the caller needs; the bottom-up steps
            and merges beyond it are not built.
    """

    def __init__(self, channels: int, num_stages: int) -> None:
        super().__init__()
        self.num_stages = num_stages
        # top_down[i] produces the level i+1 (0-based i: level 1..3); all are needed for stage 1.
        self.top_down = nn.ModuleList(ConvBNReLU(channels, channels) for _ in range(3))
        # bottom_up[i] produces level i+2 from level i+1.
        self.bottom_up = nn.ModuleList(ConvBNReLU(channels, channels) for _ in range(num_stages - 1))
        # merge[i] fuses both pyramids at level i+2 (levels 2 and 3 only).
        self.merge = nn.ModuleList(ConvBNReLU(channels, channels) for _ in range(min(num_stages, 3) - 1))

    def forward(self, laterals: Sequence[Tensor]) -> list[Tensor]:
        top_down = [laterals[3]]
        for level in (2, 1, 0):
            coarser = _resize(top_down[0], laterals[level].shape[-2:])
            top_down.insert(0, self.top_down[level](coarser + laterals[level]))

        bottom_up = [laterals[0]]
        for level in range(1, self.num_stages):
            finer = _resize(bottom_up[-1], laterals[level].shape[-2:])
            bottom_up.append(self.bottom_up[level - 1](finer + laterals[level]))

        stages = [top_down[0]]
        for level in range(1, self.num_stages):
            if level == 3:
                stages.append(bottom_up[3])
            else:
                stages.append(self.merge[level - 1](top_down[level] + bottom_up[level]))
        return stages


class FlowAlignment(nn.Module):
    """Predicts a flow field that resamples a coarse stage onto the grid of the next finer stage (one
    step of the paper's recursive alignment module, RAM).

    The flow comes from both unwarped neighbours: the coarse feature (resized) and the fine one,
    each projected to half width, concatenated fine-first and passed through a 3x3 convolution.
    The flow is in pixels of the fine grid and is divided by the fine grid's width and height (not half
    of them) before it offsets the normalised sampling grid, as in the released model.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.coarse_projection = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.fine_projection = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.flow = nn.Conv2d(channels, 2, 3, padding=1, bias=False)

    def sampling_grid(self, fine: Tensor, coarse: Tensor) -> Tensor:
        """Returns the ``grid_sample`` grid (B x h x w x 2, (x, y) order) at the fine feature's size."""
        height, width = fine.shape[-2:]
        coarse = _resize(self.coarse_projection(coarse), (height, width))
        flow = self.flow(torch.cat([self.fine_projection(fine), coarse], dim=1))
        xs = torch.linspace(-1.0, 1.0, width, dtype=flow.dtype, device=flow.device).view(1, 1, width)
        ys = torch.linspace(-1.0, 1.0, height, dtype=flow.dtype, device=flow.device).view(1, height, 1)
        return torch.stack((xs + flow[:, 0] / width, ys + flow[:, 1] / height), dim=-1)

    @staticmethod
    def warp(x: Tensor, grid: Tensor) -> Tensor:
        """Resamples ``x`` (the coarse stage) on ``grid``."""
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class ScaleFusion(nn.Module):
    """Weights each scale's logits by a per-class sigmoid attention computed from that scale's
    feature, then sums them with no normalisation across scales (the paper's adaptive scores fusion
    module, ASFM)."""

    def __init__(self, scales: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.attention = nn.ModuleDict(
            {
                f"scale{s}": nn.Sequential(
                    nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels // 2),
                    nn.ReLU(inplace=True),
                    nn.Dropout(0.5),
                    nn.Conv2d(channels // 2, num_classes, 1, bias=False),
                    nn.Sigmoid(),
                )
                for s in scales
            }
        )

    def forward(self, features: dict[int, Tensor], logits: dict[int, Tensor]) -> Tensor:
        fused: Tensor | None = None
        for scale, feature in features.items():
            weighted = logits[scale] * self.attention[f"scale{scale}"](feature)
            fused = weighted if fused is None else fused + weighted
        assert fused is not None
        return fused


# --------------------------------------------------------------------------------------------------
# The authors' checkpoints: class ``MFARANet`` (``layerN.<block>``, ``HMSA_attentions``) or
# ``MFARANet_Scale_Choice`` (``layerN.0.<block>``, ``ASFM_attentions``), saved as
# ``{"epoch", "state_dict", "optimizer"}`` with ``module.`` prefixes (the generic loader unwraps those).

_UPSTREAM_RULES = (
    *UPSTREAM_KEY_RULES,
    (r"^channel_changes\.", "lateral_projections."),
    (r"^feature_fuses_up\.", "aggregation.top_down."),
    (r"^feature_fuses_down\.", "aggregation.bottom_up."),
    (r"^stage_fuses\.", "aggregation.merge."),
    (r"^stages_offset\.(\d+)\.channel_change1\.", r"alignments.\1.coarse_projection."),
    (r"^stages_offset\.(\d+)\.channel_change2\.", r"alignments.\1.fine_projection."),
    (r"^stages_offset\.(\d+)\.offset_map\.", r"alignments.\1.flow."),
    (r"^multi_loss_head\.(\d+)\.0\.", lambda m: f"scale_heads.scale{int(m[1]) + 1}."),
)
# Boundary heads, the auxiliary head and the loss's class weights only serve training upstream.
_TRAINING_ONLY = ("boundary_heads.", "aux_head.", "criterion.")
_ATTENTION = re.compile(r"^(?:HMSA|ASFM)_attentions\.(\d+)\.")
_SCALE_CHOICE_LAYER = re.compile(r"^layer([1-4])\.0\.(\d+\.)")


def checkpoint_filter_fn(state: Mapping[str, Tensor], model: SegmentationModel) -> tuple[dict[str, Tensor], list[str]]:
    """Renames an official MFARANet state_dict (either upstream class) to our names.

    Returns:
        (renamed state_dict, ignored training-only keys).

    Raises:
        WeightsError: keys no rule knows, or attention heads whose scales cannot be told.
    """
    if any(_SCALE_CHOICE_LAYER.match(k) for k in state):
        # MFARANet_Scale_Choice wraps each ResNet layer in a Sequential: layerN.0.<block> -> layerN.<block>.
        state = {_SCALE_CHOICE_LAYER.sub(r"layer\1.\2", k): v for k, v in state.items()}
    attention_ids = sorted({int(m[1]) for k in state if (m := _ATTENTION.match(k))})
    if len(attention_ids) == len(ALL_SCALES):
        attention_scales = {j: j + 1 for j in attention_ids}  # heads 0..3 of scales 1..4
    elif attention_ids and len(attention_ids) == len(model.scales):
        # Upstream numbers the attention heads by position among the chosen scales.
        attention_scales = dict(zip(attention_ids, model.scales))
    elif attention_ids:
        raise WeightsError(
            f"checkpoint has {len(attention_ids)} scale-attention heads, which cannot be matched to the "
            f"model's scales {model.scales}"
        )
    else:
        attention_scales = {}
    key_map = KeyMap(
        (_ATTENTION.pattern, lambda m: f"fusion.attention.scale{attention_scales[int(m[1])]}."),
        *_UPSTREAM_RULES,
    )
    return rename_state_dict(state, key_map, network="MFARANet", ignore=_TRAINING_ONLY)


UPSTREAM = UpstreamCheckpoint(
    markers=("channel_changes.", "multi_loss_head.", "stages_offset."), filter_fn=checkpoint_filter_fn
)


@register_model("mfaranet", upstream=UPSTREAM)
class MFARANet(SegmentationModel):
    """MFARANet with a deep-stem, dilated ResNet-18 encoder.

    Args:
        num_classes: number of output classes.
        scales: non-empty subset of {1, 2, 3, 4}: the stages (1 = stride 4 ... 4 = stride 32) whose
            classifiers form the output. One scale gives the pruned model.
        training_heads: accepted for the common signature; the training outputs are the per-scale
            classifiers, which the model always has.
        channels: decoder width (128 in the released models).

    ``forward(x, output_size=None)`` takes a normalised RGB batch of any size and returns logits at
    ``output_size`` (default: the input size). ``forward_train`` also returns each scale's logits at stride 4
    (``"scaleN"``).
    """

    scale_selection = True
    output_stride = 4
    align_corners = True  # the authors use align_corners=True for every bilinear resize in this network

    def __init__(
        self, num_classes: int = 19, scales: Sequence[int] = ALL_SCALES, *, training_heads: bool = False,
        channels: int = 128,
    ) -> None:
        super().__init__(num_classes, scales)
        num_stages = max(self.scales)
        self.encoder = ResNetEncoder("deep", dilated=True)
        self.lateral_projections = nn.ModuleList(
            ConvBNReLU(c, channels, kernel_size=1) for c in self.encoder.out_channels
        )
        self.aggregation = DualPyramidAggregation(channels, num_stages)
        # alignments[i] warps stage i+2 onto stage i+1's grid; the chain runs down to stage 1.
        self.alignments = nn.ModuleList(FlowAlignment(channels) for _ in range(num_stages - 1))
        self.scale_heads = nn.ModuleDict({f"scale{s}": nn.Conv2d(channels, num_classes, 1) for s in self.scales})
        self.fusion = ScaleFusion(self.scales, channels, num_classes) if len(self.scales) > 1 else None

    def _scale_logits(self, x: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Aligned stride-4 features and logits of every chosen scale."""
        encoded = self.encoder(x)
        laterals = [project(c) for project, c in zip(self.lateral_projections, encoded)]
        stages = self.aggregation(laterals)
        # Every grid is computed from unwarped neighbours, before any stage is resampled.
        grids = [align.sampling_grid(stages[i], stages[i + 1]) for i, align in enumerate(self.alignments)]
        features: dict[int, Tensor] = {}
        for scale in self.scales:
            feature = stages[scale - 1]
            for level in range(scale - 2, -1, -1):
                feature = FlowAlignment.warp(feature, grids[level])
            features[scale] = feature
        logits = {s: self.scale_heads[f"scale{s}"](f) for s, f in features.items()}
        return features, logits

    def logits(self, x: Tensor, *, training_outputs: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        features, logits = self._scale_logits(x)
        fused = logits[self.scales[0]] if self.fusion is None else self.fusion(features, logits)
        return fused, ({f"scale{s}": v for s, v in logits.items()} if training_outputs else {})
