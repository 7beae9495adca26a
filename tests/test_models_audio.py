"""Audio windows (exact frame-rate arithmetic) and the lazy whisper feature stream."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.config import AUDIO_SAMPLE_RATE, WHISPER_SEGMENT_FRAMES, WHISPER_SEGMENT_SAMPLES
from lipsync.io.audio import frame_count_for_audio
from lipsync.models.musetalk.audio_features import AudioFeatureStream, audio_window_start
from lipsync.models.musetalk.loading import MuseTalkModels, load_models

WHISPER_FRAME = Fraction(1, 50)  # seconds
WINDOW_LEAD = Fraction(8, 100)  # the window starts 80 ms before the frame


@pytest.fixture(scope="module")
def models(tiny_weights: Path) -> MuseTalkModels:
    return load_models(tiny_weights, "v15", torch.device("cpu"), torch.float32)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * AUDIO_SAMPLE_RATE))).astype(np.float32)


def whisper_states(models: MuseTalkModels, samples: np.ndarray) -> torch.Tensor:
    """Reference computation for one segment: (1500, 5, 384) hidden states."""
    mels = models.feature_extractor(samples, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
    with torch.inference_mode():
        out = models.audio_encoder(mels.input_features, output_hidden_states=True)
    assert len(out.hidden_states) == 5
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)  # last one is after the final LayerNorm
    return torch.stack(out.hidden_states, dim=2)[0]


def test_window_at_25fps_is_2i_minus_4() -> None:
    for i in range(0, 100_000, 7):
        assert audio_window_start(i, Fraction(25)) == 2 * i - 4


@pytest.mark.parametrize(
    "fps", [Fraction(30000, 1001), Fraction(30), Fraction(2213, 100), Fraction(24000, 1001), Fraction(60)]
)
def test_window_tracks_frame_time_without_drift(fps: Fraction) -> None:
    hour_frames = frame_count_for_audio(Fraction(3600), fps)
    for i in [*range(200), *range(hour_frames - 200, hour_frames + 1)]:
        start = audio_window_start(i, fps) * WHISPER_FRAME
        target = i / fps - WINDOW_LEAD
        assert target - WHISPER_FRAME < start <= target


def test_frame_count_is_exact() -> None:
    assert frame_count_for_audio(Fraction(5), Fraction(30000, 1001)) == 149  # 149.85
    assert frame_count_for_audio(Fraction(1001, 100), Fraction(30000, 1001)) == 300  # exactly 300
    assert frame_count_for_audio(Fraction(3600), Fraction(30000, 1001)) == 107892
    assert frame_count_for_audio(Fraction(4), Fraction(25)) == 100


def test_windows_shape_order_and_padding(models: MuseTalkModels) -> None:
    samples = noise(1.0)  # 50 valid whisper frames
    stream = AudioFeatureStream(models, samples, Fraction(25))
    assert stream.valid_frames == 50
    tokens = stream.windows([0, 3, 24])
    assert tokens.shape == (3, 50, 384) and tokens.dtype == torch.float32
    states = whisper_states(models, samples)
    grid = tokens.reshape(3, 10, 5, 384)  # time-major, layer-minor
    assert torch.all(grid[0, :4] == 0)  # frames -4..-1: left padding
    torch.testing.assert_close(grid[0, 4:], states[0:6])
    torch.testing.assert_close(grid[1], states[2:12])
    torch.testing.assert_close(grid[2, :6], states[44:50])
    assert torch.all(grid[2, 6:] == 0)  # frames 50..53 lie past the audio (right padding)
    assert torch.all(stream.windows([40]) == 0)  # a frame far past the end: all zeros


def test_batched_equals_one_at_a_time(models: MuseTalkModels) -> None:
    samples = noise(2.0, seed=1)
    indices = [0, 1, 2, 5, 17, 29, 40, 49]
    batched = AudioFeatureStream(models, samples, Fraction(30000, 1001)).windows(indices)
    single_stream = AudioFeatureStream(models, samples, Fraction(30000, 1001))
    singles = torch.cat([single_stream.windows([i]) for i in indices])
    assert torch.equal(batched, singles)


def test_segments_are_lazy_and_evicted(models: MuseTalkModels) -> None:
    samples = noise(65.0, seed=2)  # three segments: 0-30 s, 30-60 s, 60-65 s
    stream = AudioFeatureStream(models, samples, Fraction(25))
    assert stream.blocks_computed == 0
    straddling = stream.windows([750])  # whisper frames [1496, 1506): both sides of the first boundary
    assert stream.cached_blocks == (0, 1)
    first = whisper_states(models, samples[:WHISPER_SEGMENT_SAMPLES])
    second = whisper_states(models, samples[WHISPER_SEGMENT_SAMPLES : 2 * WHISPER_SEGMENT_SAMPLES])
    expected = torch.cat([first[WHISPER_SEGMENT_FRAMES - 4 :], second[:6]])
    torch.testing.assert_close(straddling.reshape(10, 5, 384), expected)

    most_cached = 0
    for start in range(751, 1625, 8):
        stream.windows(range(start, min(start + 8, 1625)))
        most_cached = max(most_cached, len(stream.cached_blocks))
    assert most_cached <= 2
    assert stream.cached_blocks == (2,)
    assert stream.blocks_computed == 3  # each segment encoded once on a forward sweep
