"""ATONet: ResNet-18 features from every stage projected to stride 4 and summed, plus pyramid pooling context.

Follows the authors' code (github.com/KTMomo/ATONet): a standard-stem ResNet-18, a spatial pyramid
pooling module on the last stage whose pooling grids keep the feature map's aspect ratio (bins 8/4/2
rows), five 128-channel projections (3x3 conv + BN, no activation) resized to stride 4 and summed,
then ReLU, a 3x3 conv-BN-ReLU, a classifier and a x4 bilinear upsample.

Input height and width must be multiples of 16: the projected stage-2 and stage-3 features are
upsampled by fixed factors and only line up with stride 4 for such sizes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtseg_ros.names import ALL_SCALES
from rtseg_ros.nets.base import SegmentationModel, UpstreamCheckpoint
from rtseg_ros.nets.checkpoint import KeyMap, rename_state_dict
from rtseg_ros.nets.encoder import UPSTREAM_KEY_RULES, ResNetEncoder
from rtseg_ros.nets.layers import ConvBNReLU
from rtseg_ros.nets.registry import register_model

SIZE_DIVISOR = 16


class SpatialPyramidPooling(nn.Module):
    """Pools a projected feature map on grids of ``bin`` rows and ``round(bin * width / height)``
    columns, projects each pooled map, resizes it back and fuses everything with a 1x1 conv.

    The pooling is :meth:`average_pool`, not ``F.adaptive_avg_pool2d``: the same numbers, built from
    static slices and means that every exporter and compiler takes as they are (Torch-TensorRT's
    adaptive pooling converter uses one uniform window and is wrong when the grid does not divide
    the feature map, e.g. at 480x640 or 384x640 inputs).
    """

    def __init__(self, in_channels: int = 512, branch_channels: int = 128, bins: Sequence[int] = (8, 4, 2)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.input_projection = ConvBNReLU(in_channels, in_channels, kernel_size=1)
        self.branches = nn.ModuleList(
            ConvBNReLU(in_channels, branch_channels, kernel_size=1) for _ in self.bins
        )
        self.output_projection = ConvBNReLU(
            in_channels + branch_channels * len(self.bins), branch_channels, kernel_size=1
        )

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = self.input_projection(x)
        pyramid = [x]
        for bins, branch in zip(self.bins, self.branches):
            # Python's round (half to even) as in the authors' code: grid sizes must match exactly.
            grid = (bins, max(1, round(bins * width / height)))
            pooled = branch(self.average_pool(x, grid))
            pyramid.append(F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=True))
        return self.output_projection(torch.cat(pyramid, dim=1))

    @staticmethod
    def average_pool(x: Tensor, grid: tuple[int, int]) -> Tensor:
        """``F.adaptive_avg_pool2d(x, grid)`` (NCHW) as slices and means with sizes fixed at trace time.

        PyTorch's adaptive window ``i`` of ``m`` along a dimension of size ``n`` spans
        ``[floor(i * n / m), ceil((i + 1) * n / m))``; windows overlap when ``m`` does not divide ``n``.
        Every 2-D window is a product of a row and a column window, so pooling the rows first and
        then the columns averages exactly the same pixels.
        """
        for dim, bins in ((2, int(grid[0])), (3, int(grid[1]))):
            size = int(x.shape[dim])
            if bins == size:
                continue
            windows = []
            for i in range(bins):
                start, stop = (i * size) // bins, -((-(i + 1) * size) // bins)
                windows.append(x.narrow(dim, start, stop - start).mean(dim, keepdim=True))
            x = torch.cat(windows, dim=dim)
        return x


class FeatureProjection(nn.Sequential):
    """3x3 conv + BN without activation: the five projections are summed before a shared ReLU."""

    def __init__(self, in_channels: int, out_channels: int = 128) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )


def _classifier(in_channels: int, hidden: int, num_classes: int, dropout: float | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
    ]
    if dropout is not None:
        layers.append(nn.Dropout2d(dropout))
    layers.append(nn.Conv2d(hidden, num_classes, 1))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------------
# The authors' checkpoints: bare state_dicts of their ``ATONet`` class. The auxiliary classifiers
# (``aux_clsN``) are loaded into models built with ``training_heads=True`` and ignored otherwise.

_UPSTREAM_KEYS = KeyMap(
    *UPSTREAM_KEY_RULES,
    (r"^up([1-5])\.blend_conv\.", lambda m: f"projections.{int(m[1]) - 1}."),
    (r"^spp\.conv1\.", "context.input_projection."),
    (r"^spp\.features\.", "context.branches."),
    (r"^spp\.conv2\.", "context.output_projection."),
    (r"^final_ocnv\.", "fusion."),
    (r"^cls\.", "classifier."),
    (r"^aux_cls([1-5])\.", r"aux_classifiers.aux\1."),
)
_TRAINING_ONLY = ("criterion.",)  # the loss's class weights


def checkpoint_filter_fn(state: Mapping[str, Tensor], model: SegmentationModel) -> tuple[dict[str, Tensor], list[str]]:
    """Renames an official ATONet state_dict to our names; returns (renamed, ignored keys).

    Raises:
        WeightsError: keys no rule knows.
    """
    return rename_state_dict(state, _UPSTREAM_KEYS, network="ATONet", ignore=_TRAINING_ONLY)


UPSTREAM = UpstreamCheckpoint(markers=("up1.blend_conv.", "spp.", "final_ocnv."), filter_fn=checkpoint_filter_fn)


@register_model("atonet", upstream=UPSTREAM)
class ATONet(SegmentationModel):
    """ATONet with a standard-stem ResNet-18 encoder. It has no scale selection.

    Args:
        num_classes: number of output classes.
        scales: accepted for the common signature; only the default (all of them) is valid.
        training_heads: build the five auxiliary classifiers used for deep supervision (on the four
            encoder stages and on the pyramid pooling output, each at its own stride). They are never
            part of ``forward``; ``forward_train`` returns them as ``"aux1".."aux5"``.
        bins: pooling grid rows of the pyramid pooling branches.
        channels: decoder width (128 in the released models).

    ``forward(x, output_size=None)``: ``x`` is a normalised RGB batch whose height and width are multiples
    of 16; returns logits at ``output_size`` (default: the input size).
    """

    output_stride = 4
    # align_corners=False with size = 4x the logits equals the authors' scale_factor=4 resize.
    align_corners = False

    def __init__(
        self, num_classes: int = 19, scales: Sequence[int] = ALL_SCALES, *, training_heads: bool = False,
        bins: Sequence[int] = (8, 4, 2), channels: int = 128,
    ) -> None:
        super().__init__(num_classes, scales)
        self.encoder = ResNetEncoder("standard")
        self.context = SpatialPyramidPooling(512, channels, bins)
        in_channels = (*self.encoder.out_channels, channels)
        self.projections = nn.ModuleList(FeatureProjection(c, channels) for c in in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.fusion = ConvBNReLU(channels, channels)
        self.classifier = _classifier(channels, channels, num_classes, dropout=0.1)
        self.aux_classifiers: nn.ModuleDict | None = None
        if training_heads:
            # Hidden width 128, except 64 on the 64-channel stage, as in the authors' code.
            self.aux_classifiers = nn.ModuleDict(
                {
                    f"aux{i + 1}": _classifier(c, min(c, channels), num_classes, dropout=None)
                    for i, c in enumerate(in_channels)
                }
            )

    def _check_size(self, x: Tensor) -> None:
        height, width = x.shape[-2:]
        if height % SIZE_DIVISOR or width % SIZE_DIVISOR:
            raise ValueError(
                f"ATONet needs input height and width that are multiples of {SIZE_DIVISOR}, got {height}x{width}; "
                f"resize or pad the image (e.g. to {-(-height // SIZE_DIVISOR) * SIZE_DIVISOR}x"
                f"{-(-width // SIZE_DIVISOR) * SIZE_DIVISOR})"
            )

    def logits(self, x: Tensor, *, training_outputs: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Stride-4 logits and, if ``training_outputs`` and the model has them, the auxiliary logits
        ``"aux1".."aux5"`` at their native strides (4, 8, 16, 32, 32)."""
        self._check_size(x)
        c1, c2, c3, c4 = self.encoder(x)
        features = [c1, c2, c3, c4, self.context(c4)]
        p1, p2, p3, p4, p5 = (project(f) for project, f in zip(self.projections, features))
        quarter = (x.shape[-2] // 4, x.shape[-1] // 4)
        # Stages 2 and 3 are upsampled by fixed factors, the rest to the stride-4 size, as the authors do;
        # the sizes agree because H and W are multiples of 16.
        summed = (
            p1
            + F.interpolate(p2, scale_factor=2, mode="bilinear", align_corners=False)
            + F.interpolate(p3, scale_factor=4, mode="bilinear", align_corners=False)
            + F.interpolate(p4, size=quarter, mode="bilinear", align_corners=False)
            + F.interpolate(p5, size=quarter, mode="bilinear", align_corners=False)
        )
        logits = self.classifier(self.fusion(self.relu(summed)))
        auxiliary: dict[str, Tensor] = {}
        if training_outputs and self.aux_classifiers is not None:
            for index, feature in enumerate(features, start=1):
                auxiliary[f"aux{index}"] = self.aux_classifiers[f"aux{index}"](feature)
        return logits, auxiliary
