"""Where the speech is silent, keep the source mouth instead of generating mouth flutter.

MuseTalk's training data rarely shows closed mouths in pauses, so its lips keep moving in
silence (lipsync/models/musetalk/README.md, Where lipsync deliberately differs). For each output
frame we look at the same 200 ms of audio the model would see; if it is quiet relative to the
speech, that frame keeps its source mouth.
The blend strength ramps in and out over a few frames so the switch is not a visible jump.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lipsync.config import AUDIO_WINDOW_FRAMES, WHISPER_FRAMES_PER_SECOND
from lipsync.models.musetalk.audio_features import audio_window_start

SILENCE_BELOW_SPEECH_DB = 30.0  # a window this far below the loud speech level counts as silent
SILENCE_FLOOR_DBFS = -60.0  # ... and any window below this absolute level does too
LOUD_PERCENTILE = 95.0  # the speech level: this percentile of window loudness
MIN_SILENCE_SECONDS = 0.25  # shorter pauses (between words) keep generating
FADE_SECONDS = 0.12  # ramp of the blend strength at the edges of a silence


def window_loudness_dbfs(
    samples: np.ndarray, sample_rate: int, fps: Fraction, frame_count: int
) -> np.ndarray:
    """RMS level (dBFS) of the audio window the model sees for each output frame."""
    levels = np.empty(frame_count, dtype=np.float32)
    for i in range(frame_count):
        start = audio_window_start(i, fps)  # in whisper frames, as the UNet's audio tokens
        lo = max(0, start * sample_rate // WHISPER_FRAMES_PER_SECOND)
        hi = min(len(samples), (start + AUDIO_WINDOW_FRAMES) * sample_rate // WHISPER_FRAMES_PER_SECOND)
        window = samples[lo:hi]
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if len(window) else 0.0
        levels[i] = 20.0 * np.log10(max(rms, 1e-10))
    return levels


def speech_strengths(samples: np.ndarray, sample_rate: int, fps: Fraction, frame_count: int) -> np.ndarray:
    """Per output frame, how much of the generated mouth to blend in: 1 in speech, 0 in silence."""
    levels = window_loudness_dbfs(samples, sample_rate, fps, frame_count)
    if frame_count == 0:
        return levels
    speech_level = float(np.percentile(levels, LOUD_PERCENTILE))
    threshold = max(SILENCE_FLOOR_DBFS, speech_level - SILENCE_BELOW_SPEECH_DB)
    silent = levels < threshold
    silent = _drop_short_runs(silent, max(1, round(MIN_SILENCE_SECONDS * float(fps))))
    return _ramp(~silent, max(1, round(FADE_SECONDS * float(fps))))


def _drop_short_runs(flags: np.ndarray, min_length: int) -> np.ndarray:
    """Clear runs of True shorter than min_length."""
    out = flags.copy()
    i = 0
    while i < len(flags):
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < len(flags) and flags[j]:
            j += 1
        if j - i < min_length:
            out[i:j] = False
        i = j
    return out


def _ramp(speech: np.ndarray, fade_frames: int) -> np.ndarray:
    """1 on speech frames, falling linearly to 0 over fade_frames into each silence."""
    distance = np.full(len(speech), np.inf)
    last = -np.inf
    for i, is_speech in enumerate(speech):  # distance to the nearest speech frame, both directions
        if is_speech:
            last = i
        distance[i] = i - last
    last = np.inf
    for i in range(len(speech) - 1, -1, -1):
        if speech[i]:
            last = i
        distance[i] = min(distance[i], last - i)
    return np.clip(1.0 - distance / (fade_frames + 1), 0.0, 1.0).astype(np.float32)
