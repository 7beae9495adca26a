"""Checks of a `lipsync train stabilized` config, and the loss weights it resolves to."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lipsync.models.stabilized_sync.generator_net import FACE_SIZES
from lipsync.models.stabilized_sync.losses import SILENT_LIP_WEIGHTS, TALKING_FACE_WEIGHTS, LossWeights
from lipsync.models.stabilized_sync.wav2vec2 import WAV2VEC2_SOURCE, wav2vec2_folder_problem
from lipsync.train.config import ConfigError, StabilizedTrainConfig

POSITIVE_FIELDS = (
    "batch_size",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "validate_every",
    "validation_samples",
    "log_every",
)
WEIGHT_FIELDS = ("gan", "pixel", "perceptual", "sync", "triplet")


def loss_weights(config: StabilizedTrainConfig) -> LossWeights:
    """Eq. 5's weights: the stage's paper values (G_L, or G_S with λ3 = λ4 = 0), each replaced by the
    config's `loss.<name>` where given."""
    base = TALKING_FACE_WEIGHTS if config.stage == "talking" else SILENT_LIP_WEIGHTS
    loss = config.loss
    given = {
        "gan": loss.gan,
        "pixel": loss.pixel,
        "perceptual": loss.perceptual,
        "stabilized_sync": loss.sync,
        "triplet": loss.triplet,
    }
    return replace(base, **{name: value for name, value in given.items() if value is not None})


def needs_sync_expert(config: StabilizedTrainConfig) -> bool:
    return config.stage == "talking" and loss_weights(config).stabilized_sync > 0


def needs_avsyncnet(config: StabilizedTrainConfig) -> bool:
    """F_A comes from the AVSyncNet audio encoder unless it is trained from scratch or wav2vec2 gives it;
    the sync loss scores with AVSyncNet unless Wav2Lip's SyncNet is asked for."""
    scoring = needs_sync_expert(config) and config.loss.sync_expert == "avsyncnet"
    feeds = config.audio_encoder == "avsyncnet" and not config.train_audio_encoder
    return feeds or scoring


def uses_avsyncnet(config: StabilizedTrainConfig) -> bool:
    """The AVSyncNet file is read: needed, or given as the start of an AVSyncNet encoder that trains."""
    return needs_avsyncnet(config) or (config.audio_encoder == "avsyncnet" and config.avsyncnet is not None)


def require_wav2vec2_folder(config: StabilizedTrainConfig) -> Path | None:
    """The wav2vec2 folder of audio_encoder wav2vec2 (None for AVSyncNet's encoder); ConfigError naming
    what is missing and where the files come from."""
    if config.audio_encoder != "wav2vec2" or config.wav2vec2 is None:
        return None
    problem = wav2vec2_folder_problem(config.wav2vec2)
    if problem is not None:
        raise ConfigError(
            f"wav2vec2: {problem}",
            f"download facebook/wav2vec2-base-960h ({WAV2VEC2_SOURCE}: config.json, model.safetensors or "
            f"pytorch_model.bin, preprocessor_config.json) into {config.wav2vec2}, or point wav2vec2 at "
            "another wav2vec 2.0 folder",
        )
    return Path(config.wav2vec2)


def validate_stabilized_config(config: StabilizedTrainConfig) -> LossWeights:
    """Every check that needs no file; returns the loss weights. ConfigError names the field."""
    if config.face_size not in FACE_SIZES:
        raise ConfigError(f"face_size is {config.face_size}", f"use one of {FACE_SIZES} (the paper: 96)")
    for name in POSITIVE_FIELDS:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} is {getattr(config, name)}", f"give {name} >= 1")
    if config.max_seconds is not None and config.max_seconds <= 0:
        raise ConfigError(f"max_seconds is {config.max_seconds}", "give a positive time or leave it out")
    if config.lr <= 0:
        raise ConfigError(f"lr is {config.lr}", "give a positive learning rate (the paper: 1e-4)")
    for name in WEIGHT_FIELDS:
        value = getattr(config.loss, name)
        if value is not None and value < 0:
            raise ConfigError(f"loss.{name} is {value}", f"give loss.{name} >= 0, or leave it out")
    if config.loss.vgg_width_divisor < 1:
        raise ConfigError(f"loss.vgg_width_divisor is {config.loss.vgg_width_divisor}", "give 1 or more")
    if config.stage == "silent":
        for name in ("sync", "triplet"):
            if getattr(config.loss, name):
                raise ConfigError(
                    f"loss.{name} is {getattr(config.loss, name)} for stage silent",
                    f"G_S trains without sync or triplet loss (paper §3.2, λ3 = λ4 = 0): drop loss.{name}",
                )
        if config.silent_generator is not None:
            raise ConfigError(
                "silent_generator is set for stage silent",
                "silent_generator is G_S for stage talking: drop it",
            )
    elif config.silent_references and config.silent_generator is None:
        raise ConfigError(
            "silent_generator is missing for stage talking with silent_references",
            "give the silent stage's export folder (runs/stabilized-silent/export), "
            "or set silent_references: false",
        )
    if config.audio_encoder == "wav2vec2" and config.wav2vec2 is None:
        raise ConfigError(
            "wav2vec2 is missing for audio_encoder wav2vec2",
            f"give a Hugging Face wav2vec 2.0 folder (facebook/wav2vec2-base-960h from {WAV2VEC2_SOURCE})",
        )
    if config.audio_encoder != "wav2vec2" and config.wav2vec2 is not None:
        raise ConfigError(
            f"wav2vec2 is set but audio_encoder is {config.audio_encoder}",
            "set audio_encoder: wav2vec2 (ablation setup C), or drop wav2vec2",
        )
    if needs_avsyncnet(config) and config.avsyncnet is None:
        raise ConfigError(
            "avsyncnet is missing",
            "give an AVSyncNet file (`lipsync train syncnet` with kind avsyncnet writes "
            "avsyncnet-best.safetensors)",
        )
    if (
        needs_sync_expert(config)
        and config.loss.sync_expert == "wav2lip"
        and config.loss.wav2lip_syncnet is None
    ):
        raise ConfigError(
            "loss.wav2lip_syncnet is missing for loss.sync_expert wav2lip",
            "give a 5-frame `kind: wav2lip` SyncNet file "
            "(lipsync train syncnet --config configs/train/syncnet.yaml)",
        )
    return loss_weights(config)
