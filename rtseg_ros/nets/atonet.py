"""ATONet: ResNet-18 features from every stage projected to stride 4 and summed, plus pyramid pooling context.

Follows the authors' code (github.com/KTMomo/ATONet): a standard-stem ResNet-18, a spatial pyramid
pooling module on the last stage whose pooling grids keep the feature map's aspect ratio (bins 8/4/2
rows), five 128-channel projections (3x3 conv + BN, no activation) resized to stride 4 and summed,
then ReLU, a 3x3 conv-BN-ReLU, a classifier and a x4 bilinear upsample.

Input height and width must be multiples of 16: the projected stage-2 and stage-3 features are
upsampled by fixed factors and only line up with stride 4 for such sizes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtseg_ros.nets.encoder import ResNetEncoder
from rtseg_ros.nets.layers import ConvBNReLU

SIZE_DIVISOR = 16


class SpatialPyramidPooling(nn.Module):
    """Pools a projected feature map on grids of ``bin`` rows and ``round(bin * width / height)``
    columns, projects each pooled map, resizes it back and fuses everything with a 1x1 conv."""

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
            pooled = branch(F.adaptive_avg_pool2d(x, grid))
            pyramid.append(F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=True))
        return self.output_projection(torch.cat(pyramid, dim=1))


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


class ATONet(nn.Module):
    """ATONet with a standard-stem ResNet-18 encoder.

    Args:
        num_classes: number of output classes.
        bins: pooling grid rows of the pyramid pooling branches.
        training_heads: build the five auxiliary classifiers used for deep supervision (on the four
            encoder stages and on the pyramid pooling output, each at its own stride). They are never
            part of ``forward``.

    ``forward(x, output_size=None)``: ``x`` is a normalised RGB batch whose height and width are multiples
    of 16; returns logits at ``output_size`` (default: the input size).
    """

    model_name = "atonet"
    output_stride = 4
    scales: tuple[int, ...] = (1, 2, 3, 4)

    def __init__(
        self, num_classes: int = 19, bins: Sequence[int] = (8, 4, 2), *, training_heads: bool = False,
        channels: int = 128,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
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

    def _features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Returns the inputs of the five projections (for the auxiliary heads) and the stride-4 logits."""
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
        return features, self.classifier(self.fusion(self.relu(summed)))

    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        _, logits = self._features(x)
        return self._upsample(logits, output_size or x.shape[-2:])

    @staticmethod
    def _upsample(logits: Tensor, size: Sequence[int]) -> Tensor:
        # align_corners=False with size = 4x the logits equals the authors' scale_factor=4 resize.
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward_train(self, x: Tensor, output_size: Sequence[int] | None = None) -> dict[str, Tensor]:
        """``{"out": logits as forward}``, plus ``"aux1".."aux5"`` at their native strides (4, 8, 16, 32, 32)
        when built with ``training_heads=True``."""
        features, logits = self._features(x)
        outputs = {"out": self._upsample(logits, output_size or x.shape[-2:])}
        if self.aux_classifiers is not None:
            for index, feature in enumerate(features, start=1):
                outputs[f"aux{index}"] = self.aux_classifiers[f"aux{index}"](feature)
        return outputs
