"""The SyncNet log-mel spectrogram (the Wav2Lip recipe MuseTalk's training uses).

See lipsync/models/musetalk/README.md, SyncNet mel.

16 kHz mono audio -> (80, M) float32 in [-4, 4], 80 columns per second (one per 200 samples). A video
frame at 25 fps spans 16/5 columns; `mel_window` cuts the columns SyncNet sees for a run of frames.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE, TRAINING_FPS

MEL_SAMPLE_RATE = AUDIO_SAMPLE_RATE  # 16 kHz
PRE_EMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1]
MEL_N_FFT = 800
MEL_HOP = 200  # samples between columns: 12.5 ms
MEL_WIN = 800  # Hann window length (periodic, as librosa's)
MEL_BANDS = 80
MEL_FMIN = 55.0  # Hz
MEL_FMAX = 7600.0  # Hz
MIN_AMPLITUDE = 1e-5  # floor before the log: -100 dB
REF_LEVEL_DB = 20.0  # subtracted from the dB values
MIN_LEVEL_DB = -100.0  # the dB value mapped to -MAX_ABS_VALUE
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4]
MEL_PAD_VALUE = 0.0  # columns past the end of the audio in mel_window

MEL_COLUMNS_PER_SECOND = MEL_SAMPLE_RATE // MEL_HOP  # 80
MEL_COLUMNS_PER_FRAME = Fraction(MEL_COLUMNS_PER_SECOND, TRAINING_FPS)  # 16/5 at 25 fps
REFERENCE_SYNC_FRAMES = 5  # Wav2Lip's SyncNet window: 5 frames
SYNCNET_SYNC_FRAMES = 16  # MuseTalk's (LatentSync) SyncNet window: 16 frames


def mel_columns(frames: int) -> int:
    """Mel columns spanned by `frames` video frames at 25 fps: ceil(frames * 16 / 5)."""
    return math.ceil(frames * MEL_COLUMNS_PER_FRAME)


def mel_start_column(start_frame: int) -> int:
    """First mel column of video frame `start_frame`: int(80 * start_frame / 25), as the reference."""
    return int(start_frame * MEL_COLUMNS_PER_FRAME)


REFERENCE_SYNC_COLUMNS = mel_columns(REFERENCE_SYNC_FRAMES)  # 16
SYNCNET_MEL_COLUMNS = mel_columns(SYNCNET_SYNC_FRAMES)  # 52


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """(80, n_fft/2 + 1) Slaney-scale, Slaney-normalised triangular filters (librosa's default)."""
    from transformers.audio_utils import mel_filter_bank  # imported here: transformers is slow to import

    filters = mel_filter_bank(
        num_frequency_bins=MEL_N_FFT // 2 + 1,
        num_mel_filters=MEL_BANDS,
        min_frequency=MEL_FMIN,
        max_frequency=MEL_FMAX,
        sampling_rate=MEL_SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return np.ascontiguousarray(filters.T, dtype=np.float64)


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """Periodic Hann window of MEL_WIN samples, zero-padded (centred) to MEL_N_FFT."""
    n = np.arange(MEL_WIN)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / MEL_WIN)
    pad = (MEL_N_FFT - MEL_WIN) // 2
    return np.pad(window, (pad, MEL_N_FFT - MEL_WIN - pad))


def pre_emphasis(samples: np.ndarray) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1] (y[0] = x[0]) of 16 kHz mono float samples, as float64."""
    wav = np.asarray(samples, dtype=np.float64)
    if wav.ndim != 1:
        raise ValueError(f"expected mono samples (N,), got shape {wav.shape}")
    emphasised = np.empty_like(wav)
    if len(wav):
        emphasised[0] = wav[0]
        emphasised[1:] = wav[1:] - PRE_EMPHASIS * wav[:-1]
    return emphasised


def log_mel_columns(frames: np.ndarray) -> np.ndarray:
    """(80, C) float32 normalised log-mel of C frames of MEL_N_FFT pre-emphasised samples (C, 800)."""
    magnitude = np.abs(np.fft.rfft(frames * _hann_window(), axis=1)).T
    mel = _mel_basis() @ magnitude
    db = 20.0 * np.log10(np.maximum(MIN_AMPLITUDE, mel)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_column_count(samples: int) -> int:
    """Columns of the mel of `samples` samples: one per hop, the first centred on sample 0."""
    return 1 + samples // MEL_HOP


def syncnet_mel(samples: np.ndarray) -> np.ndarray:
    """(80, 1 + len // 200) float32 normalised log-mel of 16 kHz mono float samples.

    Column j is the STFT frame centred on sample j·200 (zeros beyond both ends), so it depends only on
    samples [j·200 − 400, j·200 + 400): a stream can compute it as soon as those have arrived.
    """
    emphasised = pre_emphasis(samples)
    half = MEL_N_FFT // 2
    padded = np.pad(emphasised, (half, half))
    columns = mel_column_count(len(emphasised))
    frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_N_FFT)[::MEL_HOP][:columns]
    return log_mel_columns(frames)


def mel_window(mel: np.ndarray, start_frame: int, frames: int) -> np.ndarray:
    """Columns of `frames` video frames from `start_frame`: (80, mel_columns(frames)) float32, padded with
    MEL_PAD_VALUE past the end. frames=5 gives 16 columns, frames=16 gives 52 (SYNCNET_MEL_COLUMNS)."""
    if start_frame < 0 or frames < 1:
        raise ValueError(f"need start_frame >= 0 and frames >= 1, got {start_frame}, {frames}")
    start = mel_start_column(start_frame)
    width = mel_columns(frames)
    out = np.full((mel.shape[0], width), MEL_PAD_VALUE, dtype=np.float32)
    part = mel[:, start : start + width]
    out[:, : part.shape[1]] = part
    return out


__all__ = [
    "MAX_ABS_VALUE",
    "MEL_BANDS",
    "MEL_COLUMNS_PER_FRAME",
    "MEL_COLUMNS_PER_SECOND",
    "MEL_HOP",
    "MEL_PAD_VALUE",
    "REFERENCE_SYNC_COLUMNS",
    "REFERENCE_SYNC_FRAMES",
    "SYNCNET_MEL_COLUMNS",
    "SYNCNET_SYNC_FRAMES",
    "mel_columns",
    "mel_start_column",
    "mel_window",
    "syncnet_mel",
]
