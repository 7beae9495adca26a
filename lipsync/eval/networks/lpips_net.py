"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
version 0.1 with the AlexNet backbone: the `lpips` package's default (`lpips.LPIPS(net="alex")`).

Two public files, each loaded strictly without torchvision or the lpips package:

- the backbone: torchvision's ImageNet AlexNet, `alexnet-owt-7be5be79.pth` (its `features.N.weight/bias`
  tensors; the `classifier.*` head is not used);
- the learned linear layers: the lpips package's `lpips/weights/v0.1/alex.pth` (`linL.model.1.weight`,
  one (1, C_L, 1, 1) 1x1 convolution without bias per layer, after a dropout that is idle at evaluation).

d(x0, x1) = sum over the five layers L of mean_hw( w_L . (n(f_L(x0)) - n(f_L(x1)))^2 ), where f_L is the
AlexNet relu1..relu5 activation of the input scaled to [-1, 1] and shifted/scaled by the fixed
ScalingLayer constants, and n() divides each pixel's feature vector by its Euclidean norm (+ 1e-10).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from lipsync.models.checkpoint import load_frozen, read_state_dict, require_weights_file, save_atomically

ALEXNET_FILE = (
    "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet; the name carries its SHA-256 start
)
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
LPIPS_LINEAR_FILE = "lpips-v0.1-alex.pth"  # the lpips package's lpips/weights/v0.1/alex.pth, renamed
LPIPS_PACKAGE_WEIGHTS = Path("weights") / "v0.1" / "alex.pth"  # inside the installed lpips package
LPIPS_LINEAR_SOURCE = (
    "the lpips package's lpips/weights/v0.1/alex.pth: `pip download lpips --no-deps` and unzip the wheel, "
    "or the lpips/weights/v0.1 folder of github.com/richzhang/PerceptualSimilarity"
)
BACKBONE_FIX = f"use torchvision's unmodified {ALEXNET_FILE} ({ALEXNET_URL})"
LINEAR_FIX = f"use the unmodified v0.1 AlexNet linear layers, {LPIPS_LINEAR_SOURCE}"
CLASSIFIER_PREFIX = "classifier."  # AlexNet's classification head: in the file, unused by LPIPS

# torchvision's AlexNet `features`: (out channels, kernel, stride, padding) per convolution, MAX_POOL between.
MAX_POOL = "M"
ALEXNET_LAYOUT: tuple[tuple[int, int, int, int] | str, ...] = (
    (64, 11, 4, 2), MAX_POOL,
    (192, 5, 1, 2), MAX_POOL,
    (384, 3, 1, 1),
    (256, 3, 1, 1),
    (256, 3, 1, 1), MAX_POOL,
)  # fmt: skip
POOL_KERNEL, POOL_STRIDE = 3, 2
# LPIPS reads `features` after relu1 .. relu5: slices [0:2] [2:5] [5:8] [8:10] [10:12] (ends exclusive).
SLICE_ENDS = (2, 5, 8, 10, 12)
CHANNELS = (64, 192, 384, 256, 256)
# lpips' ScalingLayer: (x - SHIFT) / SCALE on inputs in [-1, 1] (ImageNet statistics in that range).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # lpips' normalize_tensor: x / (||x||_2 over channels + eps)


class AlexNetFeatures(nn.Module):
    """torchvision's `alexnet().features` (parameters `features.N.weight/bias`); returns relu1 .. relu5."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in ALEXNET_LAYOUT:
            if isinstance(item, str):
                layers.append(nn.MaxPool2d(kernel_size=POOL_KERNEL, stride=POOL_STRIDE))
                continue
            width, kernel, stride, padding = item
            layers.append(nn.Conv2d(channels, width, kernel, stride, padding))
            layers.append(nn.ReLU())
            channels = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, 3, H, W) scaled input -> the five activations (B, C_L, H_L, W_L)."""
        outputs: list[Tensor] = []
        for index, layer in enumerate(self.features):
            if index == SLICE_ENDS[-1]:
                break  # the last max-pool: not used
            x = layer(x)
            if index + 1 in SLICE_ENDS:
                outputs.append(x)
        return outputs


