"""Checks of a `lipsync train renderer` config, and what it resolves to: the loss weights and the networks'
configuration."""

from __future__ import annotations

from dataclasses import replace

from lipsync.models.landmark_prior.config import FACE_SIZES, RenderConfig
from lipsync.models.landmark_prior.losses import PAPER_WEIGHTS, LossWeights
from lipsync.train.config import ConfigError, RendererTrainConfig

POSITIVE_FIELDS = (
    "references",
    "lip_references",
    "inference_references",
    "inference_lip_references",
    "batch_size",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "validate_every",
    "validation_samples",
    "log_every",
)
WIDTH_DIVISORS = (1, 2, 4, 8, 16)  # RenderConfig.narrowed keeps PixelShuffle's channels whole for these
WEIGHT_FIELDS = ("warp", "reconstruction", "style", "gan", "feature_matching")


def loss_weights(config: RendererTrainConfig) -> LossWeights:
    """The paper's (λ_w, λ_r, λ_s, λ_g, λ_f), each replaced by the config's `loss.<name>` where given."""
    given = {name: getattr(config.loss, name) for name in WEIGHT_FIELDS}
    return replace(PAPER_WEIGHTS, **{name: value for name, value in given.items() if value is not None})


def render_config(config: RendererTrainConfig) -> RenderConfig:
    """The widths at the face size (narrowed by width_divisor; tiny for tests) with the ablation switches."""
    if config.tiny:
        base = RenderConfig.tiny(config.face_size)
    else:
        base = RenderConfig.narrowed(config.face_size, config.width_divisor)
    return replace(
        base,
        without_alignment=config.without_alignment,
        without_lip_module=config.without_lip_module,
        without_audio_attention=config.without_audio_attention,
    )


def validate_renderer_config(config: RendererTrainConfig) -> LossWeights:
    """Every check that needs no file; returns the loss weights. ConfigError names the field and the fix."""
    if config.face_size not in FACE_SIZES:
        raise ConfigError(f"face_size is {config.face_size}", f"use one of {FACE_SIZES} (the paper: 128)")
    for name in POSITIVE_FIELDS:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} is {getattr(config, name)}", f"give {name} >= 1")
    if config.width_divisor not in WIDTH_DIVISORS:
        raise ConfigError(
            f"width_divisor is {config.width_divisor}",
            f"use one of {WIDTH_DIVISORS} (1: the full widths; the others divide every width by it)",
        )
    if config.tiny and config.width_divisor != 1:
        raise ConfigError(
            f"tiny is set with width_divisor {config.width_divisor}",
            "tiny has its own widths: drop width_divisor, or drop tiny",
        )
    if config.warmup_steps < 0:
        raise ConfigError(f"warmup_steps is {config.warmup_steps}", "give 0 (no warm-up) or more")
    if config.max_seconds is not None and config.max_seconds <= 0:
        raise ConfigError(f"max_seconds is {config.max_seconds}", "give a positive time or leave it out")
    if config.lr <= 0:
        raise ConfigError(f"lr is {config.lr}", "give a positive learning rate (IP_LAP: 1e-4)")
    for name in WEIGHT_FIELDS:
        value = getattr(config.loss, name)
        if value is not None and value < 0:
            raise ConfigError(f"loss.{name} is {value}", f"give loss.{name} >= 0, or leave it out")
    if config.loss.vgg_width_divisor < 1:
        raise ConfigError(f"loss.vgg_width_divisor is {config.loss.vgg_width_divisor}", "give 1 or more")
    if config.stage == "rendering" and config.alignment_weights is None:
        raise ConfigError(
            "alignment_weights is missing for stage rendering",
            "give the export folder of a stage alignment run (runs/renderer-alignment/export), "
            "or train both models with stage: joint",
        )
    if config.stage != "rendering" and config.alignment_weights is not None:
        raise ConfigError(
            f"alignment_weights is set for stage {config.stage}",
            "alignment_weights is the frozen M_a of stage rendering: drop it, or set stage: rendering",
        )
    if config.without_alignment and config.stage != "joint":
        raise ConfigError(
            f"without_alignment is set for stage {config.stage}",
            "the ablation has no M_a to train or freeze (no warping, no L_w): use stage: joint",
        )
    if config.warmup_steps and config.without_alignment:
        raise ConfigError(
            f"warmup_steps is {config.warmup_steps} with without_alignment",
            "the warm-up trains M_a's warping, which the ablation removes: drop warmup_steps",
        )
    if config.warmup_steps and config.stage != "joint":
        raise ConfigError(
            f"warmup_steps is {config.warmup_steps} for stage {config.stage}",
            "the warm-up (L_w alone) is part of stage joint: drop warmup_steps",
        )
    return loss_weights(config)
