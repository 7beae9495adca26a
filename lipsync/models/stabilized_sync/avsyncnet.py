"""AVSyncNet (paper §3.4): the audio-visual sync expert of the stabilized-sync family.

* Image encoder: a ResNet-50 on the lower halves of 5 consecutive faces. Each face is resized to 224 × 224
  and its lower half (rows 112–223) kept; the 5 halves are stacked frame-major on the channel axis, so the
  first conv takes 15 channels of 112 × 224 (the paper: "we adapt the first layer of ResNet-50 for an input
  size of 112×224"; the channel stacking is Wav2Lip SyncNet's). 2048 pooled values → Linear → 512.
* Audio encoder: ResNetSE-34 (`resnet_se34.py`) on the (1, 80, 16) mel window → 512.
* Both embeddings end in a ReLU and are L2-normalised, so their cosine similarity (AVSIM) lies in [0, 1]
  and reads as a sync probability (Wav2Lip's SyncNet); the training loss is its binary cross-entropy
  against 1 (in sync) or 0 (audio from a non-overlapping part of the video).

The frozen audio encoder also conditions the generators (its un-normalised 512-d output, `encode_audio`).
Images are RGB in [−1, 1], as everywhere in lipsync.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.models.stabilized_sync.mel import MEL_BANDS, MEL_CHANNELS, MEL_WINDOW_STEPS, SYNC_FRAMES
from lipsync.models.stabilized_sync.resnet50 import RESNET50_FEATURES, RGB_CHANNELS, ResNet50
from lipsync.models.stabilized_sync.resnet_se34 import ResNetSE34
from lipsync.models.syncnet import lower_half, sync_probability
from lipsync.train.losses.sync import binary_cross_entropy

EMBED_DIM = 512  # paper §3.1: F_A ∈ R^{1×1×512}; the image embedding has the same size to be compared
AVSYNC_FACE_SIZE = 224  # faces are resized to this square; the lower half is 112 × 224 (paper §3.4)
LIP_ROWS = AVSYNC_FACE_SIZE // 2  # 112
FACE_CHANNELS = RGB_CHANNELS * SYNC_FRAMES  # 15: five RGB lower halves stacked frame-major
FACE_INPUT_SHAPE = (FACE_CHANNELS, LIP_ROWS, AVSYNC_FACE_SIZE)  # (15, 112, 224)
MEL_INPUT_SHAPE = (MEL_CHANNELS, MEL_BANDS, MEL_WINDOW_STEPS)  # (1, 80, 16)


def prepare_lips(faces: Tensor) -> Tensor:
    """(B, 5, 3, H, W) faces in [−1, 1] → (B, 15, 112, 224) image-encoder input. Differentiable.

    Each face is resized to 224 × 224 (bilinear, antialiased) and its lower half kept; frames are stacked
    frame-major on channels (frame 0's RGB first).
    """
    if faces.dim() != 5 or faces.shape[1:3] != (SYNC_FRAMES, RGB_CHANNELS):
        raise ValueError(f"faces must be (B, {SYNC_FRAMES}, {RGB_CHANNELS}, H, W), got {tuple(faces.shape)}")
    batch = faces.shape[0]
    halves = lower_half(faces.flatten(0, 1), AVSYNC_FACE_SIZE)
    return halves.reshape(batch, *FACE_INPUT_SHAPE)


def _check_shape(tensor: Tensor, expected: tuple[int, ...], name: str) -> None:
    if tensor.dim() != len(expected) + 1 or tuple(tensor.shape[1:]) != expected:
        raise ValueError(f"{name} must be (B, {', '.join(map(str, expected))}), got {tuple(tensor.shape)}")


class AVSyncNet(nn.Module):
    """ResNet-50 lip encoder + ResNetSE-34 audio encoder; `forward` gives unit-norm (B, 512) embeddings."""

    def __init__(self, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.face_encoder = ResNet50(in_channels=FACE_CHANNELS)
        self.face_head = nn.Linear(RESNET50_FEATURES, embed_dim)
        self.audio_encoder = ResNetSE34(out_dim=embed_dim)

    def encode_faces(self, lips: Tensor) -> Tensor:
        """(B, 15, 112, 224) from `prepare_lips` → (B, 512), non-negative, not normalised."""
        _check_shape(lips, FACE_INPUT_SHAPE, "lips")
        return F.relu(self.face_head(self.face_encoder(lips)))

    def encode_audio(self, mels: Tensor) -> Tensor:
        """(B, 1, 80, 16) mel windows → (B, 512), non-negative, not normalised (the generators' F_A)."""
        _check_shape(mels, MEL_INPUT_SHAPE, "mels")
        return F.relu(self.audio_encoder(mels))

    def forward(self, lips: Tensor, mels: Tensor) -> tuple[Tensor, Tensor]:
        """(vision, audio) embeddings, each (B, 512) with unit L2 norm."""
        vision = F.normalize(self.encode_faces(lips), p=2, dim=1)
        audio = F.normalize(self.encode_audio(mels), p=2, dim=1)
        return vision, audio

    def similarity(self, lips: Tensor, mels: Tensor) -> Tensor:
        """(B,) AVSIM(I, A) of eq. 4: the cosine similarity of the two embeddings, in [0, 1], float32."""
        vision, audio = self(lips, mels)
        return sync_probability(vision, audio)


def avsync_loss(vision: Tensor, audio: Tensor, labels: Tensor) -> Tensor:
    """AVSyncNet's training loss: mean BCE of the cosine similarity against labels (1 in sync, 0 not)."""
    return binary_cross_entropy(sync_probability(vision, audio), labels)
