"""The audio-to-landmark transformer (paper §3.1, which reuses IP_LAP's landmark generator).

Inputs per sample: N_l reference landmark sets (2, n_r), and for T = 5 consecutive frames a (1, 80, 16) mel
window and the frame's pose (upper-face) landmarks (2, n_p). Output: the T frames' content landmarks (lower
jaw, then lips), (T, 2, n_c). With the project's 68 points n_r = 68, n_p = 37, n_c = 31 (`landmark_sets`).

IP_LAP's layout (its landmark generator), kept here:

* three CNN encoders to 512-d: a 2-D one for the mel window, 1-D ones (over the point sequence, x and y as
  channels) for the reference set and the pose set; conv → BatchNorm → (+ input) → ReLU blocks, the last
  1 × 1 block with tanh; one LayerNorm shared by the three embeddings;
* tokens [N_l references ‖ T audio ‖ T pose]; audio and pose tokens get the sinusoidal position of their
  frame (0 … T − 1) and a learned modality embedding (index 0 padding, pose 1, audio 2, reference 3),
  references the modality embedding only; dropout 0.1;
* a post-norm transformer encoder, 4 layers, d 512, 4 heads, FFN 1024, dropout 0.1, ReLU, no mask and no
  final norm (every token sees every token);
* audio-token outputs → Linear → lip points, pose-token outputs → Linear → jaw points, (x, y) interleaved
  per point, no activation.

The 1-D encoders' strides follow IP_LAP's rule, so that they reduce any point count to one position: the
leading stride-1 stages (1 for references, 2 for pose), then stride 2 while the sequence is longer than 3,
stride 1 after, and a kernel-3 unpadded conv to length 1. For IP_LAP's 131 and 74 points this gives its own
strides; for our 68 and 37 the 256-channel stage has stride 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipsync.models.landmark_prior.landmark_sets import (
    CONTENT_COUNT,
    COORDINATES,
    JAW_COUNT,
    LANDMARK_COUNT,
    LIP_COUNT,
    POSE_COUNT,
)

# --- IP_LAP's landmark generator -------------------------------------------------------------------------
SEQUENCE_FRAMES = 5  # T (IP_LAP)
REFERENCE_SETS = 15  # N_l (IP_LAP)
MODEL_DIM = 512  # d_model
LAYERS = 4
HEADS = 4
FEEDFORWARD_DIM = 1024
DROPOUT = 0.1
POSITION_BASE = 10000.0  # sinusoidal encoding (Vaswani et al.)
PADDING_MODALITY = 0  # row of the modality table that stays zero
POSE_MODALITY = 1
AUDIO_MODALITY = 2
REFERENCE_MODALITY = 3
MODALITIES = 4
MEL_BANDS = 80
MEL_STEPS = 16
MEL_CHANNELS = 1

# (out channels, stride, residual blocks after it) of the mel encoder; kernel 3, padding 1. 80 × 16 →
# 80 × 16 → 27 × 16 → 9 × 6 → 3 × 3, then 512 k3 p0 → 1 × 1 and a 512 k1 block.
MEL_STAGES: tuple[tuple[int, tuple[int, int], int], ...] = (
    (32, (1, 1), 2),
    (64, (3, 1), 2),
    (128, (3, 3), 2),
    (256, (3, 2), 1),
)
# (out channels, residual blocks) of the 1-D encoders' stages; kernel 3, padding 1, stride by the rule above.
REFERENCE_STAGES: tuple[tuple[int, int], ...] = (
    (4, 0),
    (8, 2),
    (16, 2),
    (32, 2),
    (64, 2),
    (128, 2),
    (256, 1),
)
REFERENCE_LEADING_STRIDE_1 = 1
POSE_STAGES: tuple[tuple[int, int], ...] = ((4, 0), (8, 2), (16, 2), (32, 2), (64, 2), (128, 2), (256, 2))
POSE_LEADING_STRIDE_1 = 2
COLLAPSE_LENGTH = 3  # the kernel-3 unpadded conv takes this length to 1
EMBEDDING_DIM = 512  # every encoder's output (= MODEL_DIM)


@dataclass(frozen=True)
class TransformerConfig:
    """Widths of the landmark transformer. Defaults: IP_LAP's. `tiny()`: for tests."""

    model_dim: int = MODEL_DIM
    layers: int = LAYERS
    heads: int = HEADS
    feedforward_dim: int = FEEDFORWARD_DIM
    dropout: float = DROPOUT
    width_divisor: int = 1  # divides the encoders' channel counts (not the 512-d embedding: model_dim)

    @classmethod
    def tiny(cls) -> TransformerConfig:
        return cls(model_dim=32, layers=2, heads=2, feedforward_dim=64, width_divisor=8)


class ConvBlock(nn.Module):
    """conv → BatchNorm → (+ input when `residual`) → ReLU (or tanh), 1-D or 2-D."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int | tuple[int, int] = 1,
        padding: int = 1,
        residual: bool = False,
        tanh: bool = False,
    ) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.conv = conv(in_channels, out_channels, kernel, stride, padding)  # type: ignore[arg-type]
        self.norm = norm(out_channels)
        self.residual = residual
        self.act: nn.Module = nn.Tanh() if tanh else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm(self.conv(x))
        return self.act(out + x if self.residual else out)


def _scaled(channels: int, divisor: int) -> int:
    return max(1, channels // divisor)


def mel_trunk(width_divisor: int = 1) -> tuple[list[nn.Module], int]:
    """The mel encoder's strided stages: (B, 1, 80, 16) → (B, 256 / divisor, 3, 3); layers and width."""
    layers: list[nn.Module] = []
    channels = MEL_CHANNELS
    for width, stride, blocks in MEL_STAGES:
        width = _scaled(width, width_divisor)
        layers.append(ConvBlock(2, channels, width, stride=stride))
        layers += [ConvBlock(2, width, width, residual=True) for _ in range(blocks)]
        channels = width
    return layers, channels


