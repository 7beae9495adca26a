"""Training losses of the alignment and rendering models (paper §3.2.3) and the patch discriminator.

L = λ_w·L_w + λ_r·L_r + λ_s·L_s + λ_g·L_g + λ_f·L_f, (λ_w, λ_r, λ_s, λ_g, λ_f) = (2.5, 4, 1000, 0.25, 2.5)
(paper). IP_LAP's renderer trains with the same numbers (its 4·(L_r + 250·L_s) is λ_s = 1000).

* L_w = Σ_i ‖φ_i(Ī^r) − φ_i(I_t)‖₁ on the aggregated warped image; L_r the same on the output Î_t; φ_i the
  ImageNet VGG-19 activations relu1_1 … relu5_1 (the project's `VGG19Features`). The paper gives the sum
  over layers; IP_LAP fills in: L1 as a mean, every layer weight 1, and the sum taken at two scales, the
  image and its bilinear half (`PERCEPTUAL_SCALES`).
* L_s = Σ_i ‖G_i(Î_t) − G_i(I_t)‖₁, G_i = F Fᵀ / (C·H·W) of layer i's C × HW feature F (IP_LAP's Gram
  matrix), mean absolute difference, full scale only (IP_LAP).
* L_g, L_f: pix2pixHD's (the paper cites it): a multi-scale PatchGAN, 2 scales, least-squares GAN losses
  summed over scales (the project's LSGAN terms); feature matching = L1 between the discriminator's 4
  intermediate maps for real and generated images, each term weighted 1/2 (1/scales · 4/(layers + 1),
  pix2pixHD's), before λ_f. The discriminator's own loss is ½(real + fake) (IP_LAP).

Images are in [0, 1] (the renderer's sigmoid); they are ImageNet-normalised before the VGG. (IP_LAP maps
its [0, 1] BGR images as if they were in [−1, 1] first; we do not.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.train.losses.gan import discriminator_loss, feature_matching_loss, generator_adversarial_loss
from lipsync.train.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD, VGG19Features

# --- Loss weights (paper §3.2.3) -------------------------------------------------------------------------
WARP_WEIGHT = 2.5  # λ_w
RECONSTRUCTION_WEIGHT = 4.0  # λ_r
STYLE_WEIGHT = 1000.0  # λ_s
GAN_WEIGHT = 0.25  # λ_g
FEATURE_MATCHING_WEIGHT = 2.5  # λ_f

# --- IP_LAP's settings of the terms ------------------------------------------------------------------------
PERCEPTUAL_SCALES = (1.0, 0.5)  # L_w and L_r: the image and its bilinear half
PERCEPTUAL_LAYER_WEIGHT = 1.0  # every VGG layer alike
DISCRIMINATOR_SCALES = 2  # pix2pixHD multi-scale discriminator
DISCRIMINATOR_WIDTHS = (64, 128, 256, 512)  # intermediate layers; then a 1-channel map
DISCRIMINATOR_STRIDES = (2, 2, 2, 1)
DISCRIMINATOR_KERNEL = 4
DISCRIMINATOR_PADDING = 2  # ceil((4 − 1) / 2), pix2pixHD
DISCRIMINATOR_SLOPE = 0.2
DISCRIMINATOR_INIT_STD = 0.02  # N(0, 0.02) weights (pix2pixHD)
DOWNSAMPLE_KERNEL, DOWNSAMPLE_STRIDE, DOWNSAMPLE_PADDING = 3, 2, 1  # AvgPool between scales
# each feature-matching term: 1/scales · 4/(n_layers + 1), pix2pixHD's n_layers = 3 strided convs, i.e. the
# 4 intermediate layers: ½ · 1
FEATURE_MATCHING_TERM = (1 / DISCRIMINATOR_SCALES) * (4 / len(DISCRIMINATOR_WIDTHS))
DISCRIMINATOR_LOSS_SCALE = 0.5  # D loss = ½(real + fake)


@dataclass(frozen=True)
class LossWeights:
    warp: float = WARP_WEIGHT
    reconstruction: float = RECONSTRUCTION_WEIGHT
    style: float = STYLE_WEIGHT
    gan: float = GAN_WEIGHT
    feature_matching: float = FEATURE_MATCHING_WEIGHT


PAPER_WEIGHTS = LossWeights()


@dataclass
class LossTerms:
    """The five unweighted terms of one generator step."""

    warp: Tensor
    reconstruction: Tensor
    style: Tensor
    gan: Tensor
    feature_matching: Tensor


def total_loss(terms: LossTerms, weights: LossWeights = PAPER_WEIGHTS) -> Tensor:
    """L = λ_w L_w + λ_r L_r + λ_s L_s + λ_g L_g + λ_f L_f."""
    return (
        weights.warp * terms.warp
        + weights.reconstruction * terms.reconstruction
        + weights.style * terms.style
        + weights.gan * terms.gan
        + weights.feature_matching * terms.feature_matching
    )


def gram_matrix(features: Tensor) -> Tensor:
    """(B, C, H, W) → (B, C, C): F Fᵀ / (C·H·W)."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def feature_distance(prediction: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Σ_i mean |φ_i(pred) − φ_i(target)| over the layers given."""
    return torch.stack([(p - t).abs().mean() for p, t in zip(prediction, target, strict=True)]).sum()


