"""The talking-face generator of paper §3.3 (one architecture for G_S and G_L) and its discriminator.

Per frame, the generator reads
* an identity reference I^R (3, S, S): another frame of the same video (for G_L, first made silent by G_S);
* a pose reference I (3, S, S): the target frame with its lower half masked (`pose_reference`);
* the 512-d audio embedding F_A of the frame's mel window (the frozen AVSyncNet audio encoder's output).

Two encoders of the same layout, one per reference: a 7×7 stem at full resolution, then face-encoding (FE)
blocks that halve the resolution (a strided conv, then two convs, each with BN and ReLU, the strided conv's
output added back before the last ReLU), then one conv whose kernel covers the remaining map, to 1 × 1.
Their 1 × 1 outputs are concatenated along the depth, reduced by a 1 × 1 conv, and concatenated with F_A.
The decoder mirrors the encoders with face-decoding (FD) blocks (a transposed conv, then two convs, each
with BN and ReLU); after each, both encoders' features of the same resolution are concatenated on (skip
connections). A 3×3 conv, a 1×1 conv to RGB and tanh give the face in [−1, 1].

The 5 consecutive frames of a step are independent samples folded into the batch dimension
(`generate_frames`), as in Wav2Lip; their temporal side is the sync loss, which scores the 5 together.

The discriminator is a plain real/fake classifier of whole faces aligned with the encoders: strided
spectral-normalised convs of the encoders' widths, each followed by LeakyReLU, down to 1 × 1, and a 1 × 1
conv to one logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from lipsync.models.stabilized_sync.avsyncnet import EMBED_DIM
from lipsync.models.stabilized_sync.resnet50 import RGB_CHANNELS

PAPER_FACE_SIZE = 96  # paper §3.5: tight FAN crops resized to 96 × 96 (LRS2)
FACE_SIZES = (96, 128, 256)  # sizes with a full-width configuration (`GeneratorConfig.for_size`)
MASK_VALUE = -1.0  # black in [−1, 1]: the masked lower half of the pose reference
STEM_KERNEL = 7
BLOCK_KERNEL = 3
DOWN_STRIDE = 2  # every FE block halves the resolution; every FD block but the first doubles it
UP_OUTPUT_PADDING = 1  # a 3×3 stride-2 transposed conv with padding 1 then doubles exactly
LEAKY_SLOPE = 0.2  # discriminator LeakyReLU
TINY_WIDTH = 8  # every layer of a `tiny` configuration


@dataclass(frozen=True)
class GeneratorConfig:
    """Face size and channel widths. `encoder_channels` has one entry per FE block (each halves the map);
    `decoder_channels` one per FD block, deepest first (one more than FE blocks: the last one is at full
    resolution). face_size / 2^(FE blocks) is the side of the deepest map, collapsed to 1 × 1 by a conv."""

    face_size: int = PAPER_FACE_SIZE
    stem_channels: int = 16
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    bottleneck_channels: int = 512
    decoder_channels: tuple[int, ...] = (512, 512, 384, 256, 128, 64)
    head_channels: int = 32
    audio_dim: int = EMBED_DIM

    @property
    def blocks(self) -> int:
        return len(self.encoder_channels)

    @property
    def bottom_size(self) -> int:
        """Side of the deepest encoder map (3 for 96 px, 4 for 128 and 256 px)."""
        return self.face_size // 2**self.blocks

    def validate(self) -> None:
        """Raise ValueError for a configuration no network can be built for."""
        if not self.encoder_channels or self.face_size % 2**self.blocks or self.bottom_size < 1:
            raise ValueError(
                f"face_size {self.face_size} must be a multiple of 2^{self.blocks} "
                f"({self.blocks} FE blocks each halve it)"
            )
        if len(self.decoder_channels) != self.blocks + 1:
            raise ValueError(
                f"{len(self.decoder_channels)} decoder widths for {self.blocks} encoder blocks: "
                f"give {self.blocks + 1}"
            )
        widths = (
            self.stem_channels,
            *self.encoder_channels,
            self.bottleneck_channels,
            *self.decoder_channels,
        )
        if min((*widths, self.head_channels, self.audio_dim)) < 1:
            raise ValueError("every channel width must be positive")

    @classmethod
    def for_size(cls, face_size: int) -> GeneratorConfig:
        """The configuration of 96 (the paper's), 128 or 256 px faces. The paper gives no widths: 96 and
        128 px take the encoder widths of Wav2Lip's generator halved and a decoder that narrows towards
        full resolution (where most of the work is), so they stream in real time on two CPU cores (about
        1.0 and 1.4 GFLOP per frame); 256 px, for GPUs, keeps Wav2Lip's widths (`wide`)."""
        if face_size == 96:
            return cls(96, 8, (16, 32, 64, 128, 256), 256, (256, 256, 128, 64, 32, 16), 16)
        if face_size == 128:
            return cls(128, 8, (12, 24, 64, 128, 256), 256, (256, 256, 128, 48, 24, 12), 12)
        if face_size == 256:
            return cls.wide(256)
        raise ValueError(f"no configuration for {face_size} px faces; sizes: {FACE_SIZES}")

    @classmethod
    def wide(cls, face_size: int) -> GeneratorConfig:
        """Wav2Lip's generator widths (8.8 GFLOP per 96 px frame): for training and inference on GPUs."""
        if face_size == 256:  # one more FE/FD level: 256 → 4 in six halvings
            return cls(
                face_size=256,
                encoder_channels=(32, 64, 128, 256, 512, 512),
                decoder_channels=(512, 512, 512, 384, 256, 128, 64),
            )
        if face_size in (96, 128):  # 96 → 3 and 128 → 4 in five halvings
            return cls(face_size=face_size)
        raise ValueError(f"no wide configuration for {face_size} px faces; sizes: {FACE_SIZES}")

    @classmethod
    def tiny(cls, face_size: int = PAPER_FACE_SIZE) -> GeneratorConfig:
        """`for_size(face_size)` with every width TINY_WIDTH (tests); F_A stays 512-d."""
        blocks = cls.for_size(face_size).blocks
        return cls(
            face_size=face_size,
            stem_channels=TINY_WIDTH,
            encoder_channels=(TINY_WIDTH,) * blocks,
            bottleneck_channels=TINY_WIDTH,
            decoder_channels=(TINY_WIDTH,) * (blocks + 1),
            head_channels=TINY_WIDTH,
        )


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel: int = BLOCK_KERNEL,
    stride: int = 1,
    padding: int | None = None,
) -> nn.Sequential:
    """Conv → BN → ReLU ('same' padding unless given)."""
    pad = kernel // 2 if padding is None else padding
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FaceEncodingBlock(nn.Module):
    """FE block: h = CBR(x, stride 2); out = ReLU(BN(conv(CBR(h))) + h)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.down = conv_bn_relu(in_channels, out_channels, stride=DOWN_STRIDE)
        self.conv1 = conv_bn_relu(out_channels, out_channels)
        self.conv2 = nn.Sequential(  # conv → BN, its ReLU after the residual sum
            nn.Conv2d(out_channels, out_channels, BLOCK_KERNEL, padding=BLOCK_KERNEL // 2, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.down(x)
        return self.relu(self.conv2(self.conv1(h)) + h)


class FaceDecodingBlock(nn.Module):
    """FD block: transposed conv → BN → ReLU, then two CBRs."""

    def __init__(
        self, in_channels: int, out_channels: int, first: bool = False, bottom_size: int = 1
    ) -> None:
        super().__init__()
        if first:  # 1 × 1 → bottom_size × bottom_size
            up = nn.ConvTranspose2d(in_channels, out_channels, bottom_size, stride=1, padding=0, bias=False)
        else:  # doubles the map
            up = nn.ConvTranspose2d(
                in_channels,
                out_channels,
                BLOCK_KERNEL,
                stride=DOWN_STRIDE,
                padding=BLOCK_KERNEL // 2,
                output_padding=UP_OUTPUT_PADDING,
                bias=False,
            )
        self.up = nn.Sequential(up, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.conv1 = conv_bn_relu(out_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(self.up(x)))


class FaceEncoder(nn.Module):
    """(N, 3, S, S) → features, full resolution first: [stem (S), FE 1 (S/2), …, FE L, 1 × 1 bottleneck]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.stem = conv_bn_relu(RGB_CHANNELS, config.stem_channels, kernel=STEM_KERNEL)
        blocks: list[nn.Module] = []
        channels = config.stem_channels
        for out_channels in config.encoder_channels:
            blocks.append(FaceEncodingBlock(channels, out_channels))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.bottleneck = conv_bn_relu(
            channels, config.bottleneck_channels, kernel=config.bottom_size, padding=0
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.stem(x)]
        for block in self.blocks:
            features.append(block(features[-1]))
        features.append(self.bottleneck(features[-1]))
        return features


