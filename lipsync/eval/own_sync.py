"""Sync confidence from our own SyncNet (`lipsync train syncnet`, or LatentSync's stable SyncNet).

Window t is face frames t .. t+F-1 (the 256 px dub crop, lower half, as in training) against the log-mel
of the same frames. Its confidence is the SyncNet's sync probability, clamp(cos, 0, 1). The offset is the
audio shift (in frames, within ±VSHIFT) that maximises the mean cosine; the sign is the LSE one: positive
when the video lags the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lipsync.eval.lse import VSHIFT
from lipsync.eval.windows import SlidingWindowEmbedder
from lipsync.models.syncnet import SyncNet, SyncNetSpec, lower_half, sync_probability
from lipsync.train.data.mel import mel_window, syncnet_mel
from lipsync.train.sampling import crops_to_images


@dataclass(frozen=True)
class OwnSyncResult:
    confidence: float  # mean sync probability at offset 0
    offset: int  # frames; positive: the video lags the audio
    windows: int
    per_window: list[float]  # sync probability of window t at offset 0
    offsets: list[int]
    mean_cosine_by_offset: list[float]


class OwnSyncScorer:
    """Streams 256 px face crops (one per frame) and embeds windows of F frames, batch by batch, holding
    at most batch_size + F - 1 prepared faces."""

    def __init__(self, model: SyncNet, spec: SyncNetSpec, device: torch.device, batch_size: int = 16) -> None:
        self._model = model
        self._spec = spec
        self._device = device
        self._batch = batch_size
        self._windows = SlidingWindowEmbedder(spec.frames, batch_size, self._embed)

    def add(self, face_crop: np.ndarray) -> None:
        """One frame's (256, 256, 3) uint8 RGB dub crop."""
        image = crops_to_images(face_crop[None])
        self._windows.add(lower_half(image, self._spec.image_size)[0])

    def _embed(self, windows: Tensor) -> Tensor:
        """(windows, F, 3, S/2, S) -> frames stacked frame-major on channels, as in training -> embeddings."""
        return self._model.embed_faces(windows.flatten(1, 2).to(self._device))

    def finish(self, samples: np.ndarray, frame_count: int) -> OwnSyncResult | None:
        """Score against 16 kHz speech aligned with frame 0; None if the video is shorter than a window."""
        windows = max(0, frame_count - self._spec.frames + 1)
        vision = self._windows.finish(windows)
        if vision is None:
            return None
        mel = syncnet_mel(samples)
        audio_windows = np.stack([mel_window(mel, t, self._spec.frames) for t in range(windows)])
        mels = torch.from_numpy(audio_windows).unsqueeze(1)
        audio: list[Tensor] = []
        with torch.inference_mode():
            for start in range(0, windows, self._batch):
                chunk = mels[start : start + self._batch].to(self._device)
                audio.append(self._model.embed_audio(chunk).float().cpu())
        sound = torch.cat(audio)
        probability = sync_probability(vision, sound)
        offsets, means = _cosine_by_offset(vision, sound)
        best = int(np.argmax(means))
        return OwnSyncResult(
            confidence=float(probability.mean()),
            offset=offsets[best],
            windows=windows,
            per_window=[float(p) for p in probability],
            offsets=offsets,
            mean_cosine_by_offset=means,
        )


def _cosine_by_offset(vision: Tensor, audio: Tensor) -> tuple[list[int], list[float]]:
    """Mean cos(vision[t], audio[t - d]) over the windows where both exist, for d in -VSHIFT..VSHIFT."""
    count = len(vision)
    offsets, means = [], []
    for d in range(-VSHIFT, VSHIFT + 1):
        lo, hi = max(0, d), min(count, count + d)
        if hi - lo < 1:
            continue
        cos = F.cosine_similarity(vision[lo:hi], audio[lo - d : hi - d], dim=1)
        offsets.append(d)
        means.append(float(cos.mean()))
    return offsets, means
