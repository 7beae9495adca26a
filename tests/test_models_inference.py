"""VAE encode/decode, the UNet pass and the positional encoding, with tiny weights; device choice."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.cli.options import with_flags
from lipsync.config import VAE_SCALING_FACTOR
from lipsync.errors import LipsyncError
from lipsync.models.device import resolve_device, resolve_dtype
from lipsync.models.musetalk.loading import MuseTalkModels, load_models
from lipsync.models.musetalk.unet import positional_encoding, predict_latents
from lipsync.models.musetalk.vae import decode_latents, encode_faces


@pytest.fixture(scope="module")
def models(tiny_weights: Path) -> MuseTalkModels:
    return load_models(tiny_weights, "v1", torch.device("cpu"), torch.float32)


def faces(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 256, 256, 3), dtype=np.uint8)


def test_encode_shapes_mask_and_determinism(models: MuseTalkModels) -> None:
    batch = faces(2)
    batch[1, :128] = batch[0, :128]  # same upper half, different mouth half
    latents = encode_faces(models, batch)
    assert latents.shape == (2, 8, 32, 32) and latents.dtype == torch.float32
    torch.testing.assert_close(latents[0, :4], latents[1, :4])  # masked copies are identical
    assert not torch.allclose(latents[0, 4:], latents[1, 4:])  # references differ
    assert torch.equal(encode_faces(models, batch), latents)  # mode, not a sample

    blacked = batch.copy()
    blacked[:, 128:] = 0  # black pixels normalise to -1, the mask value
    torch.testing.assert_close(encode_faces(models, blacked)[:, 4:], latents[:, :4])


def test_encode_matches_manual_vae_call(models: MuseTalkModels) -> None:
    face = faces(1, seed=3)
    pixels = torch.from_numpy(face).permute(0, 3, 1, 2).double() / 255
    image = ((pixels.float() - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = models.vae.encode(image).latent_dist.mode() * VAE_SCALING_FACTOR
    torch.testing.assert_close(encode_faces(models, face)[:, 4:], expected)


def test_decode_shapes_and_values(models: MuseTalkModels) -> None:
    latents = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    images = decode_latents(models, latents)
    assert images.shape == (3, 256, 256, 3) and images.dtype == np.uint8
    assert images.std() > 1
    with torch.inference_mode():
        decoded = models.vae.decode(latents / VAE_SCALING_FACTOR).sample
    expected = ((decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(images.astype(np.float64) - expected).max() <= 1


def test_bad_shapes_are_rejected(models: MuseTalkModels) -> None:
    with pytest.raises(ValueError):
        encode_faces(models, np.zeros((1, 128, 128, 3), np.uint8))
    with pytest.raises(ValueError):
        decode_latents(models, torch.zeros(1, 8, 32, 32))
    with pytest.raises(ValueError):
        predict_latents(models, torch.zeros(2, 8, 32, 32), torch.zeros(1, 50, 384))


def test_predict_latents_adds_pe_and_runs_at_timestep_0(models: MuseTalkModels) -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 8, 32, 32, generator=generator)
    audio = torch.randn(2, 50, 384, generator=generator)
    out = predict_latents(models, latents, audio)
    assert out.shape == (2, 4, 32, 32) and out.dtype == torch.float32
    with torch.inference_mode():
        expected = models.unet(
            latents, torch.tensor([0]), encoder_hidden_states=audio + positional_encoding()
        ).sample
    torch.testing.assert_close(out, expected)


def test_positional_encoding_values() -> None:
    pe = positional_encoding()
    assert pe.shape == (50, 384)
    assert torch.equal(pe[0, 0::2], torch.zeros(192)) and torch.equal(pe[0, 1::2], torch.ones(192))
    for pos in (1, 7, 49):
        for k in (0, 1, 50, 191):
            angle = pos / 10000 ** (2 * k / 384)
            assert math.isclose(pe[pos, 2 * k].item(), math.sin(angle), abs_tol=1e-5)
            assert math.isclose(pe[pos, 2 * k + 1].item(), math.cos(angle), abs_tol=1e-5)
    assert positional_encoding(5, 8).shape == (5, 8)


def test_resolve_device_and_dtype() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LipsyncError, match="CUDA") as info:
            resolve_device("cuda")
        assert "set `device` to cpu" in info.value.fix
        assert "`device` (--device) to cpu" in with_flags(info.value.fix)  # the command line names its flag
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) in (torch.bfloat16, torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(LipsyncError, match="fp16"):
        resolve_dtype("fp16", cpu)
