"""ResNet-50 (He et al., "Deep residual learning for image recognition"), the trunk without its classifier.

AVSyncNet's image encoder. Written out here so no torchvision is needed: bottleneck blocks
(1×1 → 3×3 → 1×1, expansion 4) in stages of 3, 4, 6, 3 with widths 64, 128, 256, 512, the stride on the
3×3 conv ("v1.5", as torchvision), a 1×1 strided projection + BN on the shortcut when the shape changes,
global average pooling to 2048 values. Only `in_channels` of the first conv may differ from the standard
3; with 3 it has exactly torchvision's 23,508,032 trunk parameters (resnet50 without `fc`).
"""

from __future__ import annotations

import torch
from torch import nn

RESNET50_BLOCKS = (3, 4, 6, 3)  # bottleneck blocks per stage
RESNET50_WIDTHS = (64, 128, 256, 512)  # inner width of each stage's blocks
RESNET50_STRIDES = (1, 2, 2, 2)  # first block of each stage
BOTTLENECK_EXPANSION = 4  # block output = 4 × inner width
RESNET50_STEM_CHANNELS = 64
RESNET50_STEM_KERNEL = 7
RESNET50_STEM_STRIDE = 2
RESNET50_STEM_PADDING = 3
RESNET50_POOL_KERNEL = 3
RESNET50_POOL_STRIDE = 2
RESNET50_POOL_PADDING = 1
RESNET50_FEATURES = RESNET50_WIDTHS[-1] * BOTTLENECK_EXPANSION  # 2048
RGB_CHANNELS = 3


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """A residual block's shortcut where its shape changes (1×1 strided conv + BN); None where it does not."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class Bottleneck(nn.Module):
    """1×1 → BN → ReLU → 3×3 (stride) → BN → ReLU → 1×1 → BN, + shortcut, → ReLU."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet50(nn.Module):
    """(B, in_channels, H, W) → (B, 2048): stem, max-pool, four bottleneck stages, global average pool."""

    def __init__(self, in_channels: int = RGB_CHANNELS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels,
            RESNET50_STEM_CHANNELS,
            kernel_size=RESNET50_STEM_KERNEL,
            stride=RESNET50_STEM_STRIDE,
            padding=RESNET50_STEM_PADDING,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(RESNET50_STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(RESNET50_POOL_KERNEL, RESNET50_POOL_STRIDE, RESNET50_POOL_PADDING)
        stages: list[nn.Module] = []
        channels = RESNET50_STEM_CHANNELS
        for blocks, width, stride in zip(RESNET50_BLOCKS, RESNET50_WIDTHS, RESNET50_STRIDES, strict=True):
            layers: list[nn.Module] = []
            for index in range(blocks):
                layers.append(Bottleneck(channels, width, stride if index == 0 else 1))
                channels = width * BOTTLENECK_EXPANSION
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)
