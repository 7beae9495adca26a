"""The lip-sync loss (MuseTalk paper eq. 6): a frozen SyncNet scores generated faces against audio.

See lipsync/models/musetalk/README.md, Training losses.

L_sync = mean_i BCE(clamp(cos(audio_i, vision_i), 0, 1), 1) = mean_i -log P_sync(i).

The SyncNet stays in eval mode with frozen parameters (whatever `.train()` is called on a parent module);
the gradient flows through it to the predicted faces only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lipsync.models.syncnet import (
    MEL_BINS,
    SyncNet,
    SyncNetKind,
    SyncNetSpec,
    load_syncnet,
    prepare_faces,
    sync_probability,
)

PROBABILITY_EPS = 1e-7  # logs are taken of probabilities kept this far inside (0, 1): finite loss and grad


def binary_cross_entropy(probability: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE in float32, written out so it also runs inside autocast regions (where torch refuses
    F.binary_cross_entropy). A probability of exactly 0 or 1 gives a finite loss (at most -log 1e-7 = 16
    per sample) and a finite gradient."""
    p, y = probability.float(), labels.float()
    log_p = torch.log(p.clamp(min=PROBABILITY_EPS))
    log_not_p = torch.log1p(-p.clamp(max=1.0 - PROBABILITY_EPS))
    return -(y * log_p + (1.0 - y) * log_not_p).mean()


def sync_bce(vision: Tensor, audio: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE of clamp(cos(vision, audio), 0, 1) against labels (1 in sync, 0 not)."""
    return binary_cross_entropy(sync_probability(vision, audio), labels)


class SyncLoss(nn.Module):
    """Frozen SyncNet expert; `forward(pred_faces, mels)` is the sync loss of the generated faces."""

    def __init__(self, model: SyncNet, spec: SyncNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.syncnet = model
        model.requires_grad_(False)
        model.eval()

    @classmethod
    def from_checkpoint(
        cls, path: Path, kind: SyncNetKind | None = None, device: torch.device | str = "cpu"
    ) -> SyncLoss:
        model, spec = load_syncnet(path, kind, device)
        return cls(model, spec)

    def train(self, mode: bool = True) -> SyncLoss:
        """The expert never trains: its BatchNorm statistics and dropout stay in eval mode."""
        super().train(mode)
        self.syncnet.eval()
        return self

    def probabilities(self, pred_faces: Tensor, mels: Tensor) -> Tensor:
        """(B,) sync probability of each sample. pred_faces (B, F, 3, H, W) in [-1, 1], mels (B, 1, 80, T)."""
        expected = self.spec.mel_shape
        if mels.dim() != 4 or tuple(mels.shape[1:]) != expected:
            raise ValueError(
                f"mels must be (B, 1, {MEL_BINS}, {expected[2]}) for {self.spec.frames} frames, "
                f"got {tuple(mels.shape)}"
            )
        if mels.shape[0] != pred_faces.shape[0]:
            raise ValueError(f"{pred_faces.shape[0]} face samples but {mels.shape[0]} mel windows")
        dtype = next(self.syncnet.parameters()).dtype
        faces = prepare_faces(pred_faces, self.spec).to(dtype)
        vision, audio = self.syncnet(faces, mels.to(dtype))
        return sync_probability(vision, audio)

    def forward(self, pred_faces: Tensor, mels: Tensor) -> Tensor:
        """Scalar: mean over the batch of BCE(P_sync, 1)."""
        probability = self.probabilities(pred_faces, mels)
        return binary_cross_entropy(probability, torch.ones_like(probability))