def mel_encoder(out_dim: int = EMBEDDING_DIM, width_divisor: int = 1, tanh: bool = True) -> nn.Sequential:
    """(B, 1, 80, 16) → (B, out_dim, 1, 1). The last 1 × 1 block ends in tanh (landmark generator) or ReLU
    (IP_LAP's renderer)."""
    layers, channels = mel_trunk(width_divisor)
    layers.append(ConvBlock(2, channels, out_dim, padding=0))
    layers.append(ConvBlock(2, out_dim, out_dim, kernel=1, padding=0, tanh=tanh))
    return nn.Sequential(*layers)


def point_encoder(
    points: int,
    stages: tuple[tuple[int, int], ...],
    leading_stride_1: int,
    out_dim: int = EMBEDDING_DIM,
    width_divisor: int = 1,
    residual_last: bool = False,
) -> nn.Sequential:
    """(B, 2, points) → (B, out_dim, 1): IP_LAP's 1-D landmark encoders, strides by the module's rule."""
    layers: list[nn.Module] = []
    channels, length = COORDINATES, points
    for index, (width, blocks) in enumerate(stages):
        width = _scaled(width, width_divisor)
        stride = 2 if index >= leading_stride_1 and length > COLLAPSE_LENGTH else 1
        layers.append(ConvBlock(1, channels, width, stride=stride))
        layers += [ConvBlock(1, width, width, residual=True) for _ in range(blocks)]
        channels, length = width, (length - 1) // stride + 1
    if length != COLLAPSE_LENGTH:
        raise ValueError(f"{points} points leave length {length}, not {COLLAPSE_LENGTH}, before the collapse")
    layers.append(ConvBlock(1, channels, out_dim, padding=0))
    layers.append(ConvBlock(1, out_dim, out_dim, kernel=1, padding=0, residual=residual_last, tanh=True))
    return nn.Sequential(*layers)


def sinusoidal_positions(count: int, dim: int) -> Tensor:
    """(count, dim): sin on even dimensions, cos on odd ones, wavelengths from 2π to 2π·10000."""
    position = torch.arange(count, dtype=torch.float64)[:, None]
    rate = torch.exp(-math.log(POSITION_BASE) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(count, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table.float()


class LandmarkTransformer(nn.Module):
    """mels (B, T, 1, 80, 16), pose (B, T, 2, 37), references (B, N_l, 2, 68) in pose-then-content order
    (`landmark_sets.REFERENCE_ORDER`) → content landmarks (B, T, 2, 31): jaw 11, then lips 20.

    Every token attends to every token: there is no mask and no padding (T and N_l are whatever the
    tensors hold).
    """

    positions: Tensor

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        config = config or TransformerConfig()
        dim, divisor = config.model_dim, config.width_divisor
        self.mel_encoder = mel_encoder(dim, divisor)
        self.reference_encoder = point_encoder(
            LANDMARK_COUNT, REFERENCE_STAGES, REFERENCE_LEADING_STRIDE_1, dim, divisor
        )
        self.pose_encoder = point_encoder(
            POSE_COUNT, POSE_STAGES, POSE_LEADING_STRIDE_1, dim, divisor, residual_last=True
        )
        self.embedding_norm = nn.LayerNorm(dim)
        self.modality = nn.Embedding(MODALITIES, dim, padding_idx=PADDING_MODALITY)
        self.token_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            dim, config.heads, config.feedforward_dim, config.dropout, activation="relu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.lip_head = nn.Linear(dim, COORDINATES * LIP_COUNT)
        self.jaw_head = nn.Linear(dim, COORDINATES * JAW_COUNT)
        self.register_buffer("positions", sinusoidal_positions(SEQUENCE_FRAMES, dim), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def _embed(self, encoder: nn.Module, x: Tensor) -> Tensor:
        """(B, K, …) → (B, K, d) through an encoder run on the B·K items at once."""
        batch, count = x.shape[:2]
        return self.embedding_norm(encoder(x.flatten(0, 1)).reshape(batch, count, -1))

    def forward(self, mels: Tensor, pose: Tensor, references: Tensor) -> Tensor:
        frames = mels.shape[1]
        if pose.shape[1] != frames or frames > self.positions.shape[0]:
            raise ValueError(f"{frames} mel windows and {pose.shape[1]} pose sets: need the same T ≤ 5")
        audio = self._embed(self.mel_encoder, mels)
        pose_tokens = self._embed(self.pose_encoder, pose)
        refs = self._embed(self.reference_encoder, references)
        modality = self.modality.weight
        position = self.positions[:frames]
        tokens = torch.cat(
            [
                refs + modality[REFERENCE_MODALITY],
                audio + position + modality[AUDIO_MODALITY],
                pose_tokens + position + modality[POSE_MODALITY],
            ],
            dim=1,
        )
        out = self.encoder(self.token_dropout(tokens))
        start = refs.shape[1]
        lips = self.lip_head(out[:, start : start + frames])
        jaw = self.jaw_head(out[:, start + frames :])
        # (x, y) interleaved per point → (B, T, 2, points)
        lips = lips.unflatten(-1, (LIP_COUNT, COORDINATES)).transpose(-1, -2)
        jaw = jaw.unflatten(-1, (JAW_COUNT, COORDINATES)).transpose(-1, -2)
        content = torch.cat([jaw, lips], dim=-1)
        assert content.shape[-1] == CONTENT_COUNT
        return content
