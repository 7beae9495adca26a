"""The generator interface: MuseTalk's frames did not change when it moved behind it, and a toy family of its
own runs through dubbing, avatars, a stream and a server session without any change to those."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings, ServerSettings, StreamSettings
from lipsync.io.audio import Audio, load_audio
from lipsync.io.video import probe_video
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import AvatarStore, load_fresh_avatar, prepare_avatar
from lipsync.pipeline.avatar_store import MANIFEST_NAME
from lipsync.pipeline.dub import DubPipeline
from lipsync.pipeline.speak import SpeakPipeline
from lipsync.pipeline.stream import StreamSession
from lipsync.server.protocol import decode_frame, decode_jpeg, float_to_pcm
from lipsync.timing import StageTimes

from conftest import media, write_clip, write_wav
from toy_family import ToyGenerator

# SHA-256 over the raw RGB bytes of every output frame, made by the code before MuseTalk moved behind the
# generator interface (tiny scaffolded weights, seed 0, fp32 on the CPU, 2 threads, talk_c.mp4 +
# speech_44k_stereo.wav), per torch CPU capability: float kernels of another CPU class round differently.
# Both were recorded by running that commit's pipelines with these inputs on a machine of the class.
BEFORE = {
    "AVX2": {
        "dub, 40 frames": "1ae735be9dafedb3f19eb2a3042dc0dc957f4c1c5f8074943a7aa9428eb8df76",
        "avatar speak, segment features": "29a640c93a656a2e7c4e8a7dc294de5cc7278a42eb0724066652132371d2f8e9",
        "avatar speak, sliding features": "155b713caf4eb601909c9c837daf914dd449c240bdc29c824b88a7834b475bf2",
        "stream, 40 random chunks": "155b713caf4eb601909c9c837daf914dd449c240bdc29c824b88a7834b475bf2",
    },
    "AVX512": {
        "dub, 40 frames": "dbc4bc9def23fce5cad14289abc7eba1d3d00b6e26c66665065afc1ee8b7a50e",
        "avatar speak, segment features": "665f58376cf75e94e4255eb81d4eab841124685bc464696bcc53e8dcf2c077a0",
        "avatar speak, sliding features": "b32e928bd31b2516518d5d0e8b2488150e4ae635e8ddd4f586ce23b0aba85ca3",
        "stream, 40 random chunks": "b32e928bd31b2516518d5d0e8b2488150e4ae635e8ddd4f586ce23b0aba85ca3",
    },
}
SPEECH_SAMPLES = 2 * AUDIO_SAMPLE_RATE + 5003  # 2.3 s: 57 frames, the last slot not full


def digest(frames: Iterable[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for frame in frames:
        sha.update(np.ascontiguousarray(frame).tobytes())
    return sha.hexdigest()


def short_speech() -> Audio:
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    samples = audio.samples[:SPEECH_SAMPLES]
    return dataclasses.replace(audio, samples=samples, duration=Fraction(len(samples), AUDIO_SAMPLE_RATE))


def chunked_stream(session: StreamSession, samples: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    position = 0
    for size in rng.integers(1, 6000, size=40):
        session.push_audio(samples[position : position + int(size)])
        position += int(size)
    session.push_audio(samples[position:])
    session.end_speech()
    return [frame.image for frame in session.frames_until_quiet()]


FP32 = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=8))


def test_musetalk_frames_equal_those_made_before_the_interface(
    tiny_generator: Generator, tiny_avatars: tuple[Path, str]
) -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    speech = short_speech()
    avatar = AvatarStore(tiny_avatars[0]).load(tiny_avatars[1])
    dub = DubPipeline(tiny_generator, FP32)
    segment = SpeakPipeline(tiny_generator, FP32)
    sliding = SpeakPipeline(tiny_generator, dataclasses.replace(FP32, audio_features="sliding"))
    frames = dub.frames(media("talk_c.mp4"), media("speech_44k_stereo.wav"), max_frames=40)
    with StreamSession(tiny_generator, avatar, StreamSettings(batch_size=4)) as session:
        streamed = chunked_stream(session, speech.samples)
    now = {
        "dub, 40 frames": digest(frame.image for frame in frames),
        "avatar speak, segment features": digest(segment.frames(avatar, speech, StageTimes())),
        "avatar speak, sliding features": digest(sliding.frames(avatar, speech, StageTimes())),
        "stream, 40 random chunks": digest(streamed),
    }
    assert len(streamed) == 57
    assert capability in BEFORE, (
        f"no digests recorded for CPU capability {capability} (recorded: {', '.join(BEFORE)}): run the "
        "commit before the generator interface with these inputs on this CPU and add its digests"
    )
    assert now == BEFORE[capability], f"frames changed (this CPU is {capability})"


def test_avatars_prepared_before_the_interface_still_load_and_stay_fresh(
    tiny_generator: Generator, tiny_avatars: tuple[Path, str], tmp_path: Path
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    shutil.copytree(tiny_avatars[0] / tiny_avatars[1], store.root / "old")
    manifest_path = store.root / "old" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    del manifest["generator"]  # what format version 1 wrote
    manifest["format_version"], manifest["name"] = 1, "old"
    manifest_path.write_text(json.dumps(manifest))

    avatar, rebuilt = load_fresh_avatar(tiny_generator, store, "old", show_bar=False)
    assert rebuilt is None
    assert avatar.family == "musetalk" and avatar.info.family == "musetalk"
    fresh = AvatarStore(tiny_avatars[0]).load(tiny_avatars[1])
    speech = short_speech()
    frames = SpeakPipeline(tiny_generator, FP32).frames(avatar, speech, StageTimes())
    expected = SpeakPipeline(tiny_generator, FP32).frames(fresh, speech, StageTimes())
    assert digest(frames) == digest(expected)


# --- a family of its own --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy() -> ToyGenerator:
    return ToyGenerator()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(media("talk_c.mp4"), tmp_path_factory.mktemp("toy") / "clip.mp4", 30)


@pytest.fixture(scope="module")
def toy_store(toy: ToyGenerator, clip: Path, tmp_path_factory: pytest.TempPathFactory) -> AvatarStore:
    store = AvatarStore(tmp_path_factory.mktemp("toy-avatars"))
    prepare_avatar(toy, store, "toy", clip, show_bar=False)
    return store


GENERATE = DubSettings(silence="generate", audio_features="sliding", runtime=RuntimeSettings(batch_size=4))


def test_a_toy_family_dubs_a_video(
    toy: ToyGenerator, toy_store: AvatarStore, clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "toy.mp4"
    summary = DubPipeline(toy, GENERATE)(clip, media("speech_44k_stereo.wav"), out, progress=False)
    duration = load_audio(media("speech_44k_stereo.wav")).duration
    assert summary.frames == probe_video(out).frame_count == math.floor(duration * 25)
    assert summary.untrained and summary.frames_generated == summary.frames_with_face == summary.frames
    # Only pixels inside the toy's blend mask (the lower face) changed, and some did.
    first = next(DubPipeline(toy, GENERATE).frames(clip, media("speech_44k_stereo.wav")))
    avatar = toy_store.load("toy")
    original, box = avatar.frame(0), avatar.box(0)
    assert box is not None
    inside = np.zeros(original.shape[:2], dtype=bool)
    inside[box.y1 : box.y2, box.x1 : box.x2] = avatar.mask(0) > 0
    changed = np.abs(first.image.astype(int) - original.astype(int)).sum(axis=2) > 0
    assert changed.sum() > 1000 and not (changed & ~inside).any()
    assert first.audio.dtype == np.int16 and len(first.audio) == AUDIO_SAMPLE_RATE // 25


def test_a_toy_avatar_stores_the_family_arrays_and_speaks_like_dub(
    toy: ToyGenerator, toy_store: AvatarStore, clip: Path
) -> None:
    avatar = toy_store.load("toy")
    assert avatar.family == "toy"
    assert avatar.frame_arrays["mouth"].shape == (30, 32, 64, 3)
    assert avatar.references["face"].shape == (64, 64, 3)
    assert (toy_store.path("toy") / "ref-face.npy").is_file()
    speech_file = toy_store.root / "speech.wav"
    write_wav(speech_file, short_speech().samples)
    speech = load_audio(speech_file)
    spoken = list(SpeakPipeline(toy, GENERATE).frames(avatar, speech, StageTimes()))
    dubbed = [f.image for f in DubPipeline(toy, GENERATE).frames(clip, speech_file)]
    assert len(spoken) == len(dubbed) == 57
    assert digest(spoken) == digest(dubbed)


def test_a_toy_stream_equals_the_offline_frames(toy: ToyGenerator, toy_store: AvatarStore) -> None:
    avatar = toy_store.load("toy")
    speech = short_speech()
    offline = list(SpeakPipeline(toy, GENERATE).frames(avatar, speech, StageTimes()))
    with StreamSession(toy, avatar, StreamSettings(batch_size=4)) as session:
        streamed = chunked_stream(session, speech.samples, seed=3)
    assert len(streamed) == 57 and digest(streamed) == digest(offline)


def test_an_avatar_of_another_family_is_rebuilt_with_the_reason(
    toy: ToyGenerator, tiny_generator: Generator, clip: Path, tmp_path: Path
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(tiny_generator, store, "me", clip, show_bar=False)
    avatar, reason = load_fresh_avatar(toy, store, "me", show_bar=False)
    assert reason == "it was prepared for the musetalk model family, not toy"
    assert avatar.family == "toy" and store.info("me").family == "toy"


def test_a_toy_server_session(toy: ToyGenerator, toy_store: AvatarStore) -> None:
    from fastapi.testclient import TestClient

    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    settings = ServerSettings()
    engine = ServerEngine(toy, toy_store, settings)
    samples = short_speech().samples[:AUDIO_SAMPLE_RATE]
    try:
        client = TestClient(create_app(engine, settings))
        with client.websocket_connect("/ws/toy") as ws:
            ready: dict[str, Any] = ws.receive_json()
            assert ready["type"] == "ready" and ready["untrained"] is True
            ws.send_bytes(float_to_pcm(samples))
            ws.send_text(json.dumps({"type": "end"}))
            spoken = []
            while len(spoken) < 25:
                frame = decode_frame(ws.receive_bytes())
                if frame.header.speech:
                    spoken.append(frame)
        assert [f.header.audio_bytes for f in spoken] == [2 * 640] * 25
        assert decode_jpeg(spoken[0].jpeg).shape == (590, 590, 3)
    finally:
        engine.close(wait=True)