def pose_reference(faces: Tensor) -> Tensor:
    """The pose reference of target faces (…, 3, S, S): a copy with rows S/2 … S−1 set to MASK_VALUE."""
    masked = faces.clone()
    masked[..., faces.shape[-2] // 2 :, :] = MASK_VALUE
    return masked


class TalkingFaceGenerator(nn.Module):
    """G_S / G_L: (identity, pose, audio embedding) → face, per frame. Faces (N, 3, S, S) in [−1, 1]."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        config = config or GeneratorConfig()
        config.validate()
        self.config = config
        self.identity_encoder = FaceEncoder(config)
        self.pose_encoder = FaceEncoder(config)
        self.fuse = conv_bn_relu(2 * config.bottleneck_channels, config.bottleneck_channels, kernel=1)
        skips = [config.stem_channels, *config.encoder_channels][::-1]  # per FD block, deepest first
        blocks: list[nn.Module] = []
        channels = config.bottleneck_channels + config.audio_dim
        for index, (out_channels, skip) in enumerate(zip(config.decoder_channels, skips, strict=True)):
            blocks.append(FaceDecodingBlock(channels, out_channels, index == 0, config.bottom_size))
            channels = out_channels + 2 * skip  # + identity and pose features of that resolution
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            conv_bn_relu(channels, config.head_channels),
            nn.Conv2d(config.head_channels, RGB_CHANNELS, kernel_size=1),
            nn.Tanh(),
        )
        for module in self.modules():  # He init for the ReLU layers, by each conv's own fan-in
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.ConvTranspose2d):  # weight (in, out, k, k): "fan_out" is in·k²
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, identity: Tensor, pose: Tensor, audio: Tensor) -> Tensor:
        """identity, pose (N, 3, S, S); audio (N, 512) → generated faces (N, 3, S, S)."""
        size = self.config.face_size
        for name, tensor in (("identity", identity), ("pose", pose)):
            if tensor.dim() != 4 or tuple(tensor.shape[1:]) != (RGB_CHANNELS, size, size):
                raise ValueError(
                    f"{name} must be (N, {RGB_CHANNELS}, {size}, {size}), got {tuple(tensor.shape)}"
                )
        if audio.shape != (identity.shape[0], self.config.audio_dim) or pose.shape[0] != identity.shape[0]:
            raise ValueError(
                f"audio must be (N, {self.config.audio_dim}) for N = {identity.shape[0]} faces, "
                f"got {tuple(audio.shape)} (pose batch {pose.shape[0]})"
            )
        return self.decode(self.encode(identity, pose), audio)

    def encode(self, identity: Tensor, pose: Tensor) -> list[Tensor]:
        """The audio-independent half: [fused 1 × 1 bottleneck, then per FD block, deepest first, the
        identity and pose features of its resolution concatenated]. Depends only on the two references,
        so inference may keep it per source frame."""
        identity_features = self.identity_encoder(identity)
        pose_features = self.pose_encoder(pose)
        fused = self.fuse(torch.cat([identity_features[-1], pose_features[-1]], dim=1))
        skips = zip(identity_features[-2::-1], pose_features[-2::-1], strict=True)  # deepest first
        return [fused, *(torch.cat(pair, dim=1) for pair in skips)]

    def decode(self, encoded: list[Tensor], audio: Tensor) -> Tensor:
        """`encode`'s output and the audio embeddings (N, 512) → faces (N, 3, S, S)."""
        fused, *skips = encoded
        if audio.shape != (fused.shape[0], self.config.audio_dim):
            raise ValueError(
                f"audio must be (N, {self.config.audio_dim}) for N = {fused.shape[0]} faces, "
                f"got {tuple(audio.shape)}"
            )
        x = torch.cat([fused, audio[:, :, None, None].to(fused.dtype)], dim=1)
        for block, skip in zip(self.decoder, skips, strict=True):
            x = torch.cat([block(x), skip], dim=1)
        return self.head(x)


def generate_frames(generator: TalkingFaceGenerator, identity: Tensor, pose: Tensor, audio: Tensor) -> Tensor:
    """A step of T consecutive frames: identity, pose (B, T, 3, S, S), audio (B, T, 512) → (B, T, 3, S, S).

    The frames are folded into the batch dimension (B·T independent samples) and unfolded after.
    """
    if identity.dim() != 5 or pose.shape != identity.shape or audio.shape[:2] != identity.shape[:2]:
        raise ValueError(
            f"need identity, pose (B, T, 3, S, S) and audio (B, T, D), got {tuple(identity.shape)}, "
            f"{tuple(pose.shape)}, {tuple(audio.shape)}"
        )
    batch, frames = identity.shape[:2]
    faces = generator(identity.flatten(0, 1), pose.flatten(0, 1), audio.flatten(0, 1))
    return faces.unflatten(0, (batch, frames))


class FaceDiscriminator(nn.Module):
    """(N, 3, S, S) faces in [−1, 1] → (N,) real/fake logits. Spectral-norm convs, LeakyReLU 0.2."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        config = config or GeneratorConfig()
        config.validate()
        self.face_size = config.face_size
        layers: list[nn.Module] = []
        channels = RGB_CHANNELS
        for out_channels in config.encoder_channels:
            conv = nn.Conv2d(
                channels, out_channels, BLOCK_KERNEL, stride=DOWN_STRIDE, padding=BLOCK_KERNEL // 2
            )
            layers += [spectral_norm(conv), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
            channels = out_channels
        bottom = nn.Conv2d(channels, config.bottleneck_channels, config.bottom_size)  # → 1 × 1
        layers += [spectral_norm(bottom), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        layers.append(spectral_norm(nn.Conv2d(config.bottleneck_channels, 1, kernel_size=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, faces: Tensor) -> Tensor:
        size = self.face_size
        if faces.dim() != 4 or tuple(faces.shape[1:]) != (RGB_CHANNELS, size, size):
            raise ValueError(f"faces must be (N, {RGB_CHANNELS}, {size}, {size}), got {tuple(faces.shape)}")
        return self.layers(faces).flatten()
