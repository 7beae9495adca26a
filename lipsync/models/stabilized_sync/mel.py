"""The audio input of the stabilized-sync family: Wav2Lip's log-mel and its 80 × 16 window per video frame.

The spectrogram is the project's one Wav2Lip-recipe implementation (`lipsync.train.data.mel.syncnet_mel`,
numpy only): 16 kHz mono, pre-emphasis 0.97, STFT n_fft 800 / window 800 (Hann) / hop 200, magnitude,
80 Slaney mel bands 55–7600 Hz, 20·log10(max(1e-5, ·)) − 20 dB, then (dB + 100) / 100 mapped linearly to
[−4, 4] and clipped. It has 1 + ⌊samples / 200⌋ columns: 80 per second.

What this module adds is the window the networks read for video frame t at any frame rate: 16 columns
(0.2 s, 5 frames at 25 fps) from column ⌊80·t / fps⌋, as (1, 80, 16): one channel, mel bins as rows,
time as columns (the paper's "16 × 80" is time × bins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from lipsync.train.data.mel import (
    MAX_ABS_VALUE,
    MEL_BANDS,
    MEL_COLUMNS_PER_SECOND,
    MEL_FMAX,
    MEL_FMIN,
    MEL_HOP,
    MEL_N_FFT,
    MEL_SAMPLE_RATE,
    MEL_WIN,
    MIN_LEVEL_DB,
    PRE_EMPHASIS,
    REF_LEVEL_DB,
    syncnet_mel,
)

SYNC_FRAMES = 5  # paper §3.5: 5 consecutive frames per step; one mel window covers them
MEL_WINDOW_STEPS = 16  # paper §3.5: a 16 × 80 mel-spectrogram per step (Wav2Lip's syncnet_mel_step_size)
MEL_CHANNELS = 1  # the window enters the networks as a one-channel image
SILENCE_VALUE = -MAX_ABS_VALUE  # every bin of digital silence, and the padding of audio shorter than a window
FrameRate = Fraction | int


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(80, 1 + len // 200) float32 in [−4, 4]: the Wav2Lip log-mel of 16 kHz mono float samples."""
    return syncnet_mel(samples)


def mel_window_start(frame: int, fps: FrameRate) -> int:
    """First mel column of video frame `frame`: ⌊80·frame / fps⌋, exact (Wav2Lip's int(80·t / fps))."""
    if frame < 0:
        raise ValueError(f"frame {frame} is negative")
    rate = Fraction(fps)
    if rate <= 0:
        raise ValueError(f"fps {fps} must be positive")
    return math.floor(Fraction(MEL_COLUMNS_PER_SECOND * frame) / rate)


def mel_window(mel: np.ndarray, frame: int, fps: FrameRate) -> np.ndarray:
    """(1, 80, 16) float32: the window of video frame `frame` in a (80, M) log-mel.

    A window that would run past the last column is moved back to end there (Wav2Lip's inference); audio
    shorter than one window is padded on the right with SILENCE_VALUE.
    """
    if mel.ndim != 2 or mel.shape[0] != MEL_BANDS:
        raise ValueError(f"expected a ({MEL_BANDS}, M) log-mel, got shape {mel.shape}")
    start = min(mel_window_start(frame, fps), max(0, mel.shape[1] - MEL_WINDOW_STEPS))
    out = np.full((MEL_CHANNELS, MEL_BANDS, MEL_WINDOW_STEPS), SILENCE_VALUE, dtype=np.float32)
    part = mel[:, start : start + MEL_WINDOW_STEPS]
    out[0, :, : part.shape[1]] = part
    return out


def mel_windows(mel: np.ndarray, frames: Sequence[int], fps: FrameRate) -> np.ndarray:
    """(N, 1, 80, 16) float32: `mel_window` of each frame, stacked."""
    if not frames:
        return np.zeros((0, MEL_CHANNELS, MEL_BANDS, MEL_WINDOW_STEPS), dtype=np.float32)
    return np.stack([mel_window(mel, frame, fps) for frame in frames])


def silent_mel_window() -> np.ndarray:
    """(1, 80, 16) float32 window of digital silence: the audio the silent-lip generator G_S is given."""
    return np.full((MEL_CHANNELS, MEL_BANDS, MEL_WINDOW_STEPS), SILENCE_VALUE, dtype=np.float32)


__all__ = [
    "MAX_ABS_VALUE",
    "MEL_BANDS",
    "MEL_CHANNELS",
    "MEL_COLUMNS_PER_SECOND",
    "MEL_FMAX",
    "MEL_FMIN",
    "MEL_HOP",
    "MEL_N_FFT",
    "MEL_SAMPLE_RATE",
    "MEL_WIN",
    "MEL_WINDOW_STEPS",
    "MIN_LEVEL_DB",
    "PRE_EMPHASIS",
    "REF_LEVEL_DB",
    "SILENCE_VALUE",
    "SYNC_FRAMES",
    "log_mel",
    "mel_window",
    "mel_window_start",
    "mel_windows",
    "silent_mel_window",
]