def style_distance(prediction: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """Σ_i mean |G(φ_i(pred)) − G(φ_i(target))|."""
    return feature_distance([gram_matrix(p) for p in prediction], [gram_matrix(t) for t in target])


class VGGLosses(nn.Module):
    """L_w / L_r (`perceptual`) and L_s (`perceptual_and_style`) on a frozen VGG19, images in [0, 1].

    Give it `lipsync.train.losses.perceptual.load_vgg19_features(path)` for training (torchvision's
    ImageNet weights); a narrow untrained `VGG19Features(width_divisor=…)` serves tests. The gradient
    reaches the prediction only.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, vgg: VGG19Features) -> None:
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGLosses:
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, images: Tensor, scale: float = 1.0) -> list[Tensor]:
        if scale != 1.0:
            images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        return list(self.vgg((images - self.mean.to(images.dtype)) / self.std.to(images.dtype)))

    def _perceptual(self, prediction: Tensor, target: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        total = prediction.new_zeros(())
        full_prediction: list[Tensor] = []
        full_target: list[Tensor] = []
        for scale in PERCEPTUAL_SCALES:
            with torch.no_grad():
                target_features = self.features(target, scale)
            prediction_features = self.features(prediction, scale)
            total = total + PERCEPTUAL_LAYER_WEIGHT * feature_distance(prediction_features, target_features)
            if scale == 1.0:
                full_prediction, full_target = prediction_features, target_features
        return total, full_prediction, full_target

    def perceptual(self, prediction: Tensor, target: Tensor) -> Tensor:
        """L_w (prediction = Ī^r) or L_r (prediction = Î_t)."""
        return self._perceptual(prediction, target)[0]

    def perceptual_and_style(self, prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(L_r, L_s) of the output, sharing the full-scale VGG pass."""
        perceptual, prediction_features, target_features = self._perceptual(prediction, target)
        return perceptual, style_distance(prediction_features, target_features)


class PatchDiscriminator(nn.Module):
    """One scale of pix2pixHD's PatchGAN: (B, 3, H, W) → [4 intermediate maps, the (B, 1, h, w) map]."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = DISCRIMINATOR_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, (width, stride) in enumerate(zip(widths, DISCRIMINATOR_STRIDES, strict=True)):
            conv = nn.Conv2d(channels, width, DISCRIMINATOR_KERNEL, stride, DISCRIMINATOR_PADDING)
            norm: list[nn.Module] = [nn.InstanceNorm2d(width, affine=False)] if index > 0 else []
            layers.append(nn.Sequential(conv, *norm, nn.LeakyReLU(DISCRIMINATOR_SLOPE)))
            channels = width
        layers.append(nn.Conv2d(channels, 1, DISCRIMINATOR_KERNEL, 1, DISCRIMINATOR_PADDING))
        self.layers = nn.ModuleList(layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, DISCRIMINATOR_INIT_STD)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs: list[Tensor] = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD's D: the same PatchGAN layout at full and half scale (3 × 3 average pool, stride 2).
    Unconditional, on 3-channel images. Returns per scale the list of 5 maps (4 intermediate, last)."""

    def __init__(
        self, scales: int = DISCRIMINATOR_SCALES, widths: Sequence[int] = DISCRIMINATOR_WIDTHS
    ) -> None:
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(widths=widths) for _ in range(scales))
        self.downsample = nn.AvgPool2d(
            DOWNSAMPLE_KERNEL, DOWNSAMPLE_STRIDE, DOWNSAMPLE_PADDING, count_include_pad=False
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        results: list[list[Tensor]] = []
        for index, scale in enumerate(self.scales):
            if index:
                x = self.downsample(x)
            results.append(scale(x))
        return results


def gan_generator_loss(fake: Sequence[Sequence[Tensor]]) -> Tensor:
    """L_g: Σ_scales mean (1 − D(Î))² (least squares)."""
    return torch.stack([generator_adversarial_loss(maps[-1]) for maps in fake]).sum()


def gan_discriminator_loss(real: Sequence[Sequence[Tensor]], fake: Sequence[Sequence[Tensor]]) -> Tensor:
    """½ Σ_scales [mean (1 − D(I))² + mean D(Î)²]; pass D's outputs on detached generated images."""
    terms = [discriminator_loss(r[-1], f[-1]) for r, f in zip(real, fake, strict=True)]
    return DISCRIMINATOR_LOSS_SCALE * torch.stack(terms).sum()


def gan_feature_matching_loss(real: Sequence[Sequence[Tensor]], fake: Sequence[Sequence[Tensor]]) -> Tensor:
    """L_f: Σ_scales Σ_layers ½·mean |D_l(I) − D_l(Î)| over the intermediate maps; the real side detached."""
    terms = [
        feature_matching_loss(r[:-1], f[:-1], [FEATURE_MATCHING_TERM] * (len(r) - 1))
        for r, f in zip(real, fake, strict=True)
    ]
    return torch.stack(terms).sum()
