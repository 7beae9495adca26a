"""The stabilized-sync family behind the generator interface (see this folder's README).

Per source frame, once (avatars store it): the face crop, and its identity reference — the crop with its
lips closed by G_S fed the mel of silence (or the crop itself when G_S is off). Per output frame: the
AVSyncNet audio encoder turns the frame's mel window into F_A, and G_L makes the face from the identity
reference, the pose reference (the crop with its lower half masked) and F_A.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lipsync.config import AudioFeatureMode, FaceSettings, StreamSettings
from lipsync.face.crop import CropBox
from lipsync.models.device import image_memory_format
from lipsync.models.encoder_cache import DEFAULT_BUDGET_BYTES, EncoderCache, frame_key
from lipsync.models.generator import (
    ArraySpec,
    FaceBatch,
    GenerationRequest,
    Generator,
    GeneratorInfo,
)
from lipsync.models.stabilized_sync.generator_net import pose_reference
from lipsync.models.stabilized_sync.mel_stream import MelWindows
from lipsync.models.stabilized_sync.networks import StabilizedSyncModels, load_models, silent_audio_input
from lipsync.models.stabilized_sync.wav2vec2 import WaveWindows
from lipsync.models.stabilized_sync.weights import DEFAULT_VERSION, FAMILY
from lipsync.timing import StageTimes

FACE = "face"  # per-frame array: the face crop, (S, S, 3) uint8 (the pose reference is made from it)
IDENTITY = "identity"  # per-frame array: the identity reference G_L reads, (S, S, 3) uint8
# The crop: the 68 landmarks' bounds, raised above the brows by this share of their height so the box
# covers the forehead as a face detector's box does (the paper crops with FAN's detections, Wav2Lip with
# S3FD's; neither box is available from landmarks, so this is our choice).
FOREHEAD_RATIO = 0.25
PRIME_BATCH = 8  # frames per encoder call when a session primes the encoder cache


class StabilizedSyncStage(str, Enum):
    SILENT_LIPS = "silent lips"
    AUDIO_ENCODER = "audio encoder"
    GENERATOR = "generator"


def face_box(
    points: np.ndarray, frame_width: int, frame_height: int, settings: FaceSettings
) -> CropBox | None:
    """The family's crop box of 68 landmarks: their bounds with the forehead added; `bbox_shift` moves the
    box down (+) or up (−), `extra_margin` adds px below the chin, as for MuseTalk. None if degenerate."""
    x1, y1 = np.floor(points.min(axis=0))
    x2, y2 = np.ceil(points.max(axis=0))
    top = y1 - FOREHEAD_RATIO * (y2 - y1) + settings.bbox_shift
    bottom = y2 + settings.extra_margin + settings.bbox_shift
    left, right = max(0, int(x1)), min(frame_width, int(x2) + 1)
    box = CropBox(left, max(0, int(top)), right, min(frame_height, int(bottom) + 1))
    return box if box.width > 1 and box.height > 1 else None


def to_tensor(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(B, S, S, 3) uint8 RGB → (B, 3, S, S) in [−1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return (tensor.to(dtype) / 127.5 - 1.0).contiguous(memory_format=image_memory_format(device))


def to_images(faces: Tensor) -> np.ndarray:
    """(B, 3, S, S) in [−1, 1] → (B, S, S, 3) uint8 RGB."""
    scaled = ((faces.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class StabilizedSyncGenerator(Generator):
    """G_L, G_S and the frozen AVSyncNet audio encoder, as one generator."""

    family = FAMILY
    face_size = 96  # set per instance from the weights' config
    prepare_stages = (StabilizedSyncStage.SILENT_LIPS,)
    generate_stages = (StabilizedSyncStage.AUDIO_ENCODER, StabilizedSyncStage.GENERATOR)

    def __init__(
        self,
        models: StabilizedSyncModels,
        weights: Path | None = None,
        encoder_cache_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        super().__init__(
            GeneratorInfo(FAMILY, DEFAULT_VERSION, weights, models.device, models.dtype, models.untrained)
        )
        self.models = models
        self.face_size = models.config.generator.face_size
        self.encoder_cache = EncoderCache(encoder_cache_bytes)

    @classmethod
    def from_pretrained(
        cls,
        root: Path,
        device: torch.device,
        dtype: torch.dtype,
        silent_lip_references: bool | None = None,
    ) -> StabilizedSyncGenerator:
        return cls(load_models(root, device, dtype, silent_lip_references), Path(root))

    def crop_box(
        self, points: np.ndarray, frame_width: int, frame_height: int, settings: FaceSettings
    ) -> CropBox | None:
        return face_box(points, frame_width, frame_height, settings)

    def frame_arrays(self) -> dict[str, ArraySpec]:
        shape = (self.face_size, self.face_size, 3)
        return {FACE: ArraySpec(shape, "uint8"), IDENTITY: ArraySpec(shape, "uint8")}

    @torch.inference_mode()
    def prepare(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        identity = faces.crops
        silent = self.models.silent_generator
        if silent is not None and len(faces.crops):
            with times.measure(StabilizedSyncStage.SILENT_LIPS):
                crops = to_tensor(faces.crops, self.device, self.dtype)
                mels = torch.from_numpy(silent_audio_input(self.models.config)).to(self.device, self.dtype)
                audio = self.models.audio_encoder(mels).expand(len(crops), -1)
                identity = to_images(silent(crops, pose_reference(crops), audio))
        return {FACE: faces.crops, IDENTITY: identity}

    def recipe(self) -> dict[str, Any]:
        """Prepared identity references depend on G_S and the audio encoder: their files are part of it."""
        weights = self.info.weights
        files: dict[str, str] = {}
        if weights is not None:
            from lipsync.models.stabilized_sync.weights import WeightsLayout

            layout = WeightsLayout(weights)
            for path in (layout.silent_generator, layout.audio_encoder, layout.config):
                if path.exists():
                    stat = path.stat()
                    files[path.name] = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return {
            **super().recipe(),
            "face_size": self.face_size,
            "silent_lips": self.models.silent_generator is not None,
            "files": files,
        }

    def offline_audio(self, samples: np.ndarray, fps: Fraction, mode: AudioFeatureMode) -> MelWindows:
        """The same windows whatever the mode: each depends only on its own 0.2 s of audio (mel windows,
        or with the wav2vec2 encoder the waveform those windows are computed from)."""
        if self.models.config.audio_encoder == "wav2vec2":
            return WaveWindows.offline(samples, fps)
        return MelWindows.offline(samples, fps)

    def streaming_audio(self, fps: Fraction, settings: StreamSettings) -> MelWindows:
        return WaveWindows(fps) if self.models.config.audio_encoder == "wav2vec2" else MelWindows(fps)

    @torch.inference_mode()
    def generate(self, request: GenerationRequest, times: StageTimes) -> np.ndarray:
        mels = torch.from_numpy(np.asarray(request.conditioning)).to(self.device, self.dtype)
        with times.measure(StabilizedSyncStage.AUDIO_ENCODER):
            audio = self.models.audio_encoder(mels)
        with times.measure(StabilizedSyncStage.GENERATOR):
            identities, crops = request.prepared[IDENTITY], request.prepared[FACE]
            keys = [frame_key(i, c) for i, c in zip(identities, crops, strict=True)]
            encoded = self.encoder_cache.encoded(keys, partial(self._encode_rows, identities, crops))
            return to_images(self.models.generator.decode(encoded, audio))

    def _encode_rows(self, identities: np.ndarray, crops: np.ndarray, rows: list[int]) -> list[Tensor]:
        return self._encode(identities[rows], crops[rows])

    def _encode(self, identities: np.ndarray, crops: np.ndarray) -> list[Tensor]:
        """G_L's encoder outputs of these frames. A lone frame is encoded twice over as a batch of two:
        oneDNN runs a batch of one with other kernels, whose last bits differ, and a frame's features
        must not depend on which frames happened to miss the cache with it (streamed equals offline)."""
        single = len(identities) == 1
        if single:
            identities, crops = np.repeat(identities, 2, axis=0), np.repeat(crops, 2, axis=0)
        identity = to_tensor(identities, self.device, self.dtype)
        pose = pose_reference(to_tensor(crops, self.device, self.dtype))
        encoded = self.models.generator.encode(identity, pose)
        return [level[:1] for level in encoded] if single else encoded

    @torch.inference_mode()
    def prime(
        self,
        frame_arrays: Mapping[str, np.ndarray],
        sources: Sequence[int],
        references: Mapping[str, np.ndarray],
    ) -> None:
        """Encode G_L's references of the avatar's frames ahead, as far as the cache's budget allows, so
        a session's frames run the decoder only (the first session on an avatar opens that much later)."""
        identities, crops = frame_arrays[IDENTITY], frame_arrays[FACE]
        for start in range(0, len(sources), PRIME_BATCH):
            rows = list(sources[start : start + PRIME_BATCH])
            batch_identities, batch_crops = identities[rows], crops[rows]
            keys = [frame_key(i, c) for i, c in zip(batch_identities, batch_crops, strict=True)]
            encode = partial(self._encode_rows, batch_identities, batch_crops)
            if not self.encoder_cache.fill(keys, encode):
                return

    @torch.inference_mode()
    def warm_up(self, batch_size: int) -> None:
        crops = np.zeros((batch_size, self.face_size, self.face_size, 3), dtype=np.uint8)
        mels = np.repeat(silent_audio_input(self.models.config), batch_size, axis=0)
        prepared = self.prepare(FaceBatch(crops, np.zeros((batch_size, 68, 2), np.float32), []), StageTimes())
        self.generate(GenerationRequest(prepared, {}, mels), StageTimes())
