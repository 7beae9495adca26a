"""Multi-scale VGG19 perceptual loss (MuseTalk paper eq. 2).

See lipsync/models/musetalk/README.md, Training losses.

The reference runs torchvision's ImageNet VGG19 `features` on an anti-aliased image pyramid of the 224×224
resized images and sums weighted L1 distances of the relu1_1 … relu5_1 activations. We define the network
ourselves with torchvision's parameter names, so its checkpoint file loads without torchvision.

Deliberate differences from the reference:
* the reference applies ImageNet mean/std to images still in [-1, 1]; we map them to [0, 1] first, which is
  the range the VGG weights were trained on;
* the reference zero-pads before the pyramid's Gaussian blur, darkening the borders of the coarse levels; we
  pad by replicating the edge pixels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.config import IMAGE_CHANNELS
from lipsync.errors import WeightsError
from lipsync.models.checkpoint import load_strict, read_state_dict
from lipsync.train.config import ConfigError, PerceptualConfig

# --- VGG19 (configuration "E" of Simonyan & Zisserman) -----------------------------------------------------
MAX_POOL = "M"
VGG19_LAYOUT: tuple[int | str, ...] = (
    64, 64, MAX_POOL,
    128, 128, MAX_POOL,
    256, 256, 256, 256, MAX_POOL,
    512, 512, 512, 512, MAX_POOL,
    512, 512, 512, 512, MAX_POOL,
)  # fmt: skip
VGG_KERNEL_SIZE = 3
VGG_PADDING = 1
VGG_POOL_SIZE = 2
# Ends (exclusive) of the reference's slices of `features`: [0:2] [2:7] [7:12] [12:21] [21:30], i.e. the
# outputs of relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1.
VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
VGG_POOLS_BEFORE_LAST_SLICE = 4  # max-pools inside features[0:30]
MIN_VGG_INPUT = 2**VGG_POOLS_BEFORE_LAST_SLICE  # smallest side that still gives relu5_1 a pixel
VGG19_FILE_NAME = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG19 checkpoint
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE_NAME}"
IGNORED_PREFIXES = ("classifier.",)  # the classification head of the checkpoint: not used here

# --- ImageNet input normalisation (the statistics the VGG weights were trained with) ---------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UntrainedPerceptualWarning(UserWarning):
    """The perceptual loss runs on a randomly initialised VGG (acceptable in tests only)."""


class VGG19Features(nn.Module):
    """torchvision's `vgg19().features` (parameters `features.<i>.weight/bias`); returns relu1_1 … relu5_1.

    `width_divisor` > 1 divides every layer's channel count (tiny test networks; they cannot load the file).
    """

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()
        if width_divisor < 1:
            raise ConfigError(f"VGG width_divisor is {width_divisor}", "use 1 (full size) or more")
        layers: list[nn.Module] = []
        channels = IMAGE_CHANNELS
        for item in VGG19_LAYOUT:
            if item == MAX_POOL:
                layers.append(nn.MaxPool2d(kernel_size=VGG_POOL_SIZE, stride=VGG_POOL_SIZE))
            else:
                width = max(1, int(item) // width_divisor)
                layers.append(nn.Conv2d(channels, width, kernel_size=VGG_KERNEL_SIZE, padding=VGG_PADDING))
                layers.append(nn.ReLU())
                channels = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, H, W), ImageNet-normalised -> the five activations, (B, C_i, H/2^i, W/2^i)."""
        outputs: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            if index == VGG_SLICE_ENDS[-1]:
                break  # conv5_2 onwards: in the checkpoint, but unused
            x = layer(x)
            if index + 1 in VGG_SLICE_ENDS:
                outputs.append(x)
        return outputs


def load_vgg19_features(path: Path) -> VGG19Features:
    """A full-size VGG19Features with the `features.*` tensors of torchvision's checkpoint at `path`.

    Every `features.*` key must be present with its shape; `classifier.*` keys are ignored; others fail.
    """
    path = Path(path)
    fix = f"download torchvision's ImageNet VGG19 weights ({VGG19_URL}) and give that file"
    if not path.is_file():
        raise WeightsError(f"VGG19 weights {path} do not exist", fix)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = VGG19Features()
    kept = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    load_strict(model, kept, path, torch.float32, f"{fix} ({VGG19_FILE_NAME}; the VGG19 without batch norm)")
    return model


# --- Anti-aliased image pyramid ----------------------------------------------------------------------------
GAUSSIAN_TRUNCATE = 4  # kernel half-width in sigmas


def _downsample_factor(scale: float) -> int:
    factor = round(1 / scale) if scale > 0 else 0
    if factor < 1 or not math.isclose(factor * scale, 1.0):
        raise ConfigError(
            f"pyramid scale {scale} is not 1/n for a whole n", "use scales such as 1, 0.5, 0.25, 0.125"
        )
    return factor


def pyramid_sigma(scale: float) -> float:
    """Gaussian σ before keeping every (1/scale)-th pixel: (1/s − 1)/2 (reference; 0 at scale 1)."""
    return (_downsample_factor(scale) - 1) / 2


def pyramid_kernel_size(scale: float) -> int:
    """Blur kernel side: 2·round(4σ) + 1 (reference; 1 at scale 1)."""
    return 2 * round(GAUSSIAN_TRUNCATE * pyramid_sigma(scale)) + 1


