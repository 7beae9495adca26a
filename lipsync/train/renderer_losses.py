"""The terms of one renderer training step (the landmark-prior family's `losses.py`), per stage.

* alignment: λ_w L_w on M_a's aggregated warped image Ī^r (M_r and the discriminator do not run);
* rendering: λ_r L_r + λ_s L_s + λ_g L_g + λ_f L_f on M_r's output (M_a frozen: L_w has nothing to train);
* joint: all five; during the warm-up (`warmup_steps`, IP_LAP's) λ_w L_w alone. With the "w/o Ali"
  ablation there is no Ī^r and L_w is left out.

The VGG-19 is torchvision's ImageNet file from `loss.vgg19_weights`, read by the project's loader; without
it the project's untrained, narrowable VGG stands in with its UntrainedPerceptualWarning (tests only):
both come from `PerceptualLoss`, which owns that choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from torch import Tensor, nn

from lipsync.models.landmark_prior.losses import (
    DISCRIMINATOR_WIDTHS,
    LossTerms,
    LossWeights,
    MultiscaleDiscriminator,
    VGGLosses,
    gan_feature_matching_loss,
    gan_generator_loss,
    total_loss,
)
from lipsync.train.config import PerceptualConfig, RendererTrainConfig
from lipsync.train.losses.perceptual import PerceptualLoss

TINY_DISCRIMINATOR_DIVISOR = 16  # the tiny configs' discriminator: every width / 16


def vgg_losses(config: RendererTrainConfig) -> VGGLosses:
    """L_w, L_r and L_s on the user's VGG-19 file, or the untrained stand-in (with its warning)."""
    loss = config.loss
    perceptual = PerceptualConfig(
        vgg19_weights=loss.vgg19_weights,
        width_divisor=loss.vgg_width_divisor,
        input_size=config.face_size,
        scales=(1.0,),
    )
    return VGGLosses(PerceptualLoss(perceptual, "loss.vgg19_weights").vgg)


def discriminator(config: RendererTrainConfig) -> MultiscaleDiscriminator:
    """pix2pixHD's two-scale PatchGAN (the family's), narrowed like M_a and M_r (tiny: every width / 16)."""
    divisor = TINY_DISCRIMINATOR_DIVISOR if config.tiny else config.width_divisor
    return MultiscaleDiscriminator(widths=tuple(max(1, w // divisor) for w in DISCRIMINATOR_WIDTHS))


@dataclass
class StepLosses:
    total: Tensor
    terms: dict[str, Tensor]  # the unweighted terms this step computed

    def scalars(self) -> dict[str, float]:
        values = {f"loss/{name}": float(value.detach()) for name, value in self.terms.items()}
        return values | {"loss/total": float(self.total.detach())}


class RendererLosses(nn.Module):
    """The generator-side loss of a step (D's own is `gan_discriminator_loss`)."""

    def __init__(self, config: RendererTrainConfig, weights: LossWeights) -> None:
        super().__init__()
        self.vgg = vgg_losses(config)
        self.weights = weights
        self.warp_trains = config.stage in ("joint", "alignment") and not config.without_alignment

    def warp(self, warped: Tensor, target: Tensor) -> StepLosses:
        """λ_w L_w alone (stage alignment, and the joint warm-up)."""
        warp = self.vgg.perceptual(warped, target)
        return StepLosses(self.weights.warp * warp, {"warp": warp})

    def forward(
        self,
        warped: Tensor,
        output: Tensor,
        target: Tensor,
        fake: Sequence[Sequence[Tensor]],
        real: Sequence[Sequence[Tensor]],
    ) -> StepLosses:
        """Every term of the stage: `fake` and `real` are D's outputs on Î_t and I_t."""
        reconstruction, style = self.vgg.perceptual_and_style(output, target)
        warp = self.vgg.perceptual(warped, target) if self.warp_trains else reconstruction.new_zeros(())
        terms = LossTerms(
            warp=warp,
            reconstruction=reconstruction,
            style=style,
            gan=gan_generator_loss(fake),
            feature_matching=gan_feature_matching_loss(real, fake),
        )
        named = {field.name: getattr(terms, field.name) for field in fields(terms)}
        if not self.warp_trains:
            named.pop("warp")
        return StepLosses(total_loss(terms, self.weights), named)
