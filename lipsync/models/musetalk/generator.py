"""MuseTalk behind the generator interface: reference latents per source frame, whisper tokens per output
frame, one UNet pass and a VAE decode per generated face (see this folder's README)."""

from __future__ import annotations

from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipsync.config import (
    FACE_SIZE,
    LATENT_SIZE,
    UNET_IN_CHANNELS,
    WHISPER_HIDDEN_SIZE,
    AudioFeatureMode,
    ModelVersion,
    StreamSettings,
    audio_tokens,
)
from lipsync.models.generator import (
    ArraySpec,
    AudioConditioning,
    FaceBatch,
    GenerationRequest,
    Generator,
    GeneratorInfo,
    StreamingAudio,
)
from lipsync.models.musetalk.audio_features import AudioFeatureStream
from lipsync.models.musetalk.loading import load_models
from lipsync.models.musetalk.networks import MuseTalkModels
from lipsync.models.musetalk.sliding_features import SlidingAudioFeatures
from lipsync.models.musetalk.unet import predict_latents
from lipsync.models.musetalk.vae import decode_latents, encode_faces
from lipsync.models.musetalk.weights import FAMILY
from lipsync.timing import StageTimes

LATENTS = "latents"  # the per-frame array: masked-face latent + reference latent, (8, 32, 32)


class MuseTalkStage(str, Enum):
    VAE_ENCODE = "vae encode"
    UNET = "unet"
    VAE_DECODE = "vae decode"


class MuseTalkGenerator(Generator):
    """The frozen SD VAE, the MuseTalk UNet and whisper-tiny, as one generator."""

    family = FAMILY
    face_size = FACE_SIZE
    prepare_stages = (MuseTalkStage.VAE_ENCODE,)
    generate_stages = (MuseTalkStage.UNET, MuseTalkStage.VAE_DECODE)

    def __init__(self, models: MuseTalkModels, weights: Path | None = None) -> None:
        super().__init__(
            GeneratorInfo(FAMILY, models.version, weights, models.device, models.dtype, models.untrained)
        )
        self.models = models

    @classmethod
    def from_pretrained(
        cls, root: Path, version: ModelVersion, device: torch.device, dtype: torch.dtype
    ) -> MuseTalkGenerator:
        return cls(load_models(root, version, device, dtype), Path(root))

    def frame_arrays(self) -> dict[str, ArraySpec]:
        return {LATENTS: ArraySpec((UNET_IN_CHANNELS, LATENT_SIZE, LATENT_SIZE))}

    def prepare(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        with times.measure(MuseTalkStage.VAE_ENCODE):
            latents = encode_faces(self.models, faces.crops)
        return {LATENTS: latents.float().cpu().numpy()}

    def recipe(self) -> dict[str, Any]:
        """The keys avatars made before the generator interface recorded, so those stay fresh."""
        vae = "unknown"
        weights = self.models.vae_weights
        if weights is not None and weights.exists():
            stat = weights.stat()
            vae = f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return {"version": self.models.version, "dtype": str(self.dtype).removeprefix("torch."), "vae": vae}

    def offline_audio(self, samples: np.ndarray, fps: Fraction, mode: AudioFeatureMode) -> AudioConditioning:
        """The reference's whole-file 30 s segments, or the sliding blocks a live stream uses."""
        if mode == "sliding":
            return SlidingAudioFeatures.offline(self.models, samples, fps)
        return AudioFeatureStream(self.models, samples, fps)

    def streaming_audio(self, fps: Fraction, settings: StreamSettings) -> StreamingAudio:
        return SlidingAudioFeatures(
            self.models, fps, settings.feature_block_frames, settings.feature_lookahead_frames
        )

    def generate(self, request: GenerationRequest, times: StageTimes) -> np.ndarray:
        latents = torch.from_numpy(request.prepared[LATENTS]).to(self.device, self.dtype)
        with times.measure(MuseTalkStage.UNET):
            predicted = predict_latents(self.models, latents, request.conditioning)
        with times.measure(MuseTalkStage.VAE_DECODE):
            return decode_latents(self.models, predicted)

    @torch.inference_mode()
    def warm_up(self, batch_size: int) -> None:
        crops = np.zeros((batch_size, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
        tokens = torch.zeros(
            (batch_size, audio_tokens(self.models.audio_window), WHISPER_HIDDEN_SIZE),
            device=self.device,
            dtype=self.dtype,
        )
        decode_latents(self.models, predict_latents(self.models, encode_faces(self.models, crops), tokens))
