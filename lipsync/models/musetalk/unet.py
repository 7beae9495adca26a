"""The MuseTalk UNet: one pass at a fixed timestep, (masked, reference) latents + audio -> face latent."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from lipsync.config import (
    LATENT_CHANNELS,
    LATENT_SIZE,
    POSITIONAL_ENCODING_BASE,
    REFERENCE_AUDIO_WINDOW,
    UNET_IN_CHANNELS,
    UNET_TIMESTEP,
    WHISPER_HIDDEN_SIZE,
)
from lipsync.config import audio_tokens as audio_tokens_for
from lipsync.models.device import image_memory_format

if TYPE_CHECKING:
    from lipsync.models.musetalk.networks import MuseTalkModels

_CROSS_ATTN_DOWN = "CrossAttnDownBlock2D"
_CROSS_ATTN_UP = "CrossAttnUpBlock2D"


def unet_config(tiny: bool = False) -> dict[str, Any]:
    """musetalk.json (identical for v1.0 and v1.5), or a tiny variant that keeps every interface."""
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.6.0.dev0",
        "act_fn": "silu",
        # Legacy diffusers meaning: the number of heads (8), not the head dimension.
        "attention_head_dim": 2 if tiny else 8,
        "block_out_channels": [32, 32, 64, 64] if tiny else [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": WHISPER_HIDDEN_SIZE,
        "down_block_types": [_CROSS_ATTN_DOWN, _CROSS_ATTN_DOWN, _CROSS_ATTN_DOWN, "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": UNET_IN_CHANNELS,
        "layers_per_block": 1 if tiny else 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": LATENT_CHANNELS,
        "sample_size": LATENT_SIZE if tiny else 64,
        "up_block_types": ["UpBlock2D", _CROSS_ATTN_UP, _CROSS_ATTN_UP, _CROSS_ATTN_UP],
    }


def positional_encoding(
    length: int = audio_tokens_for(REFERENCE_AUDIO_WINDOW), d_model: int = WHISPER_HIDDEN_SIZE
) -> torch.Tensor:
    """(length, d_model) sinusoidal encoding: sin on even dims, cos on odd dims (float32)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    inv_wavelength = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(POSITIONAL_ENCODING_BASE) / d_model)
    )
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * inv_wavelength)
    pe[:, 1::2] = torch.cos(position * inv_wavelength)
    return pe


@lru_cache(maxsize=8)
def _audio_pe(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # The reference casts the PE table to the model dtype before adding it.
    return positional_encoding(length).to(device, dtype)


def audio_context(audio_tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, 384) whisper tokens -> the UNet's cross-attention context: tokens + sinusoidal PE.

    Training and inference both call this (the reference adds the PE only at inference)."""
    return audio_tokens + _audio_pe(audio_tokens.shape[1], audio_tokens.device, audio_tokens.dtype)


def run_unet(unet: Any, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One UNet pass at the fixed timestep: (B, 8, 32, 32) latents + context -> (B, 4, 32, 32)."""
    timestep = torch.tensor([UNET_TIMESTEP], device=latents.device)
    out: torch.Tensor = unet(latents, timestep, encoder_hidden_states=context).sample
    return out


def predict_latents(
    models: MuseTalkModels, latents: torch.Tensor, audio_tokens: torch.Tensor
) -> torch.Tensor:
    """latents (B, 8, 32, 32), audio tokens (B, 10T, 384) without PE -> predicted latents (B, 4, 32, 32).

    T is the models' audio window (5 for the released weights: 50 tokens)."""
    batch = latents.shape[0]
    if latents.shape != (batch, UNET_IN_CHANNELS, LATENT_SIZE, LATENT_SIZE):
        raise ValueError(f"expected (B, 8, {LATENT_SIZE}, {LATENT_SIZE}) latents, got {tuple(latents.shape)}")
    tokens = audio_tokens_for(models.audio_window)
    if audio_tokens.shape != (batch, tokens, WHISPER_HIDDEN_SIZE):
        raise ValueError(f"expected ({batch}, {tokens}, 384) audio tokens, got {tuple(audio_tokens.shape)}")
    latents = latents.to(models.device, models.dtype).contiguous(
        memory_format=image_memory_format(models.device)
    )
    with torch.inference_mode():
        context = audio_context(audio_tokens.to(models.device, models.dtype))
        return run_unet(models.unet, latents, context)
