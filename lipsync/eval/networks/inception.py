"""The InceptionV3 of pytorch-fid (mseitzer/pytorch-fid), whose pool3 features define FID.

The module and parameter names are torchvision's `Inception3` (num_classes=1008, no AuxLogits), so the
released `pt_inception-2015-12-05-6726825d.pth` (the 2015 TensorFlow graph, ported) loads strictly.
The blocks follow pytorch-fid's FID-specific patches of torchvision's blocks:

* Mixed_5b-5d (A), Mixed_6b-6e (C) and Mixed_7b (E, first): the 3x3 average pool of the pool branch
  ignores the zero padding (`count_include_pad=False`), as TensorFlow's does;
* Mixed_7c (E, second): the pool branch takes a 3x3 stride-1 MAX pool instead of an average.

`forward` takes RGB in [0, 1] at any size, resizes bilinearly to 299 x 299 (align_corners=False), maps
to [-1, 1] and returns the 2048-d global average pool after Mixed_7c. The `fc` layer is loaded but unused.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.models.checkpoint import (
    BATCHNORM_COUNTER,
    load_frozen,
    read_state_dict,
    require_weights_file,
    save_atomically,
)

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SOURCE = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
FID_NUM_CLASSES = 1008  # the 2015 graph's classifier (unused for FID)
INPUT_CHANNELS = 3
BN_EPS = 0.001

# Channel widths of torchvision's Inception3 (shared by pytorch-fid).
STEM_CHANNELS = (32, 32, 64, 80, 192)
A_POOL_FEATURES = (32, 64, 64)  # Mixed_5b, 5c, 5d
A_IN_CHANNELS = (192, 256, 288)
A_1X1 = 64
A_5X5 = (48, 64)
A_3X3DBL = (64, 96, 96)
B_IN_CHANNELS = 288  # Mixed_6a
B_3X3 = 384
B_3X3DBL = (64, 96, 96)
C_IN_CHANNELS = 768  # Mixed_6b..6e
C_CHANNELS_7X7 = (128, 160, 160, 192)
C_OUT = 192  # every branch of C ends in 192 channels
D_IN_CHANNELS = 768  # Mixed_7a
D_3X3 = (192, 320)
D_7X7X3 = 192
E_IN_CHANNELS = (1280, 2048)  # Mixed_7b, 7c
E_1X1 = 320
E_3X3 = 384
E_3X3DBL = (448, 384)
E_POOL = 192

POOL_KERNEL = 3  # every pool inside the network
STRIDE_2 = 2

# Random weights (save_random_fid_inception): He-normal convolutions keep the activation scale through
# the ReLUs; BatchNorm is identity (running mean 0, var 1, weight 1, bias 0).
RELU_GAIN = 2.0


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool whose border averages only real pixels (TensorFlow's)."""
    return F.avg_pool2d(x, POOL_KERNEL, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b-5d: 1x1, 5x5, double 3x3 and pool branches at 35 x 35."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, A_1X1, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, A_5X5[0], 1)
        self.branch5x5_2 = BasicConv2d(A_5X5[0], A_5X5[1], 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, A_3X3DBL[0], 1)
        self.branch3x3dbl_2 = BasicConv2d(A_3X3DBL[0], A_3X3DBL[1], 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(A_3X3DBL[1], A_3X3DBL[2], 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 (stride-2 3x3, double 3x3 and max pool)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, B_3X3, 3, stride=STRIDE_2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, B_3X3DBL[0], 1)
        self.branch3x3dbl_2 = BasicConv2d(B_3X3DBL[0], B_3X3DBL[1], 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(B_3X3DBL[1], B_3X3DBL[2], 3, stride=STRIDE_2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, POOL_KERNEL, stride=STRIDE_2)
        return torch.cat([b3, b3dbl, pool], 1)


class InceptionC(nn.Module):
    """Mixed_6b-6e: factorised 7x7 branches at 17 x 17."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, C_OUT, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, C_OUT, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, C_OUT, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, C_OUT, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        pool = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([self.branch1x1(x), b7, b7dbl, pool], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, D_3X3[0], 1)
        self.branch3x3_2 = BasicConv2d(D_3X3[0], D_3X3[1], 3, stride=STRIDE_2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, D_7X7X3, 1)
        self.branch7x7x3_2 = BasicConv2d(D_7X7X3, D_7X7X3, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(D_7X7X3, D_7X7X3, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(D_7X7X3, D_7X7X3, 3, stride=STRIDE_2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        pool = F.max_pool2d(x, POOL_KERNEL, stride=STRIDE_2)
        return torch.cat([b3, b7, pool], 1)


class InceptionE(nn.Module):
    """Mixed_7b / 7c: expanded 3x3 branches at 8 x 8; `max_pool` selects pytorch-fid's Mixed_7c pool."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, E_1X1, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, E_3X3, 1)
        self.branch3x3_2a = BasicConv2d(E_3X3, E_3X3, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(E_3X3, E_3X3, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, E_3X3DBL[0], 1)
        self.branch3x3dbl_2 = BasicConv2d(E_3X3DBL[0], E_3X3DBL[1], 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(E_3X3DBL[1], E_3X3DBL[1], (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(E_3X3DBL[1], E_3X3DBL[1], (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, E_POOL, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        pooled = F.max_pool2d(x, POOL_KERNEL, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return torch.cat([self.branch1x1(x), b3, b3dbl, self.branch_pool(pooled)], 1)


class FidInceptionV3(nn.Module):
    """pytorch-fid's InceptionV3 up to the 2048-d pool3 features (module names of torchvision)."""

    def __init__(self) -> None:
        super().__init__()
        c = STEM_CHANNELS
        self.Conv2d_1a_3x3 = BasicConv2d(INPUT_CHANNELS, c[0], 3, stride=STRIDE_2)
        self.Conv2d_2a_3x3 = BasicConv2d(c[0], c[1], 3)
        self.Conv2d_2b_3x3 = BasicConv2d(c[1], c[2], 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c[2], c[3], 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c[3], c[4], 3)
        self.Mixed_5b = InceptionA(A_IN_CHANNELS[0], A_POOL_FEATURES[0])
        self.Mixed_5c = InceptionA(A_IN_CHANNELS[1], A_POOL_FEATURES[1])
        self.Mixed_5d = InceptionA(A_IN_CHANNELS[2], A_POOL_FEATURES[2])
        self.Mixed_6a = InceptionB(B_IN_CHANNELS)
        self.Mixed_6b = InceptionC(C_IN_CHANNELS, C_CHANNELS_7X7[0])
        self.Mixed_6c = InceptionC(C_IN_CHANNELS, C_CHANNELS_7X7[1])
        self.Mixed_6d = InceptionC(C_IN_CHANNELS, C_CHANNELS_7X7[2])
        self.Mixed_6e = InceptionC(C_IN_CHANNELS, C_CHANNELS_7X7[3])
        self.Mixed_7a = InceptionD(D_IN_CHANNELS)
        self.Mixed_7b = InceptionE(E_IN_CHANNELS[0], max_pool=False)
        self.Mixed_7c = InceptionE(E_IN_CHANNELS[1], max_pool=True)
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)  # in the file; FID does not use it

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 2048) pool3 features."""
        if images.ndim != 4 or images.shape[1] != INPUT_CHANNELS:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, POOL_KERNEL, stride=STRIDE_2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, POOL_KERNEL, stride=STRIDE_2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))


LOAD_FIX = f"use the original {FID_WEIGHTS_FILE} of pytorch-fid ({FID_WEIGHTS_SOURCE}); download it again"


def load_fid_inception(path: Path, device: torch.device | str = "cpu") -> FidInceptionV3:
    """The FID InceptionV3 with every tensor of `path`, in float32 and eval mode on `device`."""
    path = require_weights_file(
        path,
        "the FID Inception weights",
        FID_WEIGHTS_FILE,
        f"download {FID_WEIGHTS_SOURCE} (pytorch-fid's release) and give its path",
    )
    return load_frozen(FidInceptionV3, read_state_dict(path), path, device, LOAD_FIX)


def _random_state(seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        layout = FidInceptionV3().state_dict()
    state: dict[str, Tensor] = {}
    for key, meta in layout.items():
        shape = meta.shape
        if key.endswith(BATCHNORM_COUNTER):
            value = torch.zeros((), dtype=torch.long)
        elif key.endswith(("bn.running_var", "bn.weight")):
            value = torch.ones(shape)
        elif key.endswith(("bn.running_mean", "bn.bias")):
            value = torch.zeros(shape)
        elif key.endswith("conv.weight"):
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=generator) * math.sqrt(RELU_GAIN / fan_in)
        elif key == "fc.weight":
            value = torch.randn(shape, generator=generator) / math.sqrt(shape[1])
        elif key == "fc.bias":
            value = torch.zeros(shape)
        else:  # a new parameter kind in FidInceptionV3 must get an explicit rule here
            raise AssertionError(f"no random init rule for {key}")
        state[key] = value.to(meta.dtype)
    return state


def save_random_fid_inception(path: Path, seed: int = 0) -> Path:
    """Write random weights in the exact layout of the released file (keys, shapes); tests only.

    Convolutions are He-normal and BatchNorm is identity, so features stay finite and of order 1.
    """
    path = Path(path)
    state = _random_state(seed)
    return save_atomically(state, path)
