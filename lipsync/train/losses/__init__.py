"""The generator's training losses, in pixel space on decoded 256×256 faces in [-1, 1].

See lipsync/models/musetalk/README.md, Training losses.

Total (reference): 1.0·L1 + 0.01·perceptual + 0.01·GAN·[step ≥ 1000] + FM + 0.01·mouth GAN·[step ≥ 1000]
+ FM_mouth + sync; the weights live in `lipsync.train.config.LossConfig`.
"""

from __future__ import annotations

import torch

from lipsync.train.losses.gan import (
    GanTerms,
    GeneratorGanLosses,
    PatchDiscriminator,
    discriminator_channels,
    discriminator_loss,
    feature_matching_loss,
    frozen_parameters,
    generator_adversarial_loss,
)
from lipsync.train.losses.mouth import MOUTH_CROP_SIZE, crop_mouths, mouth_boxes
from lipsync.train.losses.perceptual import (
    ImagePyramid,
    PerceptualLoss,
    UntrainedPerceptualWarning,
    VGG19Features,
    load_vgg19_features,
    pyramid_kernel_size,
    pyramid_sigma,
)


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reconstruction term (MuseTalk paper eq. 1): mean|prediction − target|."""
    return (prediction - target).abs().mean()


__all__ = [
    "MOUTH_CROP_SIZE",
    "GanTerms",
    "GeneratorGanLosses",
    "ImagePyramid",
    "PatchDiscriminator",
    "PerceptualLoss",
    "UntrainedPerceptualWarning",
    "VGG19Features",
    "crop_mouths",
    "discriminator_channels",
    "discriminator_loss",
    "feature_matching_loss",
    "frozen_parameters",
    "generator_adversarial_loss",
    "l1_loss",
    "load_vgg19_features",
    "mouth_boxes",
    "pyramid_kernel_size",
    "pyramid_sigma",
]
