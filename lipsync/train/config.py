"""Training configuration: dataclasses with the papers' and the reference's values, loaded from YAML.

Every YAML key maps to a field here; an unknown key, a wrong type or a missing file is an error naming it.
Defaults are the reference code's stage settings (lipsync/models/musetalk/README.md, Training stages)
unless noted.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from lipsync.config import AUDIO_WINDOW_CHOICES, FACE_SIZE, REFERENCE_AUDIO_WINDOW
from lipsync.errors import LipsyncError

SamplingMethod = Literal["random", "pose_aligned", "mouth_dissimilar", "sis"]
MixedPrecision = Literal["no", "fp16", "bf16"]
UNetSize = Literal["tiny", "full"]
SyncNetKind = Literal["wav2lip", "stable"]
# What `lipsync train syncnet` trains: the two SyncNet kinds above, or the stabilized-sync family's AVSyncNet.
SyncNetTrainKind = Literal["wav2lip", "stable", "avsyncnet"]
StabilizedStage = Literal["silent", "talking"]  # G_S or G_L (stabilized-sync family)
SyncLossKind = Literal["stabilized", "vanilla"]  # L_ss (paper eq. 3) or Wav2Lip's BCE(x, 1)
SyncExpertKind = Literal["avsyncnet", "wav2lip"]  # which sync expert scores the lips of the sync loss
TripletKind = Literal["adaptive", "vanilla"]  # L_at (paper eq. 2) or the plain triplet (ablation setup F)


class ConfigError(LipsyncError):
    """A training config that cannot be used."""


@dataclass(frozen=True)
class DataConfig:
    root: Path = Path("data/prepared")  # a `lipsync data prepare` output folder
    val_clips: tuple[str, ...] = ()  # clip ids held out for validation ...
    val_speakers: tuple[str, ...] = ()  # ... and/or every clip of these speakers
    val_fraction: float = 0.0  # ... and/or this fraction of clips, chosen by a hash of the clip id
    min_face_size: int = 150  # px in the source video; smaller faces are skipped (stage 2: 200)
    min_clip_frames: int | None = None  # shorter clips are skipped; None = 10 x clip_frames (reference)
    num_workers: int = 0  # DataLoader worker processes


@dataclass(frozen=True)
class SamplingConfig:
    """How the reference frame of each target frame is chosen (MuseTalk paper §3.2;
    lipsync/models/musetalk/README.md, Reference sampling (SIS))."""

    method: SamplingMethod = "sis"
    top_k_ratio: float = 0.51  # reference value; the paper says 0.4
    min_distance: int = 5  # frames: a reference never closer than this to its target
    fallback_radius: int = 5  # x clip_frames: uniform fallback window around the target


@dataclass(frozen=True)
class MarginConfig:
    """Stage 2's dynamic bottom margin: random extra rows under the chin (in 256-crop pixels)."""

    enabled: bool = False
    mean: float = 10.0
    std: float = 10.0
    max: float = 20.0


@dataclass(frozen=True)
class PerceptualConfig:
    """Multi-scale VGG19 perceptual loss (lipsync/models/musetalk/README.md, Training losses)."""

    vgg19_weights: Path | None = None  # torchvision's vgg19-dcbb9e9d.pth; None = untrained (tests only)
    width_divisor: int = 1  # >1 narrows every VGG layer: tiny test configs only
    input_size: int = 224
    scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """pix2pix-style spectral-norm patch discriminator (lipsync/models/musetalk/README.md, Training
    losses)."""

    block_expansion: int = 32
    num_blocks: int = 4
    max_features: int = 512
    lr: float = 5e-6
    eta_min: float = 1e-6  # cosine-annealed down to this


@dataclass(frozen=True)
class LossConfig:
    l1: float = 1.0
    perceptual: float = 0.01
    gan: float = 0.0  # stage 2: 0.01
    mouth_gan: float = 0.0  # stage 2: 0.01
    feature_matching: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # used whenever a GAN weight is > 0
    sync: float = 0.0  # stage 2: 0.05 (reference); the paper's phi = 0.03
    gan_start_step: int = 1000  # GAN terms are off before this optimiser step
    mouth_padding: int = 10  # px each side of the lip landmarks for the mouth discriminator's box
    perceptual_net: PerceptualConfig = PerceptualConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    syncnet: Path | None = None  # frozen SyncNet checkpoint for the sync loss (needed when sync > 0)
    syncnet_kind: SyncNetKind = "stable"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 1000
    grad_clip: float = 1.0


