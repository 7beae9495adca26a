"""Live sessions: streamed frames equal offline frames, counts follow the samples, idle and drop rules."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings, StreamSettings
from lipsync.io.audio import Audio, load_audio
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import Avatar, AvatarStore
from lipsync.pipeline.speak import SpeakPipeline
from lipsync.pipeline.stream import StreamFrame, StreamSession, _Turn
from lipsync.timing import StageTimes

from conftest import media

BATCH = 4
SETTINGS = StreamSettings(batch_size=BATCH)


@pytest.fixture(scope="module")
def avatar(tiny_generator: Generator, tiny_avatars: tuple[Path, str]) -> Avatar:
    return AvatarStore(tiny_avatars[0]).load(tiny_avatars[1])


@pytest.fixture(scope="module")
def speech() -> Audio:
    """2.3 s of real speech (an odd length: the last frame's slot is not full)."""
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    samples = audio.samples[: 2 * AUDIO_SAMPLE_RATE + 5003]
    return dataclasses.replace(audio, samples=samples, duration=Fraction(len(samples), AUDIO_SAMPLE_RATE))


@pytest.fixture(scope="module")
def offline_frames(tiny_generator: Generator, avatar: Avatar, speech: Audio) -> list[np.ndarray]:
    settings = DubSettings(
        silence="generate", audio_features="sliding", runtime=RuntimeSettings(batch_size=BATCH)
    )
    return list(SpeakPipeline(tiny_generator, settings).frames(avatar, speech, StageTimes()))


def stream_turn(session: StreamSession, samples: np.ndarray, chunk_sizes: list[int]) -> list[StreamFrame]:
    position = 0
    for size in chunk_sizes:
        session.push_audio(samples[position : position + size])
        position += size
    session.push_audio(samples[position:])
    session.end_speech()
    return list(session.frames_until_quiet())


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_frames_equal_offline_frames_whatever_the_chunks(
    tiny_generator: Generator, avatar: Avatar, speech: Audio, offline_frames: list[np.ndarray], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    sizes = [int(n) for n in rng.integers(1, 6000, size=40)]  # from one sample to ~0.4 s
    with StreamSession(tiny_generator, avatar, SETTINGS) as session:
        frames = stream_turn(session, speech.samples, sizes)
    expected = math.floor(len(speech.samples) * avatar.fps / AUDIO_SAMPLE_RATE)
    assert len(frames) == len(offline_frames) == expected == 57
    for frame, offline in zip(frames, offline_frames, strict=True):
        assert np.array_equal(frame.image, offline), f"frame {frame.index} differs from the offline frame"
    assert not np.array_equal(frames[10].image, avatar.frame(10))  # the mouth really was generated


def test_frames_carry_their_own_audio_and_time(
    tiny_generator: Generator, avatar: Avatar, speech: Audio
) -> None:
    with StreamSession(tiny_generator, avatar, SETTINGS) as session:
        frames = stream_turn(session, speech.samples, [AUDIO_SAMPLE_RATE])
    pcm = np.concatenate([f.audio for f in frames])
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.time == pytest.approx(f.index / 25) and f.speech for f in frames)
    assert all(len(f.audio) == AUDIO_SAMPLE_RATE // 25 for f in frames)
    assert len(pcm) == len(frames) * 640  # the tail shorter than a frame is dropped, as offline
    expected = np.clip(np.rint(speech.samples[: len(pcm)] * 32767), -32768, 32767).astype(np.int16)
    assert np.array_equal(pcm, expected)


def test_idle_frames_fill_the_gaps_and_the_cycle_continues(
    tiny_generator: Generator, avatar: Avatar, speech: Audio
) -> None:
    short = speech.samples[: AUDIO_SAMPLE_RATE // 2]  # 12 frames
    with StreamSession(tiny_generator, avatar, SETTINGS) as session:
        session.add_idle(6)
        idle = [session.get(timeout=10) for _ in range(6)]
        first_turn = stream_turn(session, short, [1000, 3000])
        session.add_idle(3)
        between = [session.get(timeout=10) for _ in range(3)]
        second_turn = stream_turn(session, short, [7999])
    assert all(f is not None and not f.speech and len(f.audio) == 0 for f in idle + between)
    assert np.array_equal(idle[0].image, avatar.frame(0))  # type: ignore[union-attr]
    indices = [f.index for f in idle + first_turn + between + second_turn]  # type: ignore[union-attr]
    assert indices == list(range(6 + 12 + 3 + 12))
    assert len(first_turn) == len(second_turn) == 12
    # Frame 6 (the first speech frame) shows source frame 6: the cycle goes on, no jump back to 0.
    assert avatar.source_index(first_turn[0].index) == 6


def test_frame_count_follows_the_samples_exactly_over_a_long_session() -> None:
    # 29.97 and 22.13 fps never divide 16 kHz: per-frame audio varies, but nothing drifts in 10 hours.
    for fps in (Fraction(30000, 1001), Fraction(1350, 61), Fraction(25)):
        turn = _Turn.__new__(_Turn)
        turn.fps = fps
        hours = 10 * 3600 * AUDIO_SAMPLE_RATE
        frames = math.floor(Fraction(hours) * fps / AUDIO_SAMPLE_RATE)
        assert turn.sample_bounds(frames) <= hours < turn.sample_bounds(frames + 1)
        sizes = {turn.sample_bounds(i + 1) - turn.sample_bounds(i) for i in range(1000)}
        assert sizes <= {math.floor(AUDIO_SAMPLE_RATE / fps), math.ceil(AUDIO_SAMPLE_RATE / fps)}


def test_a_slow_consumer_drops_frames_instead_of_growing(tiny_generator: Generator, avatar: Avatar) -> None:
    settings = StreamSettings(batch_size=BATCH, max_buffered_frames=5, drop_when_full=True)
    with StreamSession(tiny_generator, avatar, settings) as session:
        session.add_idle(40)
        deadline = time.monotonic() + 20
        while session.dropped < 35 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.dropped == 35
        assert session.buffered_frames == 5
        assert session.get(timeout=1).index == 35  # type: ignore[union-attr]  # the newest frames are kept


def test_closing_frees_the_stage_threads(tiny_generator: Generator, avatar: Avatar, speech: Audio) -> None:
    def stage_threads() -> int:
        return sum(t.name.startswith("lipsync-stream") for t in threading.enumerate())

    before = stage_threads()
    session = StreamSession(tiny_generator, avatar, SETTINGS)
    session.push_audio(speech.samples)  # closed mid-turn, with work in every stage
    time.sleep(0.5)
    assert stage_threads() == before + 3
    session.close()
    session.close()
    assert stage_threads() == before


def test_bad_audio_is_refused(tiny_generator: Generator, avatar: Avatar) -> None:
    with StreamSession(tiny_generator, avatar, SETTINGS) as session, pytest.raises(ValueError, match="mono"):
        session.push_audio(np.zeros((2, 100), np.float32))
