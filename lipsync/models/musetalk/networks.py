"""The loaded MuseTalk networks: the frozen SD VAE, the UNet and the whisper-tiny encoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync.config import REFERENCE_AUDIO_WINDOW, ModelVersion


@dataclass
class MuseTalkModels:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    audio_encoder: WhisperEncoder  # float32 on the CPU (see load_models), else the UNet dtype
    feature_extractor: WhisperFeatureExtractor
    device: torch.device
    dtype: torch.dtype
    version: ModelVersion
    untrained: bool
    vae_weights: Path | None = None  # the file the VAE came from (prepared avatars depend on it)
    audio_window: int = REFERENCE_AUDIO_WINDOW  # T video frames of audio per frame (from training_info)