@dataclass(frozen=True)
class UNetTrainConfig:
    """`lipsync train unet --config FILE`."""

    stage: Literal[1, 2] = 1
    output_dir: Path = Path("runs/unet-stage1")
    weights: Path = Path("models")  # VAE + whisper (frozen), in the inference weights layout
    init_unet: Path | None = None  # a unet.pth / pytorch_model.bin to start from; None = random init
    unet_size: UNetSize = "full"  # architecture when starting from random init
    audio_window: int = REFERENCE_AUDIO_WINDOW  # T, video frames of audio per frame (AAM)
    clip_frames: int = 1  # consecutive target frames per sample (stage 2: 16)
    batch_size: int = 32  # samples per device per micro-batch (stage 2: 2)
    grad_accum: int = 1  # stage 2: 8
    max_steps: int = 250_000  # optimiser steps
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 10_000  # optimiser steps (stage 2: 2000)
    keep_checkpoints: int = 10
    validate_every: int = 2000
    validation_samples: int = 4
    log_every: int = 10
    seed: int = 41
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    margin: MarginConfig = MarginConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()


@dataclass(frozen=True)
class SyncNetTrainConfig:
    """`lipsync train syncnet --config FILE`."""

    output_dir: Path = Path("runs/syncnet")
    kind: SyncNetTrainKind = "wav2lip"
    init: Path | None = None  # a checkpoint to start from (e.g. LatentSync's latentsync_syncnet.pt)
    width_divisor: int = 1  # >1 narrows every layer (avsyncnet: a small lip encoder): tiny test configs only
    frames: int = 5  # face frames per sample (wav2lip 5, stable 16, avsyncnet 5)
    image_size: int = 96  # the face crop is resized to this before taking its lower half (stable: 256,
    # avsyncnet: 224)
    single_identity_batches: bool = True  # MuseTalk: positives and negatives of one speaker per batch
    batch_size: int = 64
    max_steps: int = 100_000
    lr: float = 1e-4
    negative_min_offset: int = 5  # frames: a negative's audio is at least this far from the video (>= frames:
    # from a non-overlapping part of the clip, as avsyncnet requires)
    eval_every: int = 500
    eval_pairs: int = 256
    checkpoint_every: int = 5000
    log_every: int = 10
    max_seconds: float | None = None  # stop after this wall time (for short runs)
    seed: int = 41
    mixed_precision: MixedPrecision = "no"
    # kind avsyncnet: faces are cut with the stabilized-sync crop rule at the generator's face size (the
    # faces the sync loss will score), then resized to 224 and their lower halves kept.
    avsync_face_size: int = 96
    # Bytes of prepared faces (and mels) kept in memory per pair source: the training pairs' in the main
    # process or in each of the data.num_workers DataLoader workers, and the held-out pairs' in the main
    # process. Beyond it the least recently used clip is dropped and cut again from its files when drawn.
    face_cache_bytes: int = 1 << 30
    data: DataConfig = DataConfig(min_face_size=0)


@dataclass(frozen=True)
class StabilizedLossConfig:
    """Eq. 5 of the stabilized-sync paper. A weight left out (null) is the paper's for the stage
    (lipsync.models.stabilized_sync.losses: G_L (1, 10, 1, 2, 0.5); G_S the same with sync = triplet = 0)."""

    gan: float | None = None
    pixel: float | None = None
    perceptual: float | None = None
    sync: float | None = None  # λ3: L_ss, or the vanilla sync loss
    triplet: float | None = None  # λ4: L_at, or the vanilla triplet loss
    sync_loss: SyncLossKind = "stabilized"
    sync_expert: SyncExpertKind = "avsyncnet"
    wav2lip_syncnet: Path | None = None  # a 5-frame `kind: wav2lip` SyncNet file (sync_expert: wav2lip)
    triplet_loss: TripletKind = "adaptive"
    vgg19_weights: Path | None = None  # torchvision's vgg19-dcbb9e9d.pth; None = untrained (tests only)
    vgg_width_divisor: int = 1  # >1 narrows the VGG: tiny test configs only


