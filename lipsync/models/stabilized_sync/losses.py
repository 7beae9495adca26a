"""The stabilized-sync family's training losses (paper §3.3–3.5) and its optimiser settings.

Total, eq. 5: L = L_GAN + λ1·L_pixel + λ2·L_per + λ3·L_ss + λ4·L_at with (λ1, λ2, λ3, λ4) = (10, 1, 2, 0.5)
for G_L; G_S uses λ3 = λ4 = 0 (no sync loss, no triplet loss). Adam, betas (0.5, 0.999), lr 1e-4, for
every model.

* L_ss (eq. 3–4): −log(1 − (|x − y| + ε) / (|x − y| + |y − d| + ε)), x, y, d the AVSyncNet similarities
  (AVSIM) of the generated, ground-truth and identity-reference lips to the audio.
* L_at (eq. 2): [D(V(I′), V(I^GT)) − D(V(I′), V(I^R)) / D(V(I^GT), V(I^R)) + α]_+, [·]_+ = max(·, ε), D the
  L2 distance of VGG features, α = 1.
* The vanilla lip-sync loss (Wav2Lip's, the ablation's setups A–D): BCE(x, 1) = −log x.
* L_pixel is the mean absolute error; L_per is the project's VGG19 perceptual loss (`perceptual_config`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.train.config import PerceptualConfig
from lipsync.train.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD, VGG_SLICE_ENDS, VGG19Features
from lipsync.train.losses.sync import binary_cross_entropy

# --- Eq. 5 weights (paper §3.5) ---------------------------------------------------------------------
GAN_WEIGHT = 1.0  # L_GAN enters eq. 5 unweighted
L1_WEIGHT = 10.0  # λ1, L_pixel
PERCEPTUAL_WEIGHT = 1.0  # λ2, L_per
STABILIZED_SYNC_WEIGHT = 2.0  # λ3, L_ss
TRIPLET_WEIGHT = 0.5  # λ4, L_at

# --- Optimiser (paper §3.5: all models, AVSyncNet included) -------------------------------------------
LEARNING_RATE = 1e-4
ADAM_BETAS = (0.5, 0.999)

# --- Constants the paper names without a value, or does not name ----------------------------------------
STABILIZED_SYNC_EPS = 1e-6  # ε of eq. 3 (no value given); also the floor of the log's argument
TRIPLET_MARGIN = 1.0  # α of eq. 2 (paper)
TRIPLET_EPS = 1e-6  # ε of [·]_+ = max(·, ε) in eq. 2 (no value given)
TRIPLET_VGG_LAYER = (
    len(VGG_SLICE_ENDS) - 1
)  # which of relu1_1 … relu5_1 is V(·) in eq. 2: relu5_1 (not given)
# L_per's c_i (paper: "from [31]", which has no five-layer set): pix2pixHD's weights for relu1_1 … relu5_1.
PERCEPTUAL_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


@dataclass(frozen=True)
class LossWeights:
    """Weights of eq. 5."""

    gan: float = GAN_WEIGHT
    pixel: float = L1_WEIGHT
    perceptual: float = PERCEPTUAL_WEIGHT
    stabilized_sync: float = STABILIZED_SYNC_WEIGHT
    triplet: float = TRIPLET_WEIGHT


TALKING_FACE_WEIGHTS = LossWeights()  # G_L
SILENT_LIP_WEIGHTS = LossWeights(stabilized_sync=0.0, triplet=0.0)  # G_S: λ3 = λ4 = 0


def adam(parameters: Iterable[nn.Parameter] | nn.Module) -> torch.optim.Adam:
    """Adam with the paper's learning rate and betas, over a module's parameters or the ones given."""
    params = parameters.parameters() if isinstance(parameters, nn.Module) else parameters
    return torch.optim.Adam(params, lr=LEARNING_RATE, betas=ADAM_BETAS)


def perceptual_config(face_size: int, vgg19_weights: Path | None = None) -> PerceptualConfig:
    """The project's perceptual loss as eq. 1 reads: VGG19 relu1_1 … relu5_1, L1, one scale, at the
    generator's face size, c_i = PERCEPTUAL_LAYER_WEIGHTS."""
    return PerceptualConfig(
        vgg19_weights=vgg19_weights,
        input_size=face_size,
        scales=(1.0,),
        layer_weights=PERCEPTUAL_LAYER_WEIGHTS,
    )


