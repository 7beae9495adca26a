"""Patch discriminator and LSGAN losses (MuseTalk paper eq. 3–5, in the least-squares form).

See lipsync/models/musetalk/README.md, Training losses.

The reference uses a pix2pix-style spectral-norm patch discriminator at a single scale, LSGAN objectives and
an L1 feature-matching term on the discriminator's block outputs. It shows the generator's adversarial term
the 224×224 level of the perceptual pyramid but trains the discriminator on the 256×256 frames; here both
sides see the same images (the 256×256 faces or mouth crops), so D is trained on what G is judged by.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from lipsync.config import IMAGE_CHANNELS
from lipsync.train.config import ConfigError, DiscriminatorConfig

DISC_KERNEL_SIZE = 4  # conv per block, no padding
DISC_POOL_SIZE = 2  # average pool after every block but the last
LEAKY_RELU_SLOPE = 0.2
REAL_LABEL = 1.0  # LSGAN targets
FAKE_LABEL = 0.0


class DownBlock(nn.Module):
    """conv 4×4 (spectral norm, no padding) -> [InstanceNorm affine] -> LeakyReLU 0.2 -> [AvgPool 2×2]."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool, pool: bool) -> None:
        super().__init__()
        self.conv = spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size=DISC_KERNEL_SIZE))
        self.norm = nn.InstanceNorm2d(out_channels, affine=True) if norm else nn.Identity()
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE)
        self.pool = nn.AvgPool2d(DISC_POOL_SIZE) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


def discriminator_channels(config: DiscriminatorConfig) -> list[int]:
    """Output channels of each block: block_expansion·2^(i+1), capped at max_features (64, 128, 256, 512)."""
    return [min(config.max_features, config.block_expansion * 2 ** (i + 1)) for i in range(config.num_blocks)]


class PatchDiscriminator(nn.Module):
    """pix2pix-style patch discriminator: (B, 3, H, W) in [-1, 1] -> (block features, (B, 1, h, w) map).

    For 256×256 input and the defaults: features (B, 64, 126, 126), (B, 128, 61, 61), (B, 256, 29, 29),
    (B, 512, 26, 26); prediction (B, 1, 26, 26).
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        if config.num_blocks < 1 or config.block_expansion < 1 or config.max_features < 1:
            raise ConfigError(
                f"discriminator num_blocks {config.num_blocks}, block_expansion {config.block_expansion}, "
                f"max_features {config.max_features}",
                "all must be positive (reference: 4, 32, 512)",
            )
        blocks: list[nn.Module] = []
        in_channels = IMAGE_CHANNELS
        for index, out_channels in enumerate(discriminator_channels(config)):
            blocks.append(
                DownBlock(in_channels, out_channels, norm=index > 0, pool=index < config.num_blocks - 1)
            )
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = spectral_norm(nn.Conv2d(in_channels, 1, kernel_size=1))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features, self.head(x)


def generator_adversarial_loss(fake_prediction: torch.Tensor) -> torch.Tensor:
    """LSGAN generator term: mean((1 − D(fake))²)."""
    return ((REAL_LABEL - fake_prediction) ** 2).mean()


def discriminator_loss(real_prediction: torch.Tensor, fake_prediction: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator term: mean((1 − D(real))²) + mean(D(fake)²)."""
    return ((REAL_LABEL - real_prediction) ** 2).mean() + ((fake_prediction - FAKE_LABEL) ** 2).mean()


def feature_matching_loss(
    real_features: Sequence[torch.Tensor], fake_features: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """Σ_i w_i·mean|real_i − fake_i| over the discriminator's block outputs; the real side is detached."""
    if not len(real_features) == len(fake_features) == len(weights):
        raise ConfigError(
            f"feature matching got {len(real_features)} real, {len(fake_features)} fake feature maps and "
            f"{len(weights)} weights",
            "give one loss.feature_matching weight per discriminator block (num_blocks)",
        )
    total = fake_features[0].new_zeros(())
    for weight, real, fake in zip(weights, real_features, fake_features, strict=True):
        total = total + weight * (real.detach() - fake).abs().mean()
    return total


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Within the block, `module`'s parameters take no gradient (input gradients still flow through it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@dataclass
class GeneratorGanLosses:
    adversarial: torch.Tensor  # LSGAN G term, unweighted (the trainer applies the GAN weight and start step)
    feature_matching: torch.Tensor  # already weighted by the per-block feature-matching weights


@dataclass
class GanTerms:
    """One discriminator's losses for the two optimiser steps.

    `generator_losses(real, fake)`: G step; gradient reaches `fake` but none of D's parameters.
    `discriminator_loss(real, fake)`: D step; `fake` is detached, so nothing reaches the generator.
    """

    discriminator: nn.Module  # a PatchDiscriminator (or a wrapper of one, e.g. for distributed training)
    feature_matching_weights: tuple[float, ...]

    def generator_losses(self, real: torch.Tensor, fake: torch.Tensor) -> GeneratorGanLosses:
        with frozen_parameters(self.discriminator):
            with torch.no_grad():
                real_features, _ = self.discriminator(real)
            fake_features, fake_prediction = self.discriminator(fake)
        return GeneratorGanLosses(
            adversarial=generator_adversarial_loss(fake_prediction),
            feature_matching=feature_matching_loss(
                real_features, fake_features, self.feature_matching_weights
            ),
        )

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        _, real_prediction = self.discriminator(real.detach())
        _, fake_prediction = self.discriminator(fake.detach())
        return discriminator_loss(real_prediction, fake_prediction)
