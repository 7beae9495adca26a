"""Silence detection: silent stretches keep the source mouth, with a short fade."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lipsync.pipeline.silence import speech_strengths

RATE = 16_000
FPS = Fraction(25)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def test_a_long_pause_is_silent_and_fades() -> None:
    audio = np.concatenate([speech_like(1.0), np.zeros(RATE, np.float32), speech_like(1.0, 1)])
    strengths = speech_strengths(audio, RATE, FPS, 75)
    assert np.all(strengths[:20] == 1.0)
    assert np.all(strengths[33:42] == 0.0)  # well inside the pause, beyond the 200 ms window
    assert np.all(strengths[55:] == 1.0)
    fade = strengths[20:33]
    assert np.all(np.diff(fade) <= 0) and 0 < fade[fade > 0].min() < 1  # a ramp, not a jump


def test_a_short_gap_between_words_keeps_generating() -> None:
    audio = np.concatenate([speech_like(1.0), np.zeros(int(0.28 * RATE), np.float32), speech_like(1.0, 1)])
    assert np.all(speech_strengths(audio, RATE, FPS, 55) == 1.0)


def test_quiet_speech_is_still_speech() -> None:
    audio = 0.01 * speech_like(2.0)  # -40 dBFS speech: relative, not absolute, threshold
    assert np.all(speech_strengths(audio, RATE, FPS, 50) == 1.0)