class NetLinLayer(nn.Module):
    """lpips' learned weights of one layer: dropout (idle in eval mode), then a 1x1 convolution to 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)
        return out


class LpipsLinear(nn.Module):
    """The five NetLinLayers under the names of the package's file: lin0 .. lin4."""

    def __init__(self) -> None:
        super().__init__()
        for index, channels in enumerate(CHANNELS):
            self.add_module(f"lin{index}", NetLinLayer(channels))

    def layers(self) -> list[NetLinLayer]:
        return [getattr(self, f"lin{index}") for index in range(len(CHANNELS))]


def unit_normalise(features: Tensor) -> Tensor:
    """Each pixel's feature vector divided by its Euclidean norm over the channels (plus NORM_EPS)."""
    norm = torch.sqrt(torch.sum(features**2, dim=1, keepdim=True))
    return features / (norm + NORM_EPS)


class Lpips(nn.Module):
    """LPIPS v0.1 (AlexNet): forward(x0, x1), both (B, 3, H, W) RGB in [-1, 1] -> (B,) distances."""

    shift: Tensor
    scale: Tensor

    def __init__(self, backbone: AlexNetFeatures, linear: LpipsLinear) -> None:
        super().__init__()
        self.backbone = backbone
        self.linear = linear
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        features0 = self.backbone((x0 - self.shift) / self.scale)
        features1 = self.backbone((x1 - self.shift) / self.scale)
        total = torch.zeros(len(x0), dtype=x0.dtype, device=x0.device)
        for lin, f0, f1 in zip(self.linear.layers(), features0, features1, strict=True):
            diff = (unit_normalise(f0) - unit_normalise(f1)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))  # one channel: the spatial mean
        return total


def package_linear_file() -> Path | None:
    """The installed lpips package's v0.1 AlexNet file, found without importing lpips (needs torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / LPIPS_PACKAGE_WEIGHTS
    return path if path.is_file() else None


def load_lpips(backbone: Path, linear: Path, device: torch.device | str = "cpu") -> Lpips:
    """LPIPS with torchvision's AlexNet `backbone` file and lpips' `linear` file, frozen on `device`."""
    backbone = require_weights_file(
        backbone, "the LPIPS backbone weights", ALEXNET_FILE, f"download {ALEXNET_URL} and give its path"
    )
    linear = require_weights_file(
        linear, "the LPIPS linear layers", f"{LPIPS_LINEAR_FILE}: {LPIPS_LINEAR_SOURCE}", LINEAR_FIX
    )
    state = {k: v for k, v in read_state_dict(backbone).items() if not k.startswith(CLASSIFIER_PREFIX)}
    features = load_frozen(AlexNetFeatures, state, backbone, device, BACKBONE_FIX)
    weights = load_frozen(LpipsLinear, read_state_dict(linear), linear, device, LINEAR_FIX)
    return Lpips(features, weights).to(device).eval()


def _random_weights(module: nn.Module, seed: int) -> dict[str, Tensor]:
    """He-normal convolutions, zero biases (keeps random activations of order 1)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, meta in module.state_dict().items():
        if meta.dim() > 1:
            fan_in = meta[0].numel()
            state[key] = torch.randn(meta.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.zeros(meta.shape)
    return state


def save_random_alexnet(path: Path, seed: int = 0) -> Path:
    """Random `features.*` tensors in torchvision's AlexNet layout (no 230 MB classifier); tests only."""
    with torch.device("meta"):
        model = AlexNetFeatures()
    return save_atomically(_random_weights(model, seed), Path(path))


def save_random_lpips_linear(path: Path, seed: int = 0) -> Path:
    """Random non-negative weights in the lpips package's v0.1 layout (`linL.model.1.weight`); tests only."""
    with torch.device("meta"):
        model = LpipsLinear()
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.rand(meta.shape, generator=generator) / meta.shape[1]
        for key, meta in model.state_dict().items()
    }
    return save_atomically(state, Path(path))
