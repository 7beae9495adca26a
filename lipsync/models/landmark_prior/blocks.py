"""Building blocks shared by the alignment and rendering models: the two-scale image encoder, the residual
fusion block and the SPADE block.

* Image encoder (IP_LAP's flow and translation encoders): 7 × 7 conv, stride 1 → BN → ReLU gives the
  full-resolution feature f¹; 3 × 3 conv, stride 2 → BN → ReLU gives the half-resolution feature f². The
  paper's E_r, E_m and the lip module's encoders all have this form ("two spatial resolutions", §3.2.1).
* Fusion (the paper's "feature fusion module built with Resblocks", §3.2.1, §3.2.2; no layout given): a
  3 × 3 conv → BN → ReLU from the concatenation back to the feature width, then residual blocks of two
  3 × 3 convs with BN and the skip added before the last ReLU (our choice).
* SPADE block (Park et al., as IP_LAP writes it): [SPADE-norm → LeakyReLU 0.2 → 3 × 3 conv] × 2, no skip.
  SPADE-norm: affine-free InstanceNorm; the modulation map, nearest-resized to the feature's size, → 3 × 3
  conv to the hidden width (no activation) → one 3 × 3 conv each for γ and β; out = x̂·(1 + γ) + β. One
  map may modulate several consecutive rows (M_a's references of one frame): its γ, β are computed once.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

STEM_KERNEL = 7
DOWN_KERNEL = 3
DOWN_STRIDE = 2  # f² is at half the resolution of f¹
CONV_KERNEL = 3
SPADE_SLOPE = 0.2  # LeakyReLU inside SPADE blocks (IP_LAP)
SPADE_CONVS = 2  # SPADE-norm → LeakyReLU → conv, twice per block (IP_LAP)


class TwoScaleEncoder(nn.Module):
    """(B, in, S, S) → f¹ (B, c1, S, S), f² (B, c2, S/2, S/2)."""

    def __init__(self, in_channels: int, full_channels: int, half_channels: int) -> None:
        super().__init__()
        self.full_stage = nn.Sequential(
            nn.Conv2d(in_channels, full_channels, STEM_KERNEL, padding=STEM_KERNEL // 2, bias=False),
            nn.BatchNorm2d(full_channels),
            nn.ReLU(),
        )
        self.half_stage = nn.Sequential(
            nn.Conv2d(full_channels, half_channels, DOWN_KERNEL, DOWN_STRIDE, DOWN_KERNEL // 2, bias=False),
            nn.BatchNorm2d(half_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        full = self.full_stage(x)
        return full, self.half_stage(full)


class ResBlock(nn.Module):
    """conv → BN → ReLU → conv → BN, + input, ReLU (3 × 3, width kept)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, CONV_KERNEL, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, CONV_KERNEL, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + x)


def fusion(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
    """Concatenated features (B, in, h, w) → (B, channels, h, w): a 3 × 3 conv then `blocks` ResBlocks."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, CONV_KERNEL, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        *(ResBlock(channels) for _ in range(blocks)),
    )


class SpadeNorm(nn.Module):
    """Affine-free InstanceNorm of x, modulated by γ, β predicted from a map."""

    def __init__(self, channels: int, modulation_channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Conv2d(modulation_channels, hidden, CONV_KERNEL, padding=1)
        self.gamma = nn.Conv2d(hidden, channels, CONV_KERNEL, padding=1)
        self.beta = nn.Conv2d(hidden, channels, CONV_KERNEL, padding=1)

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        """x (B·K, C, h, w); modulation (B, M, H, W), one map for each run of K consecutive rows of x. γ and
        β are computed once per map: M_a's N references of a frame share its sketches, and computing their
        modulation once instead of N times is half of M_a's work at N = 25 (the result is the same)."""
        maps, rows = len(modulation), len(x)
        if rows % maps:
            raise ValueError(f"{rows} feature rows cannot share {maps} modulation maps")
        if modulation.shape[-2:] != x.shape[-2:]:
            modulation = F.interpolate(modulation, size=x.shape[-2:], mode="nearest")
        hidden = self.shared(modulation)
        gamma, beta = self.gamma(hidden), self.beta(hidden)
        if rows == maps:
            return self.norm(x) * (1 + gamma) + beta
        grouped = self.norm(x).unflatten(0, (maps, rows // maps))
        return (grouped * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)).flatten(0, 1)


class SpadeBlock(nn.Module):
    """[SPADE-norm → LeakyReLU 0.2 → 3 × 3 conv] × 2 at a fixed width."""

    def __init__(self, channels: int, modulation_channels: int, hidden: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(
            SpadeNorm(channels, modulation_channels, hidden) for _ in range(SPADE_CONVS)
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, CONV_KERNEL, padding=1) for _ in range(SPADE_CONVS)
        )
        self.act = nn.LeakyReLU(SPADE_SLOPE)

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        """x (B·K, C, h, w), modulation (B, M, H, W): see `SpadeNorm`."""
        for norm, conv in zip(self.norms, self.convs, strict=True):
            x = conv(self.act(norm(x, modulation)))
        return x
