"""Small building blocks shared by the networks."""
from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> ReLU, indexed 0/1/2 like torchvision's ``Conv2dNormActivation``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A 3x3 convolution without bias whose padding keeps the size (up to the stride)."""
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )
