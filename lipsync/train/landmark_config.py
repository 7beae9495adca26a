"""Checks of a `lipsync train landmarks` config that need no training: each error names its field."""

from __future__ import annotations

from lipsync.errors import WeightsError
from lipsync.models.landmark_prior.config import FACE_SIZES, RenderConfig
from lipsync.models.landmark_prior.landmark_transformer import TransformerConfig
from lipsync.models.landmark_prior.weights import FamilyConfig, check_weights, read_config
from lipsync.train.config import ConfigError, LandmarkTrainConfig

COUNTS = (
    "batch_size",
    "checkpoint_every",
    "keep_checkpoints",
    "validate_every",
    "validation_samples",
    "strip_frames",
    "strip_every",
    "log_every",
)


def validate_landmark_config(config: LandmarkTrainConfig) -> FamilyConfig:
    """The family config the export writes (the base folder's, or a scaffold's with this transformer), or
    a ConfigError naming the field that is wrong and how to fix it."""
    for name in COUNTS:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} is {getattr(config, name)}", f"set {name} to 1 or more")
    if config.max_steps < 0:
        raise ConfigError(f"max_steps is {config.max_steps}", "set max_steps to 0 or more")
    if not config.lr > 0:
        raise ConfigError(f"lr is {config.lr}", "set lr above 0 (IP_LAP: 1e-4)")
    weights = (config.l1_weight, config.velocity_weight)
    if min(weights) < 0 or max(weights) <= 0:
        raise ConfigError(
            f"l1_weight {config.l1_weight} and velocity_weight {config.velocity_weight}",
            "give weights of 0 or more, not both 0 (IP_LAP: 1 and 1)",
        )
    if config.max_seconds is not None and config.max_seconds <= 0:
        raise ConfigError(f"max_seconds is {config.max_seconds}", "set max_seconds above 0, or null")
    if config.face_size not in FACE_SIZES:
        sizes = " or ".join(map(str, FACE_SIZES))
        raise ConfigError(f"face_size is {config.face_size}", f"set face_size to {sizes}")
    transformer = TransformerConfig.tiny() if config.tiny else TransformerConfig()
    if config.base_weights is None:
        render = (
            RenderConfig.tiny(config.face_size) if config.tiny else RenderConfig.for_size(config.face_size)
        )
        return FamilyConfig(transformer, render)
    return _base_config(config, transformer)


def _base_config(config: LandmarkTrainConfig, transformer: TransformerConfig) -> FamilyConfig:
    base = config.base_weights
    assert base is not None
    report = check_weights(base)
    if not report.ok:
        raise ConfigError(
            f"base_weights {base} is not a complete landmark-prior weights folder:\n{report.format()}",
            "give a folder `lipsync train renderer` exported, or null to scaffold M_a and M_r",
        )
    try:
        family = read_config(base)
    except WeightsError as exc:
        raise ConfigError(f"base_weights: {exc.problem}", exc.fix) from exc
    if family.transformer != transformer:
        kind = "tiny" if config.tiny else "full-width"
        raise ConfigError(
            f"base_weights {base} holds a transformer of {family.transformer}, this run trains a {kind} one",
            "set `tiny` to match the base folder, or give base_weights of the same width",
        )
    if family.face_size != config.face_size:
        raise ConfigError(
            f"face_size is {config.face_size}, base_weights {base} renders {family.face_size} px faces",
            f"set face_size to {family.face_size}",
        )
    return family