@dataclass(frozen=True)
class StabilizedTrainConfig:
    """`lipsync train stabilized --config FILE`: G_S (stage silent) or G_L (stage talking)."""

    stage: StabilizedStage = "silent"
    output_dir: Path = Path("runs/stabilized-silent")
    face_size: int = 96  # paper §3.5: 96 x 96 faces
    tiny: bool = False  # narrow networks (GeneratorConfig.tiny): tests only
    avsyncnet: Path | None = None  # `lipsync train syncnet` kind avsyncnet file: its audio encoder gives F_A
    train_audio_encoder: bool = False  # train F_A's encoder with the generator (ablation setup A)
    # F_A's encoder: AVSyncNet's on mel windows, or wav2vec 2.0 on waveform windows (ablation setup C: frozen,
    # its projection to F_A trains; train_audio_encoder fine-tunes it too)
    audio_encoder: Literal["avsyncnet", "wav2vec2"] = "avsyncnet"
    wav2vec2: Path | None = None  # a Hugging Face wav2vec2 folder (config.json and the weights file)
    silent_generator: Path | None = None  # stage talking: the silent stage's export folder (G_S)
    silent_references: bool = True  # stage talking: G_S closes the identity references' lips
    batch_size: int = 16  # samples of 5 consecutive frames
    max_steps: int = 200_000
    max_seconds: float | None = None  # also stop after this wall time (validated, saved and exported)
    lr: float = 1e-4  # paper §3.5 (Adam betas (0.5, 0.999) are fixed)
    mixed_precision: MixedPrecision = "no"
    checkpoint_every: int = 5000
    keep_checkpoints: int = 5
    validate_every: int = 1000
    validation_samples: int = 4
    log_every: int = 10
    seed: int = 41
    data: DataConfig = DataConfig(min_face_size=0)
    loss: StabilizedLossConfig = StabilizedLossConfig()


# --------------------------------------------------------------------------------------------------
# YAML -> dataclass

T = TypeVar("T")


def load_config(path: Path, cls: type[T]) -> T:
    """Read a YAML file into `cls`; relative paths in it are relative to the YAML file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "give the path of a YAML training config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "fix the file's syntax") from exc
    return from_dict(cls, data, _Where(str(path)), base=path.parent)


@dataclass(frozen=True)
class _Where:
    """Where a value sits, for error messages: the file and the dotted key."""

    source: str = "config"
    key: str = ""

    def child(self, name: str | int) -> _Where:
        if isinstance(name, int):
            return _Where(self.source, f"{self.key}[{name}]")
        return _Where(self.source, f"{self.key}.{name}" if self.key else name)

    def __str__(self) -> str:
        return f"{self.source}: {self.key or '(top level)'}"


def from_dict(cls: type[T], data: Any, where: _Where | None = None, base: Path | None = None) -> T:
    where = where or _Where()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}", "see configs/ examples")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(where.child(k).key for k in unknown)
        raise ConfigError(
            f"{where.source}: unknown key(s) {keys}",
            f"valid keys of {cls.__name__}: {', '.join(sorted(names))}",
        )
    values = {key: _convert(hints[key], value, where.child(key), base) for key, value in data.items()}
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    result: dict[str, Any] = plain(config)
    return result


def flat_hparams(config: Any) -> dict[str, Any]:
    """A config flattened to dotted keys with the scalar values TensorBoard's hparams accept."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            flat[prefix[:-1]] = value if isinstance(value, bool | int | float | str) else str(value)

    walk("", to_dict(config))
    return flat


def _convert(hint: Any, value: Any, where: _Where, base: Path | None) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(inner[0], value, where, base)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(c) for c in get_args(hint))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}", f"use one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}", "write it as a YAML list")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where.child(i), base) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}", "fix the list")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, where.child(i), base) for i, (a, v) in pairs)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, base)  # type: ignore[arg-type]
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path, got {value!r}", "write the path as a string")
        path = Path(value).expanduser()
        return path if path.is_absolute() or base is None else Path(os.path.normpath(base / path))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}", f"give a {hint.__name__}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}", "report this as a bug")


def validate_unet_config(config: UNetTrainConfig) -> None:
    """Checks that need no files: values the trainer would otherwise fail on much later."""
    if config.audio_window not in AUDIO_WINDOW_CHOICES:
        raise ConfigError(
            f"audio_window is {config.audio_window}",
            f"use one of {AUDIO_WINDOW_CHOICES} (video frames of audio per frame; released weights use 5)",
        )
    if config.loss.sync > 0 and config.loss.syncnet is None:
        raise ConfigError("loss.sync > 0 needs loss.syncnet", "give a SyncNet checkpoint or set loss.sync: 0")
    if config.margin.max > FACE_SIZE * 0.125:
        raise ConfigError(f"margin.max {config.margin.max} is beyond the stored context", "use at most 32")
    if (config.loss.gan > 0 or config.loss.mouth_gan > 0) and len(config.loss.feature_matching) != (
        config.loss.discriminator.num_blocks
    ):
        raise ConfigError(
            f"loss.feature_matching has {len(config.loss.feature_matching)} weights for "
            f"{config.loss.discriminator.num_blocks} discriminator blocks",
            "give one feature-matching weight per discriminator block",
        )
    if not 0 < config.sampling.top_k_ratio <= 1:
        raise ConfigError("sampling.top_k_ratio must be in (0, 1]", "the reference uses 0.51, the paper 0.4")


# --------------------------------------------------------------------------------------------------
# `lipsync train renderer`: the landmark-prior family's alignment model M_a and rendering model M_r

RendererStage = Literal["joint", "alignment", "rendering"]