def pixel_loss(generated: Tensor, target: Tensor) -> Tensor:
    """L_pixel = mean |I′ − I^GT|."""
    return (generated - target).abs().mean()


def stabilized_sync_loss(x: Tensor, y: Tensor, d: Tensor, eps: float = STABILIZED_SYNC_EPS) -> Tensor:
    """L_ss of eq. 3, averaged over the batch. x, y, d: (B,) similarities of generated, ground-truth and
    identity-reference lips to the audio; only x carries a gradient (y and d are detached).

    When y = d the argument of the log is 0 whatever x (the fraction is 1): it is floored at ε, so that
    sample contributes −log ε with no gradient instead of infinity. Computed in float64, returned in float32.
    """
    x64, y64, d64 = x.double(), y.detach().double(), d.detach().double()
    gap = (x64 - y64).abs()
    ratio = (gap + eps) / (gap + (y64 - d64).abs() + eps)
    return -torch.log((1.0 - ratio).clamp(min=eps)).mean().float()


def vanilla_sync_loss(x: Tensor) -> Tensor:
    """Wav2Lip's lip-sync loss on the generated lips: mean BCE(x, 1) = mean −log x (x floored at 1e-7)."""
    return binary_cross_entropy(x, torch.ones_like(x))


def adaptive_triplet_loss(
    generated: Tensor,
    target: Tensor,
    reference: Tensor,
    alpha: float = TRIPLET_MARGIN,
    eps: float = TRIPLET_EPS,
) -> Tensor:
    """L_at of eq. 2, averaged over the batch: features (B, …) of I′, I^GT and I^R, flattened per sample.

    D(V(I^GT), V(I^R)) = 0 (the reference is the target itself) is read as the smallest positive float, the
    formula's limit: the fraction grows without bound and the sample contributes ε.
    """
    g, t, r = generated.flatten(1).float(), target.flatten(1).float(), reference.flatten(1).float()
    to_target = (g - t).norm(dim=1)
    to_reference = (g - r).norm(dim=1)
    target_to_reference = (t - r).norm(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    return (to_target - to_reference / target_to_reference + alpha).clamp(min=eps).mean()


class AdaptiveTripletLoss(nn.Module):
    """L_at on images: V(·) = a frozen VGG19's TRIPLET_VGG_LAYER activation of ImageNet-normalised faces.

    Faces (B, 3, S, S) in [−1, 1]; the gradient reaches the generated faces only.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, vgg: VGG19Features, layer: int = TRIPLET_VGG_LAYER) -> None:
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)
        self.layer = layer
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> AdaptiveTripletLoss:
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, faces: Tensor) -> Tensor:
        unit = (faces + 1) / 2  # [−1, 1] → [0, 1], the range the ImageNet statistics refer to
        return self.vgg((unit - self.mean.to(faces.dtype)) / self.std.to(faces.dtype))[self.layer]

    def forward(self, generated: Tensor, target: Tensor, reference: Tensor) -> Tensor:
        with torch.no_grad():
            target_features = self.features(target)
            reference_features = self.features(reference)
        return adaptive_triplet_loss(self.features(generated), target_features, reference_features)


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """L_GAN for the generator (non-saturating): BCE(D(I′), real)."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits.float()))


def discriminator_adversarial_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_GAN for the discriminator: BCE(D(I^GT), real) + BCE(D(I′), fake)."""
    real, fake = real_logits.float(), fake_logits.float()
    return F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
