"""The generator losses of a stabilized-sync training step (paper eq. 5), from `losses.py`'s terms.

* The sync expert scores a 5-frame window against its mel window: AVSyncNet (the paper's) or a 5-frame
  Wav2Lip-style SyncNet (the ablation's setups A–G); frozen, always in eval mode.
* The sync term is L_ss(x, y, d) (eq. 3–4) or the vanilla BCE(x, 1); x, y, d are the expert's scores of the
  generated, ground-truth and identity-reference (as G_L sees it: silent) windows.
* The triplet term is L_at (eq. 2) or the vanilla triplet [D(I′, I^GT) − D(I′, I^R) + α]_+ (setup F), both
  on the frozen VGG19's relu5_1, the VGG the perceptual loss uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from lipsync.models.stabilized_sync.avsyncnet import AVSyncNet, prepare_lips
from lipsync.models.stabilized_sync.losses import (
    TRIPLET_MARGIN,
    AdaptiveTripletLoss,
    LossWeights,
    generator_adversarial_loss,
    perceptual_config,
    pixel_loss,
    stabilized_sync_loss,
    vanilla_sync_loss,
)
from lipsync.models.stabilized_sync.mel import SYNC_FRAMES
from lipsync.models.syncnet import load_syncnet
from lipsync.train.config import ConfigError, StabilizedTrainConfig
from lipsync.train.losses.perceptual import PerceptualLoss
from lipsync.train.losses.sync import SyncLoss


class SyncExpert(nn.Module):
    """Frozen scorer: faces (B, 5, 3, S, S) in [−1, 1] and mels (B, 1, 80, 16) → (B,) sync similarity."""

    def __init__(self, avsyncnet: AVSyncNet | None = None, syncnet: SyncLoss | None = None) -> None:
        super().__init__()
        self.avsyncnet = avsyncnet.requires_grad_(False).eval() if avsyncnet is not None else None
        self.syncnet = syncnet

    @classmethod
    def wav2lip(cls, path: Path) -> SyncExpert:
        model, spec = load_syncnet(path, kind="wav2lip")
        if spec.frames != SYNC_FRAMES:
            raise ConfigError(
                f"loss.wav2lip_syncnet {path} takes {spec.frames} frames, not {SYNC_FRAMES}",
                "train a SyncNet with frames: 5 (configs/train/syncnet.yaml)",
            )
        return cls(syncnet=SyncLoss(model, spec))

    def train(self, mode: bool = True) -> SyncExpert:
        super().train(mode)
        if self.avsyncnet is not None:
            self.avsyncnet.eval()
        if self.syncnet is not None:
            self.syncnet.train(False)
        return self

    def forward(self, faces: Tensor, mels: Tensor) -> Tensor:
        if self.avsyncnet is not None:
            return self.avsyncnet.similarity(prepare_lips(faces), mels)
        assert self.syncnet is not None
        return self.syncnet.probabilities(faces, mels)


class VanillaTripletLoss(AdaptiveTripletLoss):
    """[D(V(I′), V(I^GT)) − D(V(I′), V(I^R)) + α]_+, [·]_+ = max(·, 0): the ablation's setup F."""

    def forward(self, generated: Tensor, target: Tensor, reference: Tensor) -> Tensor:
        with torch.no_grad():
            target_features = self.features(target).flatten(1).float()
            reference_features = self.features(reference).flatten(1).float()
        features = self.features(generated).flatten(1).float()
        to_target = (features - target_features).norm(dim=1)
        to_reference = (features - reference_features).norm(dim=1)
        return (to_target - to_reference + TRIPLET_MARGIN).clamp(min=0.0).mean()


@dataclass
class GeneratorTerms:
    """One step's generator losses (unweighted; None when off) and their weighted total."""

    total: Tensor
    gan: Tensor
    pixel: Tensor
    perceptual: Tensor | None = None
    sync: Tensor | None = None
    triplet: Tensor | None = None

    def scalars(self) -> dict[str, float]:
        terms = {f.name: getattr(self, f.name) for f in fields(self)}
        return {f"loss/{k}": float(v.detach()) for k, v in terms.items() if v is not None}


class GeneratorLosses(nn.Module):
    """Eq. 5 for a step: L_GAN + λ1·L_pixel + λ2·L_per + λ3·(L_ss or vanilla) + λ4·(L_at or vanilla)."""

    def __init__(
        self, config: StabilizedTrainConfig, weights: LossWeights, expert: SyncExpert | None
    ) -> None:
        super().__init__()
        self.weights = weights
        self.stabilized = config.loss.sync_loss == "stabilized"
        self.expert = expert if weights.stabilized_sync > 0 else None
        self.perceptual: PerceptualLoss | None = None
        self.triplet: AdaptiveTripletLoss | None = None
        if weights.perceptual > 0 or weights.triplet > 0:
            net = perceptual_config(config.face_size, config.loss.vgg19_weights)
            if config.loss.vgg_width_divisor > 1:
                from dataclasses import replace

                net = replace(net, width_divisor=config.loss.vgg_width_divisor)
            self.perceptual = PerceptualLoss(net, "loss.vgg19_weights")
        if weights.triplet > 0 and self.perceptual is not None:
            kind = VanillaTripletLoss if config.loss.triplet_loss == "vanilla" else AdaptiveTripletLoss
            self.triplet = kind(self.perceptual.vgg)

    def forward(
        self, generated: Tensor, target: Tensor, identity: Tensor, sync_mels: Tensor, fake_logits: Tensor
    ) -> GeneratorTerms:
        """generated, target, identity (B, 5, 3, S, S); sync_mels (B, 1, 80, 16); D's logits of generated."""
        w = self.weights
        flat_generated, flat_target = generated.flatten(0, 1), target.flatten(0, 1)
        gan = generator_adversarial_loss(fake_logits)
        pixel = pixel_loss(flat_generated, flat_target)
        terms = GeneratorTerms(total=w.gan * gan + w.pixel * pixel, gan=gan, pixel=pixel)
        if self.perceptual is not None and w.perceptual > 0:
            terms.perceptual = self.perceptual(flat_generated, flat_target)
            terms.total = terms.total + w.perceptual * terms.perceptual
        if self.expert is not None:
            x = self.expert(generated, sync_mels)
            if self.stabilized:
                with torch.no_grad():
                    y = self.expert(target, sync_mels)
                    d = self.expert(identity, sync_mels)
                terms.sync = stabilized_sync_loss(x, y, d)
            else:
                terms.sync = vanilla_sync_loss(x)
            terms.total = terms.total + w.stabilized_sync * terms.sync
        if self.triplet is not None:
            terms.triplet = self.triplet(flat_generated, flat_target, identity.flatten(0, 1))
            terms.total = terms.total + w.triplet * terms.triplet
        return terms
