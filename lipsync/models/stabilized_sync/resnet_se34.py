"""ResNetSE-34 audio encoder: the "Fast ResNet-34" of Chung et al., "In defence of metric learning for
speaker recognition" (the paper's [11]), in the layout of that paper's public trainer (ResNetSE34L).

* Stem: 7×7 conv, stride (2, 1) (halves the mel bins, keeps time), BN, ReLU; 16 channels.
* Four stages of squeeze-and-excitation basic blocks, [3, 4, 6, 3] blocks, 16/32/64/128 channels,
  first-block strides 1, 2, 2, 1. A block is 3×3 conv (stride) → ReLU → BN → 3×3 conv → BN → SE → + shortcut
  (1×1 strided conv + BN when the shape changes) → ReLU, the ReLU before the BN as in the trainer.
  SE: global average pool → Linear C → C/8 → ReLU → Linear → sigmoid → channel scale.
* Mean over the mel-bin axis, then self-attentive pooling (SAP) over time:
  w_t = softmax_t(vᵀ tanh(W h_t + b)), Σ_t w_t h_t (128 values), then Linear 128 → out_dim.

Input: the (B, 1, 80, T) Wav2Lip log-mel window as it is (no feature extraction or instance norm inside:
the trainer computes its own 40-band mel from the waveform, which this family does not use). On the
80 × 16 window the map before pooling is 128 × 10 × 4.
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync.models.stabilized_sync.resnet50 import projection_shortcut

SE34_BLOCKS = (3, 4, 6, 3)
SE34_CHANNELS = (16, 32, 64, 128)
SE34_STRIDES = (1, 2, 2, 1)
SE34_STEM_KERNEL = 7
SE34_STEM_STRIDE = (2, 1)  # (mel bins, time)
SE34_STEM_PADDING = 3
SE_REDUCTION = 8  # squeeze-and-excitation bottleneck: C → C/8 → C
SE34_FEATURES = SE34_CHANNELS[-1]  # 128: what SAP pools to
MEL_INPUT_CHANNELS = 1
MEL_BIN_AXIS = 2  # (B, C, bins, time)


class SqueezeExcitation(nn.Module):
    """Channel attention: x · sigmoid(Linear(ReLU(Linear(mean_hw x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // SE_REDUCTION),
            nn.ReLU(inplace=True),
            nn.Linear(channels // SE_REDUCTION, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))
        return x * scale[:, :, None, None]


class SEBasicBlock(nn.Module):
    """3×3 conv (stride) → ReLU → BN → 3×3 conv → BN → SE → + shortcut → ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(channels)
        self.downsample = projection_shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class SelfAttentivePooling(nn.Module):
    """(B, T, C) → (B, C): Σ_t softmax_t(vᵀ tanh(W h_t + b)) h_t."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        self.attention = nn.Parameter(torch.empty(channels, 1))
        nn.init.xavier_normal_(self.attention)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        scores = torch.tanh(self.linear(h)) @ self.attention  # (B, T, 1)
        weights = torch.softmax(scores, dim=1)
        return (h * weights).sum(dim=1)


class ResNetSE34(nn.Module):
    """(B, 1, 80, T) log-mel → (B, out_dim) (Fast ResNet-34 with SAP, the trainer's ResNetSE34L)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            MEL_INPUT_CHANNELS,
            SE34_CHANNELS[0],
            kernel_size=SE34_STEM_KERNEL,
            stride=SE34_STEM_STRIDE,
            padding=SE34_STEM_PADDING,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(SE34_CHANNELS[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_channels = SE34_CHANNELS[0]
        for blocks, channels, stride in zip(SE34_BLOCKS, SE34_CHANNELS, SE34_STRIDES, strict=True):
            layers: list[nn.Module] = []
            for index in range(blocks):
                layers.append(SEBasicBlock(in_channels, channels, stride if index == 0 else 1))
                in_channels = channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = SelfAttentivePooling(SE34_FEATURES)
        self.fc = nn.Linear(SE34_FEATURES, out_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(mels)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 128, 10, 4) for an 80 × 16 window
        frames = x.mean(dim=MEL_BIN_AXIS).transpose(1, 2)  # (B, T', 128)
        return self.fc(self.pool(frames))
