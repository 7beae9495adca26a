"""The frozen SD VAE (stabilityai/sd-vae-ft-mse): face crops to MuseTalk latents and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lipsync.config import (
    FACE_SIZE,
    IMAGE_CHANNELS,
    LATENT_CHANNELS,
    LATENT_SIZE,
    UNET_IN_CHANNELS,
    VAE_SCALING_FACTOR,
)
from lipsync.models.device import image_memory_format

if TYPE_CHECKING:
    from lipsync.models.musetalk.networks import MuseTalkModels

PIXEL_MAX = 255.0
MASKED_FROM_ROW = FACE_SIZE // 2  # rows 128-255 (the mouth half) are blacked out in the masked copy
CPU_VAE_MICRO_BATCH = 1  # images per VAE call on CPU (see _micro_batch)

# Old diffusers (and the released sd-vae-ft-mse .bin) named the mid-block attention projections this way.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


TINY_NORM_GROUPS = 4  # the tiny VAE is ~10x faster with 8-16 channels, so groups of 2-4


def vae_config(tiny: bool = False) -> dict[str, Any]:
    """config.json of stabilityai/sd-vae-ft-mse, or a tiny variant with its interface (256 -> 32, 4 ch)."""
    blocks = 4  # 3 downsamples: FACE_SIZE / 8 = LATENT_SIZE
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.4.2",
        "act_fn": "silu",
        "block_out_channels": [8, 8, 16, 16] if tiny else [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * blocks,
        "in_channels": IMAGE_CHANNELS,
        "latent_channels": LATENT_CHANNELS,
        "layers_per_block": 1 if tiny else 2,
        "norm_num_groups": TINY_NORM_GROUPS if tiny else 32,
        "out_channels": IMAGE_CHANNELS,
        "sample_size": FACE_SIZE,
        "up_block_types": ["UpDecoderBlock2D"] * blocks,
    }


def _rename_attention(key: str, names: dict[str, str]) -> str:
    parent, _, leaf = key.rpartition(".")
    if ".attentions." in parent:
        for old, new in names.items():
            if parent.endswith("." + old):
                return f"{parent[: -len(old)]}{new}.{leaf}"
    return key


def convert_legacy_vae_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy attention keys (query/key/value/proj_attn) to the current diffusers names.

    Legacy projection weights may be 1x1-conv shaped (out, in, 1, 1); the current ones are linear (out, in).
    Keys that already use the current names pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new_key = _rename_attention(key, LEGACY_ATTENTION_NAMES)
        if new_key != key and tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor[:, :, 0, 0]
        out[new_key] = tensor
    return out


def to_legacy_vae_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse renaming (2-D weights kept), used to write scaffolds in the released file's naming."""
    names = {new: old for old, new in LEGACY_ATTENTION_NAMES.items()}
    return {_rename_attention(key, names): tensor for key, tensor in state_dict.items()}


def _micro_batch(models: MuseTalkModels, batch: int) -> int:
    """On CPU the 256x256 VAE runs fastest one image at a time (measured: decode 0.70 s/frame at
    batch 1 vs 1.01 s at batch 8, bf16, 2 cores): larger batches fall out of cache."""
    return CPU_VAE_MICRO_BATCH if models.device.type == "cpu" else batch


def _in_chunks(run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([run(chunk) for chunk in inputs.split(max(size, 1))])


def masked_copy(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 256, 256) images in [-1, 1] with the mouth half (rows 128-255) black (-1), as MuseTalk masks."""
    masked = images.clone()
    masked[:, :, MASKED_FROM_ROW:, :] = -1.0
    return masked


def encode_images(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 256, 256) images in [-1, 1] -> (B, 4, 32, 32) scaled latents: the distribution's mode
    times 0.18215. Training and inference both call this, so latents are encoded the same way."""
    latents: torch.Tensor = vae.encode(images).latent_dist.mode()
    return latents * VAE_SCALING_FACTOR


def decode_images(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, 32, 32) scaled latents -> (B, 3, 256, 256) images, nominally in [-1, 1] (not clamped)."""
    images: torch.Tensor = vae.decode(latents / VAE_SCALING_FACTOR).sample
    return images


def faces_to_images(faces: np.ndarray) -> torch.Tensor:
    """(B, 256, 256, 3) uint8 RGB -> (B, 3, 256, 256) float32 in [-1, 1], with the reference's arithmetic:
    /255 in float64, to float32, then Normalize(0.5, 0.5)."""
    pixels = (torch.from_numpy(np.asarray(faces)).to(torch.float64) / PIXEL_MAX).to(torch.float32)
    return (pixels.permute(0, 3, 1, 2) - 0.5) / 0.5


def encode_faces(models: MuseTalkModels, faces: np.ndarray) -> torch.Tensor:
    """(B, 256, 256, 3) uint8 RGB crops -> (B, 8, 32, 32): [masked-face latent, reference latent]."""
    if (
        faces.dtype != np.uint8
        or faces.ndim != 4
        or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, IMAGE_CHANNELS)
    ):
        raise ValueError(
            f"expected (B, {FACE_SIZE}, {FACE_SIZE}, 3) uint8 faces, got {faces.shape} {faces.dtype}"
        )
    batch = faces.shape[0]
    pixels = faces_to_images(faces)
    images = torch.cat([masked_copy(pixels), pixels])
    images = images.to(models.device, models.dtype).contiguous(
        memory_format=image_memory_format(models.device)
    )
    with torch.inference_mode():
        latents = _in_chunks(
            lambda chunk: encode_images(models.vae, chunk), images, _micro_batch(models, len(images))
        )
    out = torch.cat([latents[:batch], latents[batch:]], dim=1)
    assert out.shape == (batch, UNET_IN_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    return out


def decode_latents(models: MuseTalkModels, latents: torch.Tensor) -> np.ndarray:
    """(B, 4, 32, 32) predicted latents -> (B, 256, 256, 3) uint8 RGB faces."""
    if latents.ndim != 4 or latents.shape[1:] != (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE):
        raise ValueError(f"expected (B, 4, {LATENT_SIZE}, {LATENT_SIZE}) latents, got {tuple(latents.shape)}")
    latents = latents.to(models.device, models.dtype).contiguous(
        memory_format=image_memory_format(models.device)
    )
    with torch.inference_mode():
        images = _in_chunks(
            lambda chunk: decode_images(models.vae, chunk), latents, _micro_batch(models, len(latents))
        )
        images = (images / 2 + 0.5).clamp(0, 1)
    pixels = (images.permute(0, 2, 3, 1).float().cpu().numpy() * PIXEL_MAX).round()
    return pixels.astype(np.uint8)
