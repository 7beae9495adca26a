"""The rendering model M_r (paper §3.2.2, Fig. 3-4): the multi-reference lip module, the audio-aware
cross-attention and a SPADE/PixelShuffle decoder guided by the alignment model's outputs.

Paper:

* Multi-reference lip module: one encoder for the occluded face (f^m), another for each of the N lip
  references with its lip sketch (f^l_i); f_i = F([f^m ‖ f^l_i]), F built from residual blocks; f̄ = the mean
  of the f_i. N = 5 lip references (§4.1, Table 3).
* Audio-aware cross-attention: f^a_t = E_a(m_t); f_g = softmax((W_q f̄)(W_k f^a_t)ᵀ)(W_v f^a_t), W_q, W_k,
  W_v 1 × 1 convs.
* Decoder: SPADE and PixelShuffle layers combining f_g with the guides I^c, f^{c1}, f^{c2}.

Filled in (each our choice unless IP_LAP is named):

* The face encoder reads [I_t^m ‖ L_{t−k:t+k}] (18 channels), as IP_LAP's translation encoder: M_r takes the
  target sketches (the paper's signature of M_r lists them) and this is where they enter. Both encoders are
  `blocks.TwoScaleEncoder`; the module works at half resolution (256 channels at 64 × 64 for 128 px).
* E_a is IP_LAP's mel encoder up to its last strided stage: (1, 80, 16) → 256 × 3 × 3, nine audio positions.
  The paper's 1 × 1 convs on f^a_t need a map, and a softmax over a single 1 × 1 audio vector would be 1
  everywhere; so the 3 × 3 map is kept, each of its 9 cells a key/value.
* Attention as the paper writes it: no 1/√d scaling; queries and keys 32 wide, values as wide as f̄; the
  softmax runs over the 9 audio positions for each of the h·w visual positions. f_g is added to f̄
  (a residual: without the module, as in the paper's "w/o Aud" ablation, the decoder would read f̄).
* Decoder, IP_LAP's translation decoder without its AdaIN audio blocks (audio enters through the
  attention here): SPADE(256; f^{c2}) → PixelShuffle 2 → SPADE(64; f^{c1}) → SPADE(64; I^c) → LeakyReLU 0.01
  → 7 × 7 conv → 3 (no bias) → sigmoid. Images in [0, 1] (IP_LAP).

Ablations (`RenderConfig` switches, off by default): `without_lip_module` ("w/o Lip", §4.4) drops the lip
encoder and fusion, f̄ is the face encoder's half-resolution feature f^m and the lip references are not
read; `without_audio_attention` ("w/o Aud", §4.5) drops E_a and the attention, the decoder reads f̄.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipsync.models.landmark_prior.alignment import IMAGE_CHANNELS, Alignment
from lipsync.models.landmark_prior.blocks import SpadeBlock, TwoScaleEncoder, fusion
from lipsync.models.landmark_prior.config import PIXEL_SHUFFLE, RenderConfig
from lipsync.models.landmark_prior.landmark_transformer import mel_trunk
from lipsync.models.landmark_prior.sketch import SKETCH_CHANNELS, STACK_FRAMES

LIP_REFERENCES = 5  # N lip references (paper §4.1)
OUTPUT_KERNEL = 7  # last conv (IP_LAP)
OUTPUT_SLOPE = 0.01  # LeakyReLU before it (IP_LAP)
GUIDE_IMAGE_CHANNELS = 2 * IMAGE_CHANNELS  # I^c = [I_t^m ‖ Ī^r]


def cross_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(Q Kᵀ) V over flattened positions: query (B, d, h, w), key (B, d, p, q), value (B, c, p, q)
    → (B, c, h, w). No scaling, as the paper's formula."""
    q = query.flatten(2).transpose(1, 2)  # (B, hw, d)
    k = key.flatten(2)  # (B, d, pq)
    v = value.flatten(2).transpose(1, 2)  # (B, pq, c)
    attended = torch.softmax(q @ k, dim=-1) @ v  # (B, hw, c)
    return attended.transpose(1, 2).reshape(query.shape[0], -1, *query.shape[-2:])


