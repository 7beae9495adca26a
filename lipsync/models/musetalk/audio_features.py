"""Whisper-tiny encoder features and the per-video-frame audio windows MuseTalk cross-attends to."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import WhisperConfig

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    REFERENCE_AUDIO_WINDOW,
    SAMPLES_PER_WHISPER_FRAME,
    WHISPER_ENCODER_LAYERS,
    WHISPER_FRAMES_PER_SECOND,
    WHISPER_HIDDEN_LAYERS,
    WHISPER_HIDDEN_SIZE,
    WHISPER_MEL_BINS,
    WHISPER_SEGMENT_FRAMES,
    WHISPER_SEGMENT_SAMPLES,
    audio_window_frames,
    audio_window_left_frames,
)

if TYPE_CHECKING:
    from lipsync.models.musetalk.networks import MuseTalkModels


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


def audio_window_start(frame_index: int, fps: Fraction, audio_window: int = REFERENCE_AUDIO_WINDOW) -> int:
    """First whisper frame of video frame i's window: floor(i * 50 / fps) - (T - 1), in exact arithmetic.

    For the reference's T = 5 the window [start, start + 10) starts 80 ms before the frame's start time
    and spans 200 ms; at 25 fps it is [2i - 4, 2i + 6), the convention the weights were trained with.
    In general it is the 2T whisper frames centred on the frame's own two. Unlike the reference code's
    window (int(fps), wider left padding below 25 fps) this keeps that lead at every rate: see this
    folder's README, Audio features and windows, and its table of deliberate differences.
    """
    own_first = math.floor(Fraction(frame_index) * WHISPER_FRAMES_PER_SECOND / Fraction(fps))
    return own_first - audio_window_left_frames(audio_window)


class BlockedAudioFeatures(ABC):
    """Whisper hidden states computed in fixed blocks of whisper frames, gathered into per-frame windows.

    Subclasses decide how a block is computed. Frames are expected in increasing order; blocks no longer
    needed are dropped, so memory stays bounded however long the audio. Asking for earlier frames again
    still works (the block is recomputed).
    """

    block_frames: int

    def __init__(self, models: MuseTalkModels, fps: Fraction) -> None:
        self._models = models
        self._fps = Fraction(fps)
        self._blocks: dict[int, torch.Tensor] = {}
        self.blocks_computed = 0

    @property
    @abstractmethod
    def valid_frames(self) -> int | None:
        """Whisper frames fully backed by audio (None while more audio may come); later ones are zeros."""

    @abstractmethod
    def _compute_block(self, index: int) -> torch.Tensor:
        """Hidden states (block_frames, 5, 384) of block `index`, in models.dtype."""

    @property
    def cached_blocks(self) -> tuple[int, ...]:
        return tuple(sorted(self._blocks))

    def windows(self, frame_indices: Sequence[int]) -> torch.Tensor:
        """(B, 10T, 384) tokens (time-major, layer-minor), without PE, on models.device in models.dtype.

        T is the models' audio window (5 for the released weights: 50 tokens)."""
        valid = self.valid_frames
        window = self._models.audio_window
        width = audio_window_frames(window)
        spans = []
        for index in frame_indices:
            start = audio_window_start(index, self._fps, window)
            end = start + width
            spans.append((start, max(start, 0), end if valid is None else min(end, valid)))
        needed: set[int] = set()
        for _, lo, hi in spans:
            if lo < hi:
                needed.update(range(lo // self.block_frames, (hi - 1) // self.block_frames + 1))
        # Keep only this call's blocks: later calls never need earlier audio on a forward sweep.
        self._blocks = {
            k: self._blocks[k] if k in self._blocks else self._new_block(k) for k in sorted(needed)
        }

        out = torch.zeros(
            len(spans),
            width,
            WHISPER_HIDDEN_LAYERS,
            WHISPER_HIDDEN_SIZE,
            device=self._models.device,
            dtype=self._models.dtype,
        )
        for row, (start, lo, hi) in enumerate(spans):
            frame = lo
            while frame < hi:
                k, offset = divmod(frame, self.block_frames)
                count = min(hi - frame, self.block_frames - offset)
                out[row, frame - start : frame - start + count] = self._blocks[k][offset : offset + count]
                frame += count
        return out.reshape(len(spans), width * WHISPER_HIDDEN_LAYERS, WHISPER_HIDDEN_SIZE)

    def _new_block(self, index: int) -> torch.Tensor:
        self.blocks_computed += 1
        return self._compute_block(index)


def encode_whisper_segment(models: MuseTalkModels, samples: np.ndarray) -> torch.Tensor:
    """Whisper hidden states of up to 30 s of audio, zero-padded to 30 s: (1500, 5, 384) in models.dtype."""
    features = models.feature_extractor(samples, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
    encoder_dtype = next(models.audio_encoder.parameters()).dtype
    mels = features.input_features.to(models.device, encoder_dtype)
    with torch.inference_mode():
        hidden = models.audio_encoder(mels, output_hidden_states=True).hidden_states
    return torch.stack(hidden, dim=2)[0].to(models.dtype)


class AudioFeatureStream(BlockedAudioFeatures):
    """The reference's features: the whole audio cut into 30 s segments, one encoder pass each."""

    block_frames = WHISPER_SEGMENT_FRAMES

    def __init__(self, models: MuseTalkModels, samples: np.ndarray, fps: Fraction) -> None:
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (N,), got shape {samples.shape}")
        super().__init__(models, fps)
        self._samples = np.ascontiguousarray(samples, dtype=np.float32)
        # Only whisper frames fully backed by audio are valid; the rest of the last segment is padding.
        self._valid_frames = len(samples) // SAMPLES_PER_WHISPER_FRAME

    @property
    def valid_frames(self) -> int:
        return self._valid_frames

    def _compute_block(self, index: int) -> torch.Tensor:
        chunk = self._samples[index * WHISPER_SEGMENT_SAMPLES : (index + 1) * WHISPER_SEGMENT_SAMPLES]
        return encode_whisper_segment(self._models, chunk)
