"""Load the audio track of any file PyAV reads as mono float32 at a fixed sample rate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE, MAX_AUDIO_SECONDS, PCM16_FULL_SCALE
from lipsync.errors import InputError
from lipsync.io.files import require_file

AUDIO_FIX = "Give a file with an audio track (e.g. .wav, .mp3, .m4a, or a video with sound)."
LENGTH_FIX = f"Cut it into parts of at most {MAX_AUDIO_SECONDS} s (e.g. with ffmpeg -t) and dub each."
MICROSECONDS = 1_000_000  # the unit of a container's duration
_UNSIGNED_8BIT_ZERO = 128


@dataclass(frozen=True)
class Audio:
    """Mono samples at `sample_rate`, plus what the source was."""

    samples: np.ndarray  # float32, shape (n,)
    sample_rate: int
    duration: Fraction  # source sample count / source rate
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return float(self.duration)


def load_audio(path: Path, sample_rate: int = AUDIO_SAMPLE_RATE) -> Audio:
    """Decode the first audio track, average its channels to mono and resample to `sample_rate`.
    A track longer than MAX_AUDIO_SECONDS is refused: from its header when that says so, else once
    that much is decoded."""
    path = Path(path)
    require_file(path, "an audio file", AUDIO_FIX)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(f"{path} has no audio track.", AUDIO_FIX)
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate
            source_channels = stream.codec_context.channels
            if container.duration is not None and container.duration > MAX_AUDIO_SECONDS * MICROSECONDS:
                raise _too_long(path, f"its header says {container.duration / MICROSECONDS:.0f} s")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            source_samples = 0
            pieces: list[np.ndarray] = []
            for frame in container.decode(stream):
                source_samples += frame.samples
                if source_samples > MAX_AUDIO_SECONDS * (source_rate or frame.sample_rate):
                    raise _too_long(path, f"it has more than {MAX_AUDIO_SECONDS} s")
                pieces.extend(out.to_ndarray()[0] for out in resampler.resample(_mono_frame(frame)))
            pieces.extend(out.to_ndarray()[0] for out in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} is not a readable audio file ({exc}).", AUDIO_FIX) from exc
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if source_samples == 0 or samples.size == 0 or not source_rate:
        raise InputError(f"{path} has an empty audio track.", AUDIO_FIX)
    return Audio(
        samples=samples,
        sample_rate=sample_rate,
        duration=Fraction(source_samples, source_rate),
        source_sample_rate=source_rate,
        source_channels=source_channels,
    )


def _too_long(path: Path, why: str) -> InputError:
    return InputError(f"{path} is too long for lipsync: {why} (at most {MAX_AUDIO_SECONDS} s).", LENGTH_FIX)


def _mono_frame(frame: av.AudioFrame) -> av.AudioFrame:
    mono = av.AudioFrame.from_ndarray(_mono_samples(frame)[np.newaxis], format="flt", layout="mono")
    mono.sample_rate = frame.sample_rate
    return mono


def _mono_samples(frame: av.AudioFrame) -> np.ndarray:
    """The frame's samples as float32 in [-1, 1], averaged over channels."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    # Packed formats come as one interleaved row; planar ones as one row per channel.
    per_channel = data.reshape(-1, channels).T if not frame.format.is_planar else data
    return _to_float(per_channel).mean(axis=0, dtype=np.float32)


def _to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - _UNSIGNED_8BIT_ZERO) / _UNSIGNED_8BIT_ZERO
    full_scale = float(2 ** (8 * data.dtype.itemsize - 1))
    return (data.astype(np.float64) / full_scale).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16, rounded and clipped (1.0 -> 32767)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * PCM16_FULL_SCALE)
    limits = np.iinfo(np.int16)
    return np.clip(scaled, limits.min, limits.max).astype(np.int16)


def from_pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 samples as float32 (32767 -> 1.0): the inverse of to_pcm16 on every int16 value."""
    return np.asarray(samples).astype(np.float32) / np.float32(PCM16_FULL_SCALE)


def frame_count_for_audio(duration: Fraction, fps: Fraction) -> int:
    """Video frames that fit in the audio: floor(duration * fps), exact."""
    return math.floor(Fraction(duration) * Fraction(fps))


def frame_start_sample(frame: int, fps: Fraction, sample_rate: int = AUDIO_SAMPLE_RATE) -> int:
    """The first sample video frame `frame` shows: floor(frame * rate / fps), exact (no drift)."""
    return math.floor(Fraction(frame * sample_rate) / Fraction(fps))
