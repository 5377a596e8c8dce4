"""ResNet-18 encoder returning the four feature maps at strides 4, 8, 16 and 32.

Parameter names follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1``..``layer4``) so ImageNet
weights load from a file without renaming:

* ``stem="standard"``: a 7x7 stride-2 convolution, as torchvision (ATONet's backbone).
* ``stem="deep"``: three 3x3 convolutions (64, 64, 128 channels) in ``conv1``, the layout of the MFARANet
  authors' ``resnet18-deep-inplane128.pth``; ``layer1`` then takes 128 channels and gets a projection shortcut.

``dilated=True`` dilates the second 3x3 convolution of every layer3 block by 2 and of every layer4 block by 4,
as MFARANet's released models do, while keeping all strides (so the output strides stay 4/8/16/32).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from rtseg_ros.nets.checkpoint import WeightsError, preview_keys, read_state_dict
from rtseg_ros.nets.layers import conv3x3

LOG = logging.getLogger(__name__)

Stem = Literal["standard", "deep"]
STEMS: tuple[str, ...] = ("standard", "deep")

# The MFARANet and ATONet authors both name the backbone layer0 (stem convolution(s), stem BN) and
# layer1..4 at the top level of their networks; the networks' checkpoint filters start from these renames.
UPSTREAM_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^layer0\.0\.", "encoder.conv1."),
    (r"^layer0\.1\.", "encoder.bn1."),
    (r"^layer([1-4])\.", r"encoder.layer\1."),
)


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet-18/34."""

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18 without its classifier; ``forward`` returns ``(c1, c2, c3, c4)``.

    Args:
        stem: ``"standard"`` (7x7 convolution) or ``"deep"`` (three 3x3 convolutions).
        dilated: dilate the second convolution of the layer3/layer4 blocks (2 and 4), keeping the strides.
    """

    out_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(self, stem: Stem = "standard", *, dilated: bool = False) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        self.stem = stem
        self.dilated = dilated
        stem_channels = 64
        if stem == "standard":
            self.conv1: nn.Module = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        else:
            stem_channels = 128
            self.conv1 = nn.Sequential(
                conv3x3(3, 64, stride=2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                conv3x3(64, 128),
            )
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilations = (1, 1, 2, 4) if dilated else (1, 1, 1, 1)
        self.layer1 = self._make_layer(stem_channels, 64, stride=1, dilation=dilations[0])
        self.layer2 = self._make_layer(64, 128, stride=2, dilation=dilations[1])
        self.layer3 = self._make_layer(128, 256, stride=2, dilation=dilations[2])
        self.layer4 = self._make_layer(256, 512, stride=2, dilation=dilations[3])
        self._init_weights()

    @staticmethod
    def _make_layer(in_channels: int, channels: int, stride: int, dilation: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_channels, channels, stride, dilation),
            BasicBlock(channels, channels, 1, dilation),
        )

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


def load_imagenet_weights(encoder_or_model: nn.Module, path: str | Path) -> list[str]:
    """Load ImageNet ResNet-18 weights from ``path`` into an encoder (or a model with an ``encoder``).

    Accepts torchvision's ``resnet18`` file for the standard stem and the MFARANet authors'
    ``resnet18-deep-inplane128.pth`` for the deep stem (also wrapped in ``state_dict``/``model`` or with a
    ``module.`` prefix). The ImageNet classifier (``fc.*``) is dropped.

    Returns:
        The encoder keys that were loaded (every one of them: a missing key is an error).

    Raises:
        WeightsError: unreadable file, wrong stem, or missing/mis-shaped keys.
    """
    encoder = encoder_or_model if isinstance(encoder_or_model, ResNetEncoder) else getattr(
        encoder_or_model, "encoder", None
    )
    if not isinstance(encoder, ResNetEncoder):
        raise TypeError(f"expected a ResNetEncoder or a model with an .encoder, got {type(encoder_or_model).__name__}")
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if state and all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit a ResNet-18 encoder with the {encoder.stem} stem: "
            f"missing {preview_keys(missing)}; unexpected {preview_keys(unexpected)}"
        )
    wrong_shape = [k for k in own if own[k].shape != state[k].shape]
    if wrong_shape:
        raise WeightsError(f"{path}: wrong shapes for {preview_keys(wrong_shape)}")
    dtype = next(encoder.parameters()).dtype
    encoder.load_state_dict(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True
    )
    LOG.info("loaded %d ImageNet tensors from %s into the %s-stem encoder", len(own), path, encoder.stem)
    return sorted(own)

