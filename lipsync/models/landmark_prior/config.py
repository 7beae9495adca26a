"""Widths of the alignment and rendering models, at the paper's 128 px and at 256 px.

The paper gives no widths. Ours are IP_LAP's renderer's: full-resolution features 32 channels, half-
resolution features 256, SPADE hidden width 256, weight head 32; the audio map 256 channels (IP_LAP's
mel encoder before its last two blocks). Our choices where IP_LAP has no counterpart: 2 residual blocks per
fusion module, query/key width 32 in the cross-attention (a self-attention GAN's C/8). 256 px keeps the
widths: every layer is convolutional, so only the maps grow (4× the work). `narrowed` divides every width
by one factor (short training runs on a CPU); `tiny` narrows everything further, for tests.

Three switches, all off by default, remove a part for the paper's ablations (Table 1; training README
section "Training: alignment and rendering"): `without_alignment` (M_a keeps only E_m: the decoder's guides
are the occluded face's, the warped-reference halves zero), `without_lip_module` (M_r's f̄ is the occluded
face's feature, no lip references read), `without_audio_attention` (f̄ goes to the decoder unchanged; no
E_a). They are written to config.json with the widths, so an ablated export loads as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

FACE_SIZE = 128  # px (paper §4.1, IP_LAP)
FACE_SIZES = (128, 256)  # the paper's size and our larger configuration
FULL_CHANNELS = 32  # f¹, at the face size (IP_LAP)
HALF_CHANNELS = 256  # f², at half the face size (IP_LAP)
SPADE_HIDDEN = 256  # SPADE modulation width (IP_LAP)
WEIGHT_HIDDEN = 32  # the spatial-weight head's hidden width (IP_LAP)
FUSION_BLOCKS = 2  # residual blocks per fusion module (our choice)
ATTENTION_CHANNELS = 32  # query/key width of the audio-aware cross-attention (our choice: HALF / 8)
PIXEL_SHUFFLE = 2  # the decoder's and flow network's one upsampling (IP_LAP)


@dataclass(frozen=True)
class RenderConfig:
    """Widths shared by `AlignmentModel` and `RenderingModel`."""

    face_size: int = FACE_SIZE
    full_channels: int = FULL_CHANNELS
    half_channels: int = HALF_CHANNELS
    spade_hidden: int = SPADE_HIDDEN
    weight_hidden: int = WEIGHT_HIDDEN
    fusion_blocks: int = FUSION_BLOCKS
    attention_channels: int = ATTENTION_CHANNELS
    audio_width_divisor: int = 1  # divides the mel encoder's widths (tests)
    without_alignment: bool = False  # ablation "w/o Ali": no reference warping (paper §4.3)
    without_lip_module: bool = False  # ablation "w/o Lip": no multi-reference lip module (§4.4)
    without_audio_attention: bool = False  # ablation "w/o Aud": no audio-aware cross-attention (§4.5)

    def __post_init__(self) -> None:
        if self.face_size % PIXEL_SHUFFLE or self.half_channels % PIXEL_SHUFFLE**2:
            raise ValueError(
                f"face size {self.face_size} and half_channels {self.half_channels} must be divisible by "
                f"{PIXEL_SHUFFLE} and {PIXEL_SHUFFLE**2}"
            )

    @property
    def upsampled_channels(self) -> int:
        """Width after PixelShuffle: half_channels / 4 (IP_LAP: 64)."""
        return self.half_channels // PIXEL_SHUFFLE**2

    @classmethod
    def for_size(cls, face_size: int) -> RenderConfig:
        if face_size not in FACE_SIZES:
            raise ValueError(f"no {face_size} px configuration; sizes: {FACE_SIZES}")
        return cls(face_size=face_size)

    @classmethod
    def narrowed(cls, face_size: int, divisor: int) -> RenderConfig:
        """Every width of `for_size` divided by `divisor` (a power of two up to 16 keeps PixelShuffle's
        channel count whole); the audio map's too."""
        full = cls.for_size(face_size)
        if divisor < 1 or HALF_CHANNELS % (divisor * PIXEL_SHUFFLE**2):
            raise ValueError(f"width divisor {divisor}: use 1, 2, 4, 8 or 16")
        return cls(
            face_size=face_size,
            full_channels=max(1, full.full_channels // divisor),
            half_channels=full.half_channels // divisor,
            spade_hidden=max(1, full.spade_hidden // divisor),
            weight_hidden=max(1, full.weight_hidden // divisor),
            fusion_blocks=full.fusion_blocks,
            attention_channels=max(1, full.attention_channels // divisor),
            audio_width_divisor=divisor,
        )

    @classmethod
    def tiny(cls, face_size: int = FACE_SIZE) -> RenderConfig:
        return cls(
            face_size=face_size,
            full_channels=4,
            half_channels=16,
            spade_hidden=8,
            weight_hidden=4,
            fusion_blocks=1,
            attention_channels=4,
            audio_width_divisor=16,
        )