def gaussian_kernel_1d(scale: float) -> torch.Tensor:
    """The normalised 1-D Gaussian whose outer product with itself is the reference's 2-D blur kernel."""
    size = pyramid_kernel_size(scale)
    if size == 1:
        return torch.ones(1)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * pyramid_sigma(scale) ** 2))
    return (kernel / kernel.sum()).float()


class ImagePyramid(nn.Module):
    """Anti-aliased downscaled copies of an image: blur with a Gaussian, then keep every (1/s)-th pixel."""

    def __init__(self, scales: tuple[float, ...]) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.factors = tuple(_downsample_factor(s) for s in self.scales)
        for index, scale in enumerate(self.scales):
            self.register_buffer(f"kernel{index}", gaussian_kernel_1d(scale), persistent=False)

    def kernel(self, index: int) -> torch.Tensor:
        """The 1-D blur kernel of pyramid level `index` (length pyramid_kernel_size(scale))."""
        kernel: torch.Tensor = getattr(self, f"kernel{index}")
        return kernel

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, C, H, W) -> one (B, C, ceil(H/n), ceil(W/n)) tensor per scale 1/n."""
        levels: list[torch.Tensor] = []
        channels = x.shape[1]
        for index, factor in enumerate(self.factors):
            if factor == 1:
                levels.append(x)
                continue
            # Blur in float32 with autocast off: depthwise bfloat16 convolutions have no fast CPU kernel
            # (measured: minutes per 224 px batch under bf16 autocast, milliseconds in float32).
            with torch.autocast(x.device.type, enabled=False):
                k = self.kernel(index).float()
                half = k.numel() // 2
                blurred = F.pad(x.float(), (half, half, half, half), mode="replicate")
                blurred = F.conv2d(blurred, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
                blurred = F.conv2d(blurred, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
            levels.append(blurred[:, :, ::factor, ::factor].to(x.dtype))
        return levels


# --- The loss ----------------------------------------------------------------------------------------------
class PerceptualLoss(nn.Module):
    """Σ_scales Σ_i w_i·mean|φ_i(pred) − φ_i(gt)| / Σ_i w_i over relu1_1 … relu5_1 of a frozen VGG19.

    Inputs: prediction and target (B, 3, H, W) in [-1, 1]; output: a scalar. Gradient flows to the
    prediction only; the VGG is frozen (eval mode, no parameter gradients) whatever `train()` is called with.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, config: PerceptualConfig, weights_key: str = "loss.perceptual_net.vgg19_weights"
    ) -> None:
        """`weights_key`: where the trainer's config takes the VGG19 file (named in the untrained warning)."""
        super().__init__()
        weights = tuple(float(w) for w in config.layer_weights)
        if len(weights) != len(VGG_SLICE_ENDS) or sum(weights) <= 0:
            raise ConfigError(
                f"perceptual layer_weights {config.layer_weights} need {len(VGG_SLICE_ENDS)} values with a "
                "positive sum",
                "one weight each for relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (reference: all 1.0)",
            )
        if not config.scales:
            raise ConfigError("perceptual scales are empty", "use e.g. [1, 0.5, 0.25, 0.125] (reference)")
        smallest = math.ceil(config.input_size / max(_downsample_factor(s) for s in config.scales))
        if smallest < MIN_VGG_INPUT:
            raise ConfigError(
                f"perceptual input_size {config.input_size} at scale {min(config.scales)} is {smallest} px",
                f"VGG19 needs at least {MIN_VGG_INPUT} px: raise input_size or drop the smallest scale",
            )
        if config.vgg19_weights is not None:
            if config.width_divisor != 1:
                raise ConfigError(
                    f"a VGG narrowed by width_divisor {config.width_divisor} cannot load "
                    f"{config.vgg19_weights}",
                    "set width_divisor: 1 with real weights (narrow networks are for tests only)",
                )
            vgg = load_vgg19_features(config.vgg19_weights)
        else:
            warnings.warn(
                "the perceptual loss is UNTRAINED: its VGG19 is randomly initialised (acceptable in tests "
                f"only); set {weights_key} to torchvision's {VGG19_FILE_NAME}",
                UntrainedPerceptualWarning,
                stacklevel=2,
            )
            vgg = VGG19Features(width_divisor=config.width_divisor)
        self.vgg = vgg.eval().requires_grad_(False)
        self.untrained = config.vgg19_weights is None
        self.input_size = config.input_size
        self.layer_weights = weights
        self.pyramid = ImagePyramid(config.scales)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()
        return self

    def _features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per pyramid level, the VGG activations of [-1, 1] images."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        unit = (images + 1) / 2  # [-1, 1] -> [0, 1]: the range ImageNet statistics refer to
        mean = self.mean.to(images.dtype)
        std = self.std.to(images.dtype)
        normalised = (unit - mean) / std
        return [self.vgg(level) for level in self.pyramid(normalised)]

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
        with torch.no_grad():
            target_features = self._features(target)
        prediction_features = self._features(prediction)
        total = prediction.new_zeros(())
        for pred_level, target_level in zip(prediction_features, target_features, strict=True):
            for weight, pred_act, target_act in zip(
                self.layer_weights, pred_level, target_level, strict=True
            ):
                total = total + weight * (pred_act - target_act).abs().mean()
        return total / sum(self.layer_weights)
