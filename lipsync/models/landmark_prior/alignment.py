"""The alignment model M_a (paper §3.2.1, Fig. 2): per reference image a flow field and a spatial weight,
then the references' images and features warped and averaged with the normalised weights.

Paper: encoders E_r (reference image I^r with its sketch L^r) and E_m (occluded target I_t^m); their
features concatenated and fused by residual blocks; the 2k + 1 target sketches enter through SPADE; an
output layer gives a flow F_i and a weight w_i per reference; Ī^r = Σ w_i F_i(I_i^r) / Σ w_i, and the same
for E_r's features at two resolutions (f̄^{r1}, f̄^{r2}); the guides passed to the renderer are
I^c = [I_t^m ‖ Ī^r] and f^{cx} = [f^{mx} ‖ f̄^{rx}].

IP_LAP's flow network fills the layout (`blocks`): encoders of 32 channels at full and 256 at half
resolution; 2 SPADE blocks at half resolution (target sketches resized to it); PixelShuffle 2; 1 SPADE
block at full resolution; flow head 7 × 7 conv → 2 (a displacement in pixels); weight head 7 × 7 conv → 32,
ReLU, 7 × 7 conv → 1, sigmoid. IP_LAP has no E_m: its flow network sees only the reference; the fusion of
the two encoders' half-resolution features is the paper's. E_m reads the occluded face alone (our reading:
the sketches come in through SPADE).

Normalisation: w_i / max(Σ_j w_j, 1e-5). The paper divides by Σ w_j; IP_LAP by Σ w_j + 1e-5. Flooring the
sum instead of adding to it keeps the weights summing to exactly 1 (up to rounding) while guarding a zero
sum (our choice). At half resolution the normalised weights are 2 × 2 average-pooled (they still sum to 1)
and the flow is resized (bilinear) and halved.

Ablation "w/o Ali" (`RenderConfig.without_alignment`, paper §4.3; our reading): M_a keeps only E_m and
warps nothing. The guides keep their shapes, the occluded face's halves as above and the warped-reference
halves zero, so M_r is the same network; the flows are zero and the weights uniform. There is no Ī^r to
train with L_w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.models.landmark_prior.blocks import SpadeBlock, TwoScaleEncoder, fusion
from lipsync.models.landmark_prior.config import PIXEL_SHUFFLE, RenderConfig
from lipsync.models.landmark_prior.sketch import SKETCH_CHANNELS, STACK_FRAMES

IMAGE_CHANNELS = 3
FLOW_CHANNELS = 2  # (dx, dy) in pixels of the map being warped
HEAD_KERNEL = 7  # flow and weight heads (IP_LAP)
HALF_SPADE_BLOCKS = 2  # SPADE blocks before the PixelShuffle (IP_LAP)
WEIGHT_EPS = 1e-5  # floor of Σ w (IP_LAP's ε, used as a floor here)
ALIGN_CORNERS = False  # grid_sample's convention; see `warp`


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward warp: out[y, x] = image[y + flow_y, x + flow_x], bilinear, zeros outside.

    image (B, C, H, W); flow (B, 2, H, W) in pixels, channel 0 = x. The sampling grid is the pixel centres,
    ((2·(i + d) + 1) / size − 1), read with align_corners=False: for a zero flow and power-of-two sides
    (every size these models use) each coordinate is a dyadic fraction, exact in float32, so grid_sample
    lands on pixel centres exactly and returns the input bit for bit.
    """
    batch, _, height, width = image.shape
    if flow.shape != (batch, FLOW_CHANNELS, height, width):
        raise ValueError(f"flow {tuple(flow.shape)} does not match image {tuple(image.shape)}")
    ys = torch.arange(height, dtype=flow.dtype, device=flow.device).view(1, height, 1)
    xs = torch.arange(width, dtype=flow.dtype, device=flow.device).view(1, 1, width)
    grid_x = (2 * (xs + flow[:, 0]) + 1) / width - 1
    grid_y = (2 * (ys + flow[:, 1]) + 1) / height - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(
        image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )


def resize_flow(flow: Tensor, size: int) -> Tensor:
    """A pixel flow (B, 2, S, S) resized to (B, 2, size, size), displacements scaled by size / S."""
    scale = size / flow.shape[-1]
    return F.interpolate(flow, size=(size, size), mode="bilinear", align_corners=False) * scale


def normalise_weights(weights: Tensor) -> Tensor:
    """(B, N, 1, H, W) positive weights → the same divided by their sum over the N references."""
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=WEIGHT_EPS)


@dataclass
class ReferenceFeatures:
    """E_r's features of (B, N) references: full (B, N, c1, S, S), half (B, N, c2, S/2, S/2)."""

    full: Tensor
    half: Tensor


@dataclass
class Alignment:
    """What M_a hands the renderer and the warp loss. S = face size, N = references."""

    image: Tensor  # Ī^r (B, 3, S, S): the aggregated warped reference image (L_w's input)
    guide_image: Tensor  # I^c = [I_t^m ‖ Ī^r] (B, 6, S, S)
    guide_full: Tensor  # f^{c1} = [f^{m1} ‖ f̄^{r1}] (B, 2·c1, S, S)
    guide_half: Tensor  # f^{c2} = [f^{m2} ‖ f̄^{r2}] (B, 2·c2, S/2, S/2)
    flows: Tensor  # (B, N, 2, S, S), pixels
    weights: Tensor  # (B, N, 1, S, S), normalised: Σ over N = 1


