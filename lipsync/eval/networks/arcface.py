"""ArcFace IResNet of insightface `arcface_torch` (backbones/iresnet.py), the face embedder of CSIM.

The module names are those of the released `backbone.pth` files (e.g. ms1mv3_arcface_r100), so they
load strictly: a 3x3 stem (conv1, bn1, prelu), four stages `layer1..layer4` of IBasicBlocks (64, 128,
256, 512 channels; the first block of each halves the resolution in its conv2 and has a 1x1 stride-2
`downsample`), then bn2, a flattening `fc` to 512 and a BatchNorm1d `features`. The variant (r18 ... r200)
is only the number of blocks per stage, read from the file's keys.

Input: (N, 3, 112, 112) RGB in [-1, 1] ((x / 255 - 0.5) / 0.5); output: (N, 512) unnormalised embeddings.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipsync.errors import WeightsError
from lipsync.models.checkpoint import (
    BATCHNORM_COUNTER,
    load_frozen,
    read_state_dict,
    require_weights_file,
    save_atomically,
)

ARCFACE_INPUT_SIZE = 112
ARCFACE_EMBED_DIM = 512
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
STAGE_CHANNELS = (64, 128, 256, 512)
STEM_CHANNELS = 64
INPUT_CHANNELS = 3
STAGE_STRIDE = 2
FINAL_MAP = 7  # 112 / 2^4
BN_EPS = 1e-5
PRELU_INIT = 0.25  # nn.PReLU's default slope

ARCFACE_SOURCE = "iresnet backbone.pth of insightface arcface_torch"
ZOO_EXAMPLE = "e.g. ms1mv3_arcface_r100_fp16/backbone.pth"
LOAD_FIX = f"use an unmodified {ARCFACE_SOURCE} ({ZOO_EXAMPLE})"
NESTED_STATE_KEY = "state_dict"
DDP_PREFIX = "module."
LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")

# Random weights (save_random_arcface): He-normal convolutions, identity BatchNorm.
RELU_GAIN = 2.0


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN, conv3x3, BN, PReLU, conv3x3 (strided), BN, plus the (downsampled) input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface's iresnet with `layers` blocks in its four stages."""

    def __init__(self, layers: tuple[int, int, int, int]) -> None:
        super().__init__()
        if len(layers) != len(STAGE_CHANNELS) or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {layers}")
        self.layers = tuple(layers)
        self.conv1 = _conv3x3(INPUT_CHANNELS, STEM_CHANNELS)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        self.prelu = nn.PReLU(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        stages: list[nn.Sequential] = []
        for channels, blocks in zip(STAGE_CHANNELS, layers, strict=True):
            stage = [IBasicBlock(in_channels, channels, STAGE_STRIDE)]
            stage += [IBasicBlock(channels, channels) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(STAGE_CHANNELS[-1], eps=BN_EPS)
        self.fc = nn.Linear(STAGE_CHANNELS[-1] * FINAL_MAP * FINAL_MAP, ARCFACE_EMBED_DIM)
        self.features = nn.BatchNorm1d(ARCFACE_EMBED_DIM, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, 112, 112) RGB in [-1, 1] -> (N, 512)."""
        expected = (INPUT_CHANNELS, ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected (N, {', '.join(map(str, expected))}) input, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x).flatten(1)  # the reference's dropout (p=0) is the identity
        return self.features(self.fc(x))


def arcface_variant(state: dict[str, Tensor], path: Path) -> str:
    """The IRESNET_LAYERS name whose blocks per stage match the `layerN.K` keys of `state`."""
    blocks = [0, 0, 0, 0]
    for key in state:
        match = LAYER_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    found = tuple(blocks)
    for name, layers in IRESNET_LAYERS.items():
        if found == layers:
            return name
    known = ", ".join(f"{name} {layers}" for name, layers in IRESNET_LAYERS.items())
    raise WeightsError(
        f"{path} is no known ArcFace iresnet: its layer1..layer4 have {found} blocks (known: {known})",
        LOAD_FIX,
    )


def _nested_state(path: Path) -> dict[str, Tensor] | None:
    """The tensors of a {"state_dict": {...}} checkpoint, or None if `path` is not one."""
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError):
        return None
    nested = data.get(NESTED_STATE_KEY) if isinstance(data, dict) else None
    if isinstance(nested, dict) and nested and all(isinstance(v, Tensor) for v in nested.values()):
        return nested
    return None


def read_arcface_state(path: Path) -> dict[str, Tensor]:
    """The backbone tensors of `path`: a plain state dict, or one under "state_dict"; "module." dropped."""
    try:
        state = read_state_dict(path)
    except WeightsError:
        nested = _nested_state(path)
        if nested is None:
            raise
        state = nested
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        state = {key[len(DDP_PREFIX) :]: value for key, value in state.items()}
    return state


def load_arcface(path: Path, device: torch.device | str = "cpu") -> tuple[IResNet, str]:
    """(model in float32 eval mode on `device`, variant name) for an arcface_torch backbone file."""
    path = require_weights_file(
        path,
        "the ArcFace weights",
        "an " + ARCFACE_SOURCE,
        f"download one from the insightface model zoo ({ZOO_EXAMPLE}) and give its path",
    )
    state = read_arcface_state(path)
    variant = arcface_variant(state, path)
    return load_frozen(lambda: IResNet(IRESNET_LAYERS[variant]), state, path, device, LOAD_FIX), variant


def _random_state(layers: tuple[int, int, int, int], seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        layout = IResNet(layers).state_dict()
    state: dict[str, Tensor] = {}
    for key, meta in layout.items():
        shape = meta.shape
        if key.endswith(BATCHNORM_COUNTER):
            value = torch.zeros((), dtype=torch.long)
        elif key.endswith("prelu.weight"):
            value = torch.full(shape, PRELU_INIT)
        elif len(shape) == 4:  # convolutions
            value = torch.randn(shape, generator=generator) * math.sqrt(RELU_GAIN / math.prod(shape[1:]))
        elif key == "fc.weight":
            value = torch.randn(shape, generator=generator) / math.sqrt(shape[1])
        elif key.endswith(("running_var", "weight")):  # BatchNorm scale and variance
            value = torch.ones(shape)
        elif key.endswith(("running_mean", "bias")):  # BatchNorm shift and mean, fc bias
            value = torch.zeros(shape)
        else:  # a new parameter kind in IResNet must get an explicit rule here
            raise AssertionError(f"no random init rule for {key}")
        state[key] = value.to(meta.dtype)
    return state


def save_random_arcface(path: Path, variant: str = "r18", seed: int = 0) -> Path:
    """Write random weights in the layout of an arcface_torch `backbone.pth` of `variant`; tests only."""
    if variant not in IRESNET_LAYERS:
        raise ValueError(f"unknown ArcFace variant {variant!r}; choose one of {sorted(IRESNET_LAYERS)}")
    path = Path(path)
    state = _random_state(IRESNET_LAYERS[variant], seed)
    return save_atomically(state, path)