@dataclass(frozen=True)
class RendererLossConfig:
    """L = λ_w L_w + λ_r L_r + λ_s L_s + λ_g L_g + λ_f L_f (landmark-prior paper §3.2.3). A weight left
    out (null) is the paper's: (2.5, 4, 1000, 0.25, 2.5) (lipsync.models.landmark_prior.losses)."""

    warp: float | None = None  # λ_w
    reconstruction: float | None = None  # λ_r
    style: float | None = None  # λ_s
    gan: float | None = None  # λ_g
    feature_matching: float | None = None  # λ_f
    vgg19_weights: Path | None = None  # torchvision's vgg19-dcbb9e9d.pth; None = untrained (tests only)
    vgg_width_divisor: int = 1  # >1 narrows the VGG: tiny test configs only


@dataclass(frozen=True)
class RendererTrainConfig:
    """`lipsync train renderer --config FILE`: M_a and M_r of the landmark-prior family (stage joint: both
    on every term; alignment: M_a on L_w; rendering: M_r with the frozen M_a of `alignment_weights`)."""

    stage: RendererStage = "joint"
    output_dir: Path = Path("runs/renderer")
    face_size: int = 128  # paper §4.1 (256: our larger configuration)
    tiny: bool = False  # narrow networks (RenderConfig.tiny): tests only
    width_divisor: int = 1  # >1 divides every width of M_a, M_r and D (RenderConfig.narrowed): short CPU runs
    alignment_weights: Path | None = None  # stage rendering: a landmark-prior folder whose M_a is frozen
    landmark_transformer: Path | None = None  # a landmark-prior weights folder whose transformer the export
    # takes (`lipsync train landmarks`); None: the export holds an untrained one and is marked untrained
    without_alignment: bool = False  # ablation "w/o Ali" (paper §4.3)
    without_lip_module: bool = False  # ablation "w/o Lip" (§4.4)
    without_audio_attention: bool = False  # ablation "w/o Aud" (§4.5)
    references: int = 3  # N image references per training sample (paper §4.1)
    lip_references: int = 5  # lip references per training sample (paper §4.1)
    inference_references: int = 25  # written to the export's config.json (paper §4.6: N = 25)
    inference_lip_references: int = 5  # the same (paper §4.6)
    warmup_steps: int = 0  # stage joint: λ_w L_w alone for these first steps (IP_LAP's warm-up; paper: none)
    batch_size: int = 8
    max_steps: int = 200_000
    max_seconds: float | None = None  # also stop after this wall time (validated, saved and exported)
    lr: float = 1e-4  # IP_LAP's Adam for M_a, M_r (default betas) and D (betas 0.5, 0.999)
    mixed_precision: MixedPrecision = "no"
    checkpoint_every: int = 5000
    keep_checkpoints: int = 5
    validate_every: int = 1000
    validation_samples: int = 4
    log_every: int = 10
    seed: int = 41
    data: DataConfig = DataConfig(min_face_size=0)
    loss: RendererLossConfig = RendererLossConfig()


@dataclass(frozen=True)
class LandmarkTrainConfig:
    """`lipsync train landmarks --config FILE`: the landmark-prior family's audio-to-landmark transformer.
    Defaults: IP_LAP's (lipsync/models/landmark_prior/README.md, Training: landmark transformer)."""

    output_dir: Path = Path("runs/landmarks")
    tiny: bool = False  # narrow transformer (TransformerConfig.tiny): tests only
    # A landmark-prior weights folder whose config.json, M_a and M_r the export copies (the transformer is
    # this run's); None: the export scaffolds random M_a and M_r and is marked untrained.
    base_weights: Path | None = None
    face_size: int = 128  # px: the inspection strips' faces, and the scaffolded M_a and M_r (128 or 256)
    batch_size: int = 128  # IP_LAP
    max_steps: int = 600_000  # IP_LAP stopped at about 610k iterations, when its eval L1 plateaued
    max_seconds: float | None = None  # also stop after this wall time (validated, saved and exported)
    lr: float = 1e-4  # IP_LAP: Adam with default betas, no schedule
    l1_weight: float = 1.0  # IP_LAP: L1 + velocity, 1:1
    velocity_weight: float = 1.0
    mixed_precision: MixedPrecision = "no"
    checkpoint_every: int = 5000  # IP_LAP
    keep_checkpoints: int = 5
    validate_every: int = 5000  # IP_LAP evaluates every 5,000 steps
    validation_samples: int = 256
    strip_frames: int = 8  # frames of the held-out clip in each validation strip
    strip_every: int = 5  # k: every k-th frame of it
    log_every: int = 10
    seed: int = 41
    data: DataConfig = DataConfig(min_face_size=0)