class AlignmentModel(nn.Module):
    """M_a(I_t^m, L^r_i, I^r_i, L_{t−k:t+k}).

    masked (B, 3, S, S), target_sketches (B, 15, S, S), references (B, N, 3, S, S), reference_sketches
    (B, N, 3, S, S) → `Alignment`. The N references share every weight (folded into the batch).
    """

    def __init__(self, config: RenderConfig | None = None) -> None:
        super().__init__()
        config = config or RenderConfig()
        self.config = config
        c1, c2, up = config.full_channels, config.half_channels, config.upsampled_channels
        sketches = SKETCH_CHANNELS * STACK_FRAMES
        self.masked_encoder = TwoScaleEncoder(IMAGE_CHANNELS, c1, c2)  # E_m
        if config.without_alignment:
            return
        self.reference_encoder = TwoScaleEncoder(IMAGE_CHANNELS + SKETCH_CHANNELS, c1, c2)  # E_r
        self.fusion = fusion(2 * c2, c2, config.fusion_blocks)
        self.half_spade = nn.ModuleList(
            SpadeBlock(c2, sketches, config.spade_hidden) for _ in range(HALF_SPADE_BLOCKS)
        )
        self.upsample = nn.PixelShuffle(PIXEL_SHUFFLE)
        self.full_spade = SpadeBlock(up, sketches, config.spade_hidden)
        pad = HEAD_KERNEL // 2
        self.flow_head = nn.Conv2d(up, FLOW_CHANNELS, HEAD_KERNEL, padding=pad)
        self.weight_head = nn.Sequential(
            nn.Conv2d(up, config.weight_hidden, HEAD_KERNEL, padding=pad),
            nn.ReLU(),
            nn.Conv2d(config.weight_hidden, 1, HEAD_KERNEL, padding=pad),
            nn.Sigmoid(),
        )

    def encode_references(self, references: Tensor, reference_sketches: Tensor) -> ReferenceFeatures:
        """E_r on (..., 3, S, S) reference images and their sketches → features with the same leading
        dimensions. It reads nothing of the target, so a generator encodes its reference set once."""
        lead = references.shape[:-3]
        full, half = self.reference_encoder(
            torch.cat([references.flatten(0, -4), reference_sketches.flatten(0, -4)], dim=1)
        )
        return ReferenceFeatures(full.unflatten(0, lead), half.unflatten(0, lead))

    def forward(
        self,
        masked: Tensor,
        target_sketches: Tensor,
        references: Tensor,
        reference_sketches: Tensor,
        features: ReferenceFeatures | None = None,
    ) -> Alignment:
        """`features`: `encode_references` of (references, reference_sketches), when already computed."""
        batch, count = references.shape[:2]
        masked_full, masked_half = self.masked_encoder(masked)
        if self.config.without_alignment:
            return _unaligned(masked, masked_full, masked_half, count)
        refs = references.flatten(0, 1)
        if features is None:
            features = self.encode_references(references, reference_sketches)
        ref_full, ref_half = features.full.flatten(0, 1), features.half.flatten(0, 1)
        x = self.fusion(torch.cat([ref_half, masked_half.repeat_interleave(count, dim=0)], dim=1))
        for block in self.half_spade:
            x = block(x, target_sketches)  # one map for the frame's N rows
        x = self.full_spade(self.upsample(x), target_sketches)
        flow = self.flow_head(x)
        weights = normalise_weights(self.weight_head(x).unflatten(0, (batch, count)))
        half = ref_half.shape[-1]
        half_weights = F.avg_pool2d(weights.flatten(0, 1), PIXEL_SHUFFLE).unflatten(0, (batch, count))

        def aggregate(maps: Tensor, flows: Tensor, w: Tensor) -> Tensor:
            return (warp(maps, flows).unflatten(0, (batch, count)) * w).sum(dim=1)

        image = aggregate(refs, flow, weights)
        full = aggregate(ref_full, flow, weights)
        half_map = aggregate(ref_half, resize_flow(flow, half), half_weights)
        return Alignment(
            image=image,
            guide_image=torch.cat([masked, image], dim=1),
            guide_full=torch.cat([masked_full, full], dim=1),
            guide_half=torch.cat([masked_half, half_map], dim=1),
            flows=flow.unflatten(0, (batch, count)),
            weights=weights,
        )


def _unaligned(masked: Tensor, masked_full: Tensor, masked_half: Tensor, count: int) -> Alignment:
    """The ablation's guides: the occluded face's halves, zeros where the warped references would be."""
    batch, _, size, _ = masked.shape
    return Alignment(
        image=torch.zeros_like(masked),
        guide_image=torch.cat([masked, torch.zeros_like(masked)], dim=1),
        guide_full=torch.cat([masked_full, torch.zeros_like(masked_full)], dim=1),
        guide_half=torch.cat([masked_half, torch.zeros_like(masked_half)], dim=1),
        flows=masked.new_zeros(batch, count, FLOW_CHANNELS, size, size),
        weights=masked.new_full((batch, count, 1, size, size), 1 / count),
    )