class AudioCrossAttention(nn.Module):
    """f_g = softmax((W_q f̄)(W_k f^a)ᵀ)(W_v f^a), W_q, W_k, W_v 1 × 1 convs; returns f̄ + f_g."""

    def __init__(self, visual_channels: int, audio_channels: int, attention_channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(visual_channels, attention_channels, 1)
        self.key = nn.Conv2d(audio_channels, attention_channels, 1)
        self.value = nn.Conv2d(audio_channels, visual_channels, 1)

    def forward(self, visual: Tensor, audio: Tensor) -> Tensor:
        return visual + cross_attention(self.query(visual), self.key(audio), self.value(audio))


class MultiReferenceLips(nn.Module):
    """f̄ = mean_i F([f^m ‖ f^l_i]): face features (B, c2, h, w) and lip references (B, N, 6, S, S)."""

    def __init__(self, config: RenderConfig) -> None:
        super().__init__()
        c1, c2 = config.full_channels, config.half_channels
        self.lip_encoder = TwoScaleEncoder(IMAGE_CHANNELS + SKETCH_CHANNELS, c1, c2)
        self.fusion = fusion(2 * c2, c2, config.fusion_blocks)

    def encode(self, lips: Tensor) -> Tensor:
        """f^l of (..., 6, S, S) lip references with their sketches → (..., c2, S/2, S/2). It reads nothing
        of the target, so a generator encodes its lip set once."""
        _, lip_features = self.lip_encoder(lips.flatten(0, -4))
        return lip_features.unflatten(0, lips.shape[:-3])

    def forward(self, face: Tensor, lips: Tensor, lip_features: Tensor | None = None) -> Tensor:
        """`lip_features`: `encode(lips)` when already computed."""
        batch, count = lips.shape[:2]
        if lip_features is None:
            lip_features = self.encode(lips)
        fused = self.fusion(torch.cat([face.repeat_interleave(count, dim=0), lip_features.flatten(0, 1)], 1))
        return fused.unflatten(0, (batch, count)).mean(dim=1)


class RenderingModel(nn.Module):
    """M_r(I_t^m, I^l, L_{t−k:t+k}, I^c, f^{c1}, f^{c2}, m_t) → Î_t (B, 3, S, S) in [0, 1].

    masked (B, 3, S, S); target_sketches (B, 15, S, S); lip_references (B, N, 3, S, S) and lip_sketches
    (B, N, 3, S, S); mel (B, 1, 80, 16); alignment: the `AlignmentModel`'s output for the same frame.
    """

    def __init__(self, config: RenderConfig | None = None) -> None:
        super().__init__()
        config = config or RenderConfig()
        self.config = config
        c1, c2, up = config.full_channels, config.half_channels, config.upsampled_channels
        self.face_encoder = TwoScaleEncoder(IMAGE_CHANNELS + SKETCH_CHANNELS * STACK_FRAMES, c1, c2)
        self.lips = None if config.without_lip_module else MultiReferenceLips(config)
        self.audio_encoder: nn.Sequential | None = None  # E_a
        self.attention: AudioCrossAttention | None = None
        if not config.without_audio_attention:
            layers, audio_channels = mel_trunk(config.audio_width_divisor)
            self.audio_encoder = nn.Sequential(*layers)
            self.attention = AudioCrossAttention(c2, audio_channels, config.attention_channels)
        hidden = config.spade_hidden
        self.half_spade = SpadeBlock(c2, 2 * c2, hidden)  # modulated by f^{c2}
        self.upsample = nn.PixelShuffle(PIXEL_SHUFFLE)
        self.full_spade = SpadeBlock(up, 2 * c1, hidden)  # by f^{c1}
        self.image_spade = SpadeBlock(up, GUIDE_IMAGE_CHANNELS, hidden)  # by I^c
        self.output = nn.Sequential(
            nn.LeakyReLU(OUTPUT_SLOPE),
            nn.Conv2d(up, IMAGE_CHANNELS, OUTPUT_KERNEL, padding=OUTPUT_KERNEL // 2, bias=False),
            nn.Sigmoid(),
        )

    def encode_lips(self, lip_references: Tensor, lip_sketches: Tensor) -> Tensor | None:
        """The lip module's f^l of (B, N) lip references (None without the lip module)."""
        if self.lips is None:
            return None
        return self.lips.encode(torch.cat([lip_references, lip_sketches], dim=-3))

    def forward(
        self,
        masked: Tensor,
        target_sketches: Tensor,
        lip_references: Tensor,
        lip_sketches: Tensor,
        mel: Tensor,
        alignment: Alignment,
        lip_features: Tensor | None = None,
    ) -> Tensor:
        """`lip_features`: `encode_lips(lip_references, lip_sketches)` when already computed."""
        _, face = self.face_encoder(torch.cat([masked, target_sketches], dim=1))
        if self.lips is None:
            x = face
        else:
            x = self.lips(face, torch.cat([lip_references, lip_sketches], dim=2), lip_features)
        if self.attention is not None and self.audio_encoder is not None:
            x = self.attention(x, self.audio_encoder(mel))
        x = self.upsample(self.half_spade(x, alignment.guide_half))
        x = self.image_spade(self.full_spade(x, alignment.guide_full), alignment.guide_image)
        output: Tensor = self.output(x)
        return output
