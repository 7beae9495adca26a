"""SyncNet experts: audio-visual synchronisation scorers for the sync loss and for evaluation.

Both architectures share one interface: `forward(faces, mels) -> (vision_emb, audio_emb)`, each (B, D),
L2-normalised and non-negative (the encoders end in a ReLU), so their cosine similarity lies in [0, 1] and
reads as a sync probability.

* `StableSyncNet`: the layout of LatentSync's "stable syncnet" (config `syncnet_16_pixel`), whose
  released checkpoint `latentsync_syncnet.pt` the MuseTalk reference code uses for its sync loss
  (lipsync/models/musetalk/README.md, Training losses). Its parameter names and padding match that
  checkpoint exactly, so it loads strictly.
* `Wav2LipSyncNet`: our own Wav2Lip-style network (conv + GroupNorm + ReLU blocks with residuals) with
  time-aligned embeddings (see its doc), small enough to train from scratch on modest data: 5 frames,
  96 px faces, 640-d embeddings (128 per frame) at full width.

Faces enter as `prepare_faces` makes them: F frames of the lower half of the face, RGB, in [-1, 1],
stacked frame-major on the channel axis: (B, 3F, S/2, S). Audio enters as a Wav2Lip-style log-mel window
(B, 1, 80, ceil(F * 80 / 25)), 80 mel columns per second of 25 fps video.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.config import FACE_SIZE, IMAGE_CHANNELS, TRAINING_FPS
from lipsync.errors import WeightsError
from lipsync.models.checkpoint import load_strict, save_atomically

SyncNetKind = Literal["wav2lip", "stable"]  # the same names as lipsync.train.config.SyncNetKind
SYNCNET_KINDS: tuple[str, ...] = get_args(SyncNetKind)

MEL_BINS = 80  # Wav2Lip log-mel bins
MEL_STEPS_PER_SECOND = 80  # hop 200 at 16 kHz
SPEC_KEY = "lipsync_syncnet"  # our checkpoints: {"state_dict": ..., SPEC_KEY: SyncNetSpec fields}
STATE_DICT_KEY = "state_dict"  # LatentSync's checkpoints and ours

# --- LatentSync "stable syncnet", config syncnet_16_pixel ---------------------------------------------
STABLE_FRAMES = 16
STABLE_IMAGE_SIZE = FACE_SIZE  # 256: the visual encoder's strides reduce (128, 256) exactly to 1 x 1
STABLE_AUDIO_CHANNELS = (32, 64, 128, 256, 512, 1024, 2048)
STABLE_AUDIO_DOWNSAMPLE: tuple[int | tuple[int, int], ...] = ((2, 1), 2, 2, 1, 2, 2, (2, 3))
STABLE_VISUAL_CHANNELS = (64, 128, 256, 256, 512, 1024, 2048, 2048)
STABLE_VISUAL_DOWNSAMPLE: tuple[int | tuple[int, int], ...] = ((1, 2), 2, 2, 2, 2, 2, 2, 2)
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6
STABLE_AUDIO_PREFIX = "audio_encoder."
STABLE_VISUAL_PREFIX = "visual_encoder."

# --- Wav2Lip-style, time-aligned -----------------------------------------------------------------------
WAV2LIP_FRAMES = 5
WAV2LIP_IMAGE_SIZE = 96
WAV2LIP_FRAME_EMBED = 128  # embedding values per video frame at full width: D = frames x this (640 for 5)
WAV2LIP_FRAME_FEATURES = 256  # per-frame features between the encoders and the temporal layer
WAV2LIP_FACE_STEM = 32
# Face stages, (channels at full width, stride); as many are used as bring the map to at most
# FACE_MIN_MAP rows: none for faces of up to 32 px (a linear map per frame), 3 for 96 px, 4 for 256 px.
# The first turns the (S/2, S) half face square. The audio encoder gets as many stages (at most its 3):
# the two encoders stay matched in depth.
WAV2LIP_FACE_STAGES: tuple[tuple[int, tuple[int, int]], ...] = (
    (32, (1, 2)),
    (64, (2, 2)),
    (128, (2, 2)),
    (256, (2, 2)),
    (512, (2, 2)),
)
FACE_MIN_MAP = 16
WAV2LIP_AUDIO_STEM = 32
# Audio stages stride over mel bins only (80 -> 27 -> 9 -> 3), so every mel column keeps its features.
WAV2LIP_AUDIO_STAGES: tuple[tuple[int, tuple[int, int]], ...] = (
    (32, (3, 1)),
    (64, (3, 1)),
    (128, (3, 1)),
)
RESIDUAL_BLOCKS_PER_STAGE = 1
WAV2LIP_NORM_GROUPS = 8  # GroupNorm groups (fewer when a narrow layer has fewer channels)
FACE_STEM_KERNEL = 5
BLOCK_KERNEL = 3
TEMPORAL_KERNEL = 5  # video frames: lets the net learn an audio-video lag of up to +-2 frames

MAX_WIDTH_DIVISOR = GROUP_NORM_GROUPS  # beyond this the stable net's narrowest GroupNorm has < 1 channel


def mel_steps_for_frames(frames: int) -> int:
    """Mel columns covering `frames` video frames at 25 fps: ceil(frames * 80 / 25) (16 for 5, 52 for 16)."""
    return math.ceil(frames * MEL_STEPS_PER_SECOND / TRAINING_FPS)


@dataclass(frozen=True)
class SyncNetSpec:
    """What a SyncNet is: its architecture and the input it expects. Stored in our checkpoints."""

    kind: SyncNetKind = "wav2lip"
    frames: int = WAV2LIP_FRAMES  # face frames per sample
    image_size: int = WAV2LIP_IMAGE_SIZE  # faces are resized to S x S, then rows S/2..S are kept
    width_divisor: int = 1  # >1 narrows every layer (tiny test models)

    @classmethod
    def stable(cls, width_divisor: int = 1) -> SyncNetSpec:
        """LatentSync's syncnet_16_pixel: 16 frames of 256 px faces."""
        return cls("stable", STABLE_FRAMES, STABLE_IMAGE_SIZE, width_divisor)

    @property
    def mel_steps(self) -> int:
        return mel_steps_for_frames(self.frames)

    @property
    def face_channels(self) -> int:
        return IMAGE_CHANNELS * self.frames

    @property
    def face_shape(self) -> tuple[int, int, int]:
        """(channels, rows, cols) of one prepared face input."""
        return (self.face_channels, self.image_size // 2, self.image_size)

    @property
    def mel_shape(self) -> tuple[int, int, int]:
        return (1, MEL_BINS, self.mel_steps)

    @property
    def embed_dim(self) -> int:
        if self.kind == "stable":
            return STABLE_AUDIO_CHANNELS[-1] // self.width_divisor
        return self.frames * (WAV2LIP_FRAME_EMBED // self.width_divisor)

    def validate(self) -> None:
        """Raise ValueError for a spec no network can be built for."""
        if self.kind not in SYNCNET_KINDS:
            raise ValueError(f"SyncNet kind {self.kind!r} is not one of {SYNCNET_KINDS}")
        wd = self.width_divisor
        if wd < 1 or wd > MAX_WIDTH_DIVISOR or wd & (wd - 1):
            raise ValueError(f"width_divisor {wd} must be a power of two from 1 to {MAX_WIDTH_DIVISOR}")
        if self.frames < 1:
            raise ValueError(f"frames is {self.frames}; a SyncNet needs at least one frame")
        if self.image_size < 2 or self.image_size % 2:
            raise ValueError(f"image_size {self.image_size} must be even (its lower half is used)")
        if self.kind == "stable" and (self.frames, self.image_size) != (STABLE_FRAMES, STABLE_IMAGE_SIZE):
            raise ValueError(
                f"the stable SyncNet takes {STABLE_FRAMES} frames of {STABLE_IMAGE_SIZE} px faces "
                f"(its strides reduce exactly that input to 1 x 1), not {self.frames} of {self.image_size} px"
            )


def spec_from_dict(data: Any, source: str = "spec") -> SyncNetSpec:
    """A SyncNetSpec from a plain dict (as stored in a checkpoint); WeightsError if malformed."""
    names = {f.name for f in fields(SyncNetSpec)}
    if not isinstance(data, dict) or set(data) != names:
        raise WeightsError(
            f"{source}: the SyncNet description {data!r} does not have exactly the fields {sorted(names)}",
            "save the checkpoint again with `save_syncnet`",
        )
    spec = SyncNetSpec(**data)
    try:
        spec.validate()
    except ValueError as exc:
        raise WeightsError(f"{source}: {exc}", "save the checkpoint again with `save_syncnet`") from exc
    return spec


# --------------------------------------------------------------------------------------------------
# Shared interface


class SyncNet(nn.Module):
    """Base of both architectures: two encoders, each ending in a ReLU, compared by cosine similarity."""

    spec: SyncNetSpec

    def encode_faces(self, faces: Tensor) -> Tensor:
        """(B, 3F, S/2, S) -> (B, D) unnormalised."""
        raise NotImplementedError

    def encode_audio(self, mels: Tensor) -> Tensor:
        """(B, 1, 80, T) -> (B, D) unnormalised."""
        raise NotImplementedError

    def embed_faces(self, faces: Tensor) -> Tensor:
        return F.normalize(self.encode_faces(faces).flatten(1), p=2, dim=1)

    def embed_audio(self, mels: Tensor) -> Tensor:
        return F.normalize(self.encode_audio(mels).flatten(1), p=2, dim=1)

    def forward(self, faces: Tensor, mels: Tensor) -> tuple[Tensor, Tensor]:
        """(vision_emb, audio_emb), each (B, D) with unit L2 norm."""
        return self.embed_faces(faces), self.embed_audio(mels)


def sync_probability(vision: Tensor, audio: Tensor) -> Tensor:
    """clamp(cos(vision, audio), 0, 1) per sample, in float32: the probability the pair is in sync."""
    return F.cosine_similarity(vision.float(), audio.float(), dim=1).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# LatentSync's stable syncnet


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _ResnetDownBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a (1x1-projected) shortcut, then an optional strided 3x3 conv.

    Before the strided conv the map is zero-padded without padding in the conv itself: on an axis with
    stride 1 by one row/column on both sides (size kept), on a strided axis by one at the end only. This is
    LatentSync's convention ((0, 1, 0, 1) for stride 2, (0, 1, 1, 1) for (1, 2), (1, 1, 0, 1) for (2, 1)).
    """

    def __init__(
        self, in_channels: int, out_channels: int, downsample: int | tuple[int, int], groups: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=GROUP_NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, BLOCK_KERNEL, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=GROUP_NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, BLOCK_KERNEL, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        stride = _pair(downsample)
        self.downsample_conv: nn.Conv2d | None = None
        self.pad = (0, 0, 0, 0)
        if stride != (1, 1):
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, BLOCK_KERNEL, stride=stride)
            rows = (1, 1) if stride[0] == 1 else (0, 1)
            cols = (1, 1) if stride[1] == 1 else (0, 1)
            self.pad = (cols[0], cols[1], rows[0], rows[1])  # F.pad order: last axis first

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h = h + shortcut
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class _DownEncoder(nn.Module):
    """conv_in, one residual down block per channel count, then GroupNorm and ReLU (LatentSync's layout)."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        downsample: Sequence[int | tuple[int, int]],
        groups: int,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], BLOCK_KERNEL, padding=1)
        blocks = []
        previous = channels[0]
        for out_channels, factor in zip(channels, downsample, strict=True):
            blocks.append(_ResnetDownBlock(previous, out_channels, factor, groups))
            previous = out_channels
        self.down_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(groups, channels[-1], eps=GROUP_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        return F.relu(self.norm_out(h))


class StableSyncNet(SyncNet):
    """LatentSync's stable syncnet (syncnet_16_pixel, no attention blocks); loads latentsync_syncnet.pt."""

    def __init__(self, spec: SyncNetSpec | None = None) -> None:
        super().__init__()
        spec = spec or SyncNetSpec.stable()
        if spec.kind != "stable":
            raise ValueError(f"StableSyncNet needs a spec of kind 'stable', got {spec.kind!r}")
        spec.validate()
        self.spec = spec
        wd = spec.width_divisor
        groups = GROUP_NORM_GROUPS // wd
        self.audio_encoder = _DownEncoder(
            1, [c // wd for c in STABLE_AUDIO_CHANNELS], STABLE_AUDIO_DOWNSAMPLE, groups
        )
        self.visual_encoder = _DownEncoder(
            spec.face_channels, [c // wd for c in STABLE_VISUAL_CHANNELS], STABLE_VISUAL_DOWNSAMPLE, groups
        )

    def encode_faces(self, faces: Tensor) -> Tensor:
        return self.visual_encoder(faces)

    def encode_audio(self, mels: Tensor) -> Tensor:
        return self.audio_encoder(mels)


# --------------------------------------------------------------------------------------------------
# Wav2Lip-style, time-aligned


class _ConvBlock(nn.Module):
    """conv + GroupNorm, plus the input when `residual`, then ReLU.

    GroupNorm, not Wav2Lip's BatchNorm: with single-identity batches BatchNorm's batch statistics are one
    speaker's, while its running statistics (eval mode) mix all speakers, so a net trained that way scores
    near chance in eval mode even on its own training clips (measured). GroupNorm acts per sample.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = BLOCK_KERNEL,
        stride: tuple[int, int] = (1, 1),
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and (in_channels != out_channels or stride != (1, 1)):
            raise ValueError("a residual block keeps its shape")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.GroupNorm(math.gcd(WAV2LIP_NORM_GROUPS, out_channels), out_channels)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.conv(x))
        return F.relu(h + x if self.residual else h)


def _strided_size(size: int, stride: int) -> int:
    """Output length of a 'same'-padded conv with this stride."""
    return (size - 1) // stride + 1


def _conv_stack(
    in_channels: int,
    input_size: tuple[int, int],
    stem: int,
    stem_kernel: int,
    stages: Sequence[tuple[int, tuple[int, int]]],
    out_channels: int,
    width_divisor: int,
    keep_cols: bool = False,
) -> nn.Sequential:
    """Stem, strided stages each followed by residual blocks, then one conv over all remaining rows and
    columns (a fully connected layer over the positions) to `out_channels` x 1 x 1; with `keep_cols` over
    the rows only, to `out_channels` x 1 x cols (audio: one feature vector per mel column). Without
    stages there is no stem either: the encoder is that one linear conv over the input."""
    previous = in_channels
    layers: list[nn.Module] = []
    if stages:
        previous = stem // width_divisor
        layers.append(_ConvBlock(in_channels, previous, stem_kernel))
    rows, cols = input_size
    for channels, stride in stages:
        width = channels // width_divisor
        layers.append(_ConvBlock(previous, width, stride=stride))
        layers.extend(_ConvBlock(width, width, residual=True) for _ in range(RESIDUAL_BLOCKS_PER_STAGE))
        previous = width
        rows, cols = _strided_size(rows, stride[0]), _strided_size(cols, stride[1])
    layers.append(nn.Conv2d(previous, out_channels, kernel_size=(rows, 1 if keep_cols else cols)))
    return nn.Sequential(*layers)


def _face_stages(image_size: int) -> tuple[tuple[int, tuple[int, int]], ...]:
    """The leading face stages: as many as it takes to bring the S/2 rows of the half face to at most
    FACE_MIN_MAP (the first stage only squares the map). Small faces get a shallow encoder."""
    rows = image_size // 2
    count = 0
    while count < len(WAV2LIP_FACE_STAGES) and rows > FACE_MIN_MAP:
        rows = _strided_size(rows, WAV2LIP_FACE_STAGES[count][1][0])
        count += 1
    return WAV2LIP_FACE_STAGES[:count]


class _TemporalHead(nn.Module):
    """(B, C, F) per-frame features -> (B, F * E) non-negative embedding, frame-major: a temporal conv
    mixes neighbouring frames (so the net can learn an audio-video lag), ReLU keeps values >= 0."""

    def __init__(self, features: int, per_frame: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, per_frame, TEMPORAL_KERNEL, padding=TEMPORAL_KERNEL // 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x)).transpose(1, 2).flatten(1)


class Wav2LipSyncNet(SyncNet):
    """Wav2Lip-style SyncNet (our own definition), time-aligned: lower-half faces of F frames vs the mel
    window of those frames.

    Unlike Wav2Lip, which stacks the frames on the channel axis of one conv net, both encoders here
    produce features per video frame, and the embeddings keep them in time order (D = F x E): their cosine
    similarity is then a correlation over time of what the mouth does and what the audio does, which is the
    synchronisation signal itself, and a window shifted in time scores low by construction.
    * faces: each frame minus the window's mean frame (the static face, i.e. identity and lighting, drops
      out), through a shared conv encoder (conv + GroupNorm + ReLU, residual blocks) to per-frame features;
    * audio: the mel window minus its mean column, through a conv encoder that strides over mel bins only,
      then averaged from 16/5 mel columns per frame to one feature vector per frame;
    * each: a temporal conv over frames and ReLU.
    The encoders' depth follows the face size (`_face_stages`): faces of up to 32 px get a linear map per
    frame and per mel column, larger ones conv stages.

    Measured on the shared media (ten 2 s training clips, held-out clips of the same speakers): the
    channel-stacked Wav2Lip design, with or without augmentation, learnt the training pairs by heart and
    stayed near chance on held-out clips; so did this design with deep per-frame encoders at 32 px. With
    linear per-frame maps it reaches 0.61-0.75 held-out accuracy (AUC 0.69-0.84) in a few seconds.
    """

    def __init__(self, spec: SyncNetSpec | None = None) -> None:
        super().__init__()
        spec = spec or SyncNetSpec()
        if spec.kind != "wav2lip":
            raise ValueError(f"Wav2LipSyncNet needs a spec of kind 'wav2lip', got {spec.kind!r}")
        spec.validate()
        self.spec = spec
        wd = spec.width_divisor
        features = WAV2LIP_FRAME_FEATURES // wd
        per_frame = WAV2LIP_FRAME_EMBED // wd
        face_stages = _face_stages(spec.image_size)
        self.face_encoder = _conv_stack(
            IMAGE_CHANNELS,
            spec.face_shape[1:],
            WAV2LIP_FACE_STEM,
            FACE_STEM_KERNEL,
            face_stages,
            features,
            wd,
        )
        self.audio_encoder = _conv_stack(
            1,
            (MEL_BINS, spec.mel_steps),
            WAV2LIP_AUDIO_STEM,
            BLOCK_KERNEL,
            WAV2LIP_AUDIO_STAGES[: len(face_stages)],
            features,
            wd,
            keep_cols=True,
        )
        self.face_head = _TemporalHead(features, per_frame)
        self.audio_head = _TemporalHead(features, per_frame)

    def encode_faces(self, faces: Tensor) -> Tensor:
        batch, channels, rows, cols = faces.shape
        frames = faces.reshape(batch, channels // IMAGE_CHANNELS, IMAGE_CHANNELS, rows, cols)
        moving = frames - frames.mean(dim=1, keepdim=True)
        per_frame = self.face_encoder(moving.flatten(0, 1))  # (B F, C, 1, 1)
        return self.face_head(per_frame.reshape(batch, self.spec.frames, -1).transpose(1, 2))

    def encode_audio(self, mels: Tensor) -> Tensor:
        moving = mels - mels.mean(dim=-1, keepdim=True)
        columns = self.audio_encoder(moving).flatten(1, 2)  # (B, C, T)
        return self.audio_head(F.adaptive_avg_pool1d(columns, self.spec.frames))


# --------------------------------------------------------------------------------------------------
# Building, inputs, files


def build_syncnet(spec: SyncNetSpec) -> SyncNet:
    """A randomly initialised SyncNet of `spec` (on the current default device)."""
    spec.validate()
    return StableSyncNet(spec) if spec.kind == "stable" else Wav2LipSyncNet(spec)


def lower_half(images: Tensor, image_size: int) -> Tensor:
    """(N, 3, H, W) faces -> (N, 3, S/2, S): resized to S x S (bilinear, antialiased; skipped when already
    S x S), rows S/2..S kept. Differentiable."""
    if tuple(images.shape[-2:]) != (image_size, image_size):
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return images[:, :, image_size // 2 :, :]


def prepare_faces(faces: Tensor, spec: SyncNetSpec) -> Tensor:
    """(B, F, 3, H, W) faces in [-1, 1] (H = W = 256 from the VAE) -> (B, 3F, S/2, S) SyncNet input.

    Resizes to S = spec.image_size and keeps the lower half (`lower_half`), frames stacked frame-major on
    the channel axis (as the reference's `b f c h w -> b (f c) h w`). Differentiable, so a sync loss
    reaches the faces.
    """
    if faces.dim() != 5 or faces.shape[2] != IMAGE_CHANNELS:
        raise ValueError(f"faces must be (B, F, 3, H, W), got {tuple(faces.shape)}")
    batch, frames = faces.shape[:2]
    if frames != spec.frames:
        raise ValueError(f"this SyncNet takes {spec.frames} frames per sample, got {frames}")
    size = spec.image_size
    return lower_half(faces.flatten(0, 1), size).reshape(batch, frames * IMAGE_CHANNELS, size // 2, size)


def save_syncnet(model: SyncNet, spec: SyncNetSpec, path: Path) -> Path:
    """Write {"state_dict", "lipsync_syncnet": spec} (loadable with weights_only=True), atomically."""
    path = Path(path)
    state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    return save_atomically({STATE_DICT_KEY: state, SPEC_KEY: asdict(spec)}, path)


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(
            f"SyncNet checkpoint {path} does not exist",
            "give a file written by `lipsync train syncnet` or LatentSync's latentsync_syncnet.pt",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"cannot read SyncNet checkpoint {path}: {exc}",
            "give a torch checkpoint of plain tensors (download or train it again)",
        ) from exc


def _tensors(data: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(data, dict) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise WeightsError(
            f"{path} holds no state dict of tensors under {STATE_DICT_KEY!r}",
            "give a file written by `lipsync train syncnet` or LatentSync's latentsync_syncnet.pt",
        )
    return data


def infer_stable_spec(state: dict[str, Tensor], path: Path) -> SyncNetSpec:
    """The spec of a LatentSync-layout state dict (widths from conv_in, frames from its input channels)."""
    audio_in = state.get(f"{STABLE_AUDIO_PREFIX}conv_in.weight")
    visual_in = state.get(f"{STABLE_VISUAL_PREFIX}conv_in.weight")
    if audio_in is None or visual_in is None or audio_in.dim() != 4 or visual_in.dim() != 4:
        raise WeightsError(
            f"{path} is not a LatentSync stable SyncNet: it lacks "
            f"{STABLE_AUDIO_PREFIX}conv_in.weight / {STABLE_VISUAL_PREFIX}conv_in.weight",
            "give LatentSync's latentsync_syncnet.pt (config syncnet_16_pixel) or one of our SyncNet files",
        )
    width = int(audio_in.shape[0])
    width_divisor = STABLE_AUDIO_CHANNELS[0] // width if width else 0
    frames, rest = divmod(int(visual_in.shape[1]), IMAGE_CHANNELS)
    spec = SyncNetSpec("stable", frames, STABLE_IMAGE_SIZE, width_divisor)
    try:
        if rest or width_divisor * width != STABLE_AUDIO_CHANNELS[0]:
            raise ValueError(f"conv_in shapes {tuple(audio_in.shape)}, {tuple(visual_in.shape)}")
        spec.validate()
    except ValueError as exc:
        raise WeightsError(
            f"{path} is not a syncnet_16_pixel stable SyncNet: {exc}",
            "only LatentSync's syncnet_16_pixel layout (16 frames, 256 px, no attention) is supported",
        ) from exc
    return spec


def load_syncnet(
    path: Path, kind: SyncNetKind | None = None, device: torch.device | str = "cpu"
) -> tuple[SyncNet, SyncNetSpec]:
    """Strictly load one of our SyncNet files or LatentSync's latentsync_syncnet.pt (kind "stable").

    Returns the model in eval mode, float32, on `device`. Every tensor must match the architecture: a
    missing, extra or misshapen key is a WeightsError naming it.
    """
    path = Path(path)
    data = _read_checkpoint(path)
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a SyncNet checkpoint (no dict inside)", "give a SyncNet file")
    if SPEC_KEY in data:
        spec = spec_from_dict(data[SPEC_KEY], str(path))
        state = _tensors(data.get(STATE_DICT_KEY), path)
    else:  # LatentSync: {"state_dict": ..., maybe "global_step": ...}, or a bare state dict
        state = _tensors(data.get(STATE_DICT_KEY, data), path)
        spec = infer_stable_spec(state, path)
    if kind is not None and spec.kind != kind:
        raise WeightsError(
            f"{path} holds a {spec.kind!r} SyncNet, not the {kind!r} one asked for",
            f"give a {kind!r} SyncNet checkpoint, or ask for kind {spec.kind!r}",
        )
    with torch.device("meta"):
        model = build_syncnet(spec)
    load_strict(model, state, path, torch.float32)
    model.to(device).eval()
    return model, spec
