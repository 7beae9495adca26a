"""Whisper-tiny encoder features and the per-video-frame audio windows MuseTalk cross-attends to."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import WhisperConfig

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    AUDIO_WINDOW_FRAMES,
    AUDIO_WINDOW_LEFT_FRAMES,
    WHISPER_ENCODER_LAYERS,
    WHISPER_FRAMES_PER_SECOND,
    WHISPER_HIDDEN_LAYERS,
    WHISPER_HIDDEN_SIZE,
    WHISPER_MEL_BINS,
    WHISPER_SEGMENT_FRAMES,
    WHISPER_SEGMENT_SAMPLES,
)

if TYPE_CHECKING:
    from lipsync.models.loading import MuseTalkModels


def whisper_config(tiny: bool = False) -> dict[str, Any]:
    """config.json for openai/whisper-tiny, or a tiny variant: same encoder interface, a toy decoder."""
    settings: dict[str, Any] = {
        "architectures": ["WhisperForConditionalGeneration"],
        "d_model": WHISPER_HIDDEN_SIZE,
        "encoder_layers": WHISPER_ENCODER_LAYERS,
        "num_mel_bins": WHISPER_MEL_BINS,
        "max_source_positions": WHISPER_SEGMENT_FRAMES,
    }
    if tiny:
        settings |= {
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "decoder_layers": 1,
            "vocab_size": 64,
            "max_target_positions": 8,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "decoder_start_token_id": 3,
            "begin_suppress_tokens": None,
        }
    config: dict[str, Any] = WhisperConfig(**settings).to_dict()
    return config


def audio_window_start(frame_index: int, fps: Fraction) -> int:
    """First whisper frame of video frame i's window: floor(i * 50 / fps) - 4, in exact arithmetic.

    The window [start, start + 10) starts 80 ms before the frame's start time and spans 200 ms; at 25 fps
    it is [2i - 4, 2i + 6), the convention the weights were trained with.
    """
    own_first = math.floor(Fraction(frame_index) * WHISPER_FRAMES_PER_SECOND / Fraction(fps))
    return own_first - AUDIO_WINDOW_LEFT_FRAMES


def frame_count_for_audio(duration: Fraction, fps: Fraction) -> int:
    """Video frames that fit in the audio: floor(duration * fps), exact."""
    return math.floor(Fraction(duration) * Fraction(fps))


class AudioFeatureStream:
    """Audio tokens for video frames, computing whisper features one 30 s segment at a time.

    Frames are expected in increasing order; segments no longer needed are dropped, so memory stays bounded
    however long the audio. Asking for earlier frames again still works (the segment is recomputed).
    """

    def __init__(self, models: MuseTalkModels, samples: np.ndarray, fps: Fraction) -> None:
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (N,), got shape {samples.shape}")
        self._models = models
        self._samples = np.ascontiguousarray(samples, dtype=np.float32)
        self._fps = Fraction(fps)
        # Only whisper frames fully backed by audio are valid; the rest of the last segment is padding.
        self.valid_frames = len(samples) * WHISPER_FRAMES_PER_SECOND // AUDIO_SAMPLE_RATE
        self._segments: dict[int, torch.Tensor] = {}
        self.segments_computed = 0

    @property
    def cached_segments(self) -> tuple[int, ...]:
        return tuple(sorted(self._segments))

    def windows(self, frame_indices: Sequence[int]) -> torch.Tensor:
        """(B, 50, 384) tokens (time-major, layer-minor), without PE, on models.device in models.dtype."""
        spans = []
        for index in frame_indices:
            start = audio_window_start(index, self._fps)
            spans.append((start, max(start, 0), min(start + AUDIO_WINDOW_FRAMES, self.valid_frames)))
        needed: set[int] = set()
        for _, lo, hi in spans:
            if lo < hi:
                needed.update(range(lo // WHISPER_SEGMENT_FRAMES, (hi - 1) // WHISPER_SEGMENT_FRAMES + 1))
        # Keep only this call's segments: later calls never need earlier audio on a forward sweep.
        segments = {
            k: self._segments[k] if k in self._segments else self._encode_segment(k) for k in sorted(needed)
        }
        self._segments = segments

        out = torch.zeros(
            len(spans),
            AUDIO_WINDOW_FRAMES,
            WHISPER_HIDDEN_LAYERS,
            WHISPER_HIDDEN_SIZE,
            device=self._models.device,
            dtype=self._models.dtype,
        )
        for row, (start, lo, hi) in enumerate(spans):
            frame = lo
            while frame < hi:
                k, offset = divmod(frame, WHISPER_SEGMENT_FRAMES)
                count = min(hi - frame, WHISPER_SEGMENT_FRAMES - offset)
                out[row, frame - start : frame - start + count] = segments[k][offset : offset + count]
                frame += count
        return out.reshape(len(spans), AUDIO_WINDOW_FRAMES * WHISPER_HIDDEN_LAYERS, WHISPER_HIDDEN_SIZE)

    def _encode_segment(self, index: int) -> torch.Tensor:
        """Whisper hidden states of one 30 s segment: (1500, 5, 384) in models.dtype."""
        models = self._models
        chunk = self._samples[index * WHISPER_SEGMENT_SAMPLES : (index + 1) * WHISPER_SEGMENT_SAMPLES]
        features = models.feature_extractor(chunk, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
        encoder_dtype = next(models.audio_encoder.parameters()).dtype
        mels = features.input_features.to(models.device, encoder_dtype)
        with torch.inference_mode():
            hidden = models.audio_encoder(mels, output_hidden_states=True).hidden_states
        self.segments_computed += 1
        return torch.stack(hidden, dim=2)[0].to(models.dtype)
