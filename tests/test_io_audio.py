"""Loading audio as mono float32 at 16 kHz, from wav files of any rate and depth and from videos."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.errors import InputError
from lipsync.io.audio import load_audio

from conftest import media

MILLISECOND = 1e-3

# name: (source rate, channels, seconds from the file header)
SOURCES = {
    "speech_44k_stereo.wav": (44_100, 2, 221_184 / 44_100),
    "speech_16k_stereo.wav": (16_000, 2, 8.0),
    "speech_48k_s32.wav": (48_000, 2, 269_069 / 48_000),
    "talk_a_22fps.mp4": (44_100, 2, 269_319 / 44_100),
    "talk_d_mpeg4.mp4": (16_000, 2, 8.0),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_load_audio(name: str) -> None:
    rate, channels, seconds = SOURCES[name]
    audio = load_audio(media(name))
    assert audio.sample_rate == AUDIO_SAMPLE_RATE
    assert (audio.source_sample_rate, audio.source_channels) == (rate, channels)
    assert isinstance(audio.duration, Fraction)
    assert audio.duration_s == pytest.approx(seconds, abs=MILLISECOND)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    expected_samples = seconds * AUDIO_SAMPLE_RATE
    assert len(audio.samples) == pytest.approx(expected_samples, abs=AUDIO_SAMPLE_RATE * MILLISECOND)
    assert np.abs(audio.samples).max() <= 1.0
    assert np.abs(audio.samples).max() > 0.05  # speech, not silence


def test_stereo_is_the_mean_of_channels() -> None:
    path = media("speech_16k_stereo.wav")
    with av.open(str(path)) as container:
        interleaved = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    expected = interleaved.reshape(-1, 2).astype(np.float32).mean(axis=1) / 2**15
    audio = load_audio(path)
    np.testing.assert_allclose(audio.samples, expected, atol=1e-6)


def test_other_output_rate() -> None:
    audio = load_audio(media("speech_44k_stereo.wav"), sample_rate=8_000)
    assert audio.sample_rate == 8_000
    assert len(audio.samples) == pytest.approx(audio.duration_s * 8_000, abs=8)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[np.newaxis], format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_mono_wav_round_trip(tmp_path: Path) -> None:
    tone = (np.sin(np.arange(16_000) / 5) * 2**14).astype(np.int16)
    write_wav(tmp_path / "tone.wav", tone, 16_000)
    audio = load_audio(tmp_path / "tone.wav")
    assert audio.duration == 1 and audio.source_channels == 1
    np.testing.assert_allclose(audio.samples, tone / 2**15, atol=1e-6)


def test_bad_inputs_raise_input_error(tmp_path: Path) -> None:
    text = tmp_path / "words.wav"
    text.write_text("no sound here\n" * 20)
    empty_wav = tmp_path / "silent.wav"
    with wave.open(str(empty_wav), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16_000)
    video_only = tmp_path / "mute.mp4"
    with av.open(str(video_only), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    cases = [
        (tmp_path / "missing.wav", "does not exist"),
        (tmp_path, "folder"),
        (text, "not a readable audio file"),
        (empty_wav, "empty"),
        (video_only, "has no audio track"),
    ]
    for path, words in cases:
        with pytest.raises(InputError) as caught:
            load_audio(path)
        assert words in caught.value.problem
        assert path.name in caught.value.problem
        assert caught.value.fix
