"""The generator interface: MuseTalk's frames did not change when it moved behind it, and a toy family of its
own runs through dubbing, avatars, a stream and a server session without any change to those."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lipsync.face.track as track
import lipsync.models.musetalk.audio_features as audio_features
from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings, ServerSettings, StreamSettings
from lipsync.face.crop import CropBox
from lipsync.io.audio import Audio, load_audio
from lipsync.io.video import probe_video
from lipsync.models.generator import Generator
from lipsync.models.musetalk.generator import MuseTalkGenerator
from lipsync.pipeline.avatar import Avatar, AvatarStore, load_fresh_avatar, prepare_avatar
from lipsync.pipeline.avatar_store import MANIFEST_NAME
from lipsync.pipeline.dub import DubPipeline
from lipsync.pipeline.speak import SpeakPipeline
from lipsync.pipeline.stream import StreamSession
from lipsync.server.protocol import decode_frame, decode_jpeg, float_to_pcm
from lipsync.timing import StageTimes

from conftest import media, write_clip, write_wav
from reference_frames import load_reference, save_reference
from toy_family import ToyGenerator

# A few frames of each MuseTalk pipeline (tiny scaffolded weights, seed 0, fp32 on the CPU, talk_c.mp4 +
# speech_44k_stereo.wav), cropped to where the model draws. Recorded with this file's record_reference() on
# an AVX-512 machine whose full frames, at that time, had the same SHA-256 digests as those made by the code
# from before MuseTalk moved behind the generator interface: so these are that code's frames.
REFERENCE = Path(__file__).parent / "data" / "musetalk-before-interface.npz"
REFERENCE_BOX = (272, 469, 166, 414)  # y1, y2, x1, x2: every pixel the tiny model changes in talk_c.mp4
STORED_FRAMES = {"dub": (0, 19, 39), "speak-segment": (10, 56), "speak-sliding": (10, 56)}
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


def dubbed_frames(generator: Generator) -> list[np.ndarray]:
    """40 frames (fewer would shorten the audio whisper attends over, and so change every frame)."""
    dub = DubPipeline(generator, FP32)
    return [f.image for f in dub.frames(media("talk_c.mp4"), media("speech_44k_stereo.wav"), max_frames=40)]


def musetalk_outputs(generator: Generator, avatar: Avatar) -> dict[str, list[np.ndarray]]:
    """Every frame of each pipeline the reference holds frames of, and of a stream in random chunks."""
    speech = short_speech()
    sliding = SpeakPipeline(generator, dataclasses.replace(FP32, audio_features="sliding"))
    with StreamSession(generator, avatar, StreamSettings(batch_size=4)) as session:
        streamed = chunked_stream(session, speech.samples)
    return {
        "dub": dubbed_frames(generator),
        "speak-segment": list(SpeakPipeline(generator, FP32).frames(avatar, speech, StageTimes())),
        "speak-sliding": list(sliding.frames(avatar, speech, StageTimes())),
        "stream": streamed,
    }


def record_reference(folder: Path) -> None:
    """Write REFERENCE anew from this code's frames (the fixtures' weights and avatar made in `folder`):
    only when the frames are meant to change. `python tests/test_generator_interface.py` runs it."""
    from lipsync.models.musetalk.weights import scaffold_weights

    scaffold_weights(folder / "weights", tiny=True)
    generator = MuseTalkGenerator.from_pretrained(
        folder / "weights", "v15", torch.device("cpu"), torch.float32
    )
    store = AvatarStore(folder / "avatars")
    prepare_avatar(generator, store, "talk_c", media("talk_c.mp4"), show_bar=False)
    outputs = musetalk_outputs(generator, store.load("talk_c"))
    save_reference(REFERENCE, REFERENCE_BOX, {k: (v, outputs[k]) for k, v in STORED_FRAMES.items()})


def test_musetalk_frames_equal_those_made_before_the_interface(
    tiny_generator: Generator, tiny_avatars: tuple[Path, str]
) -> None:
    avatar = AvatarStore(tiny_avatars[0]).load(tiny_avatars[1])
    outputs = musetalk_outputs(tiny_generator, avatar)
    # Same run, same machine: a stream equals the offline sliding render bit for bit.
    assert len(outputs["stream"]) == len(outputs["speak-sliding"]) == 57
    assert digest(outputs["stream"]) == digest(outputs["speak-sliding"])
    reference = load_reference(REFERENCE)
    assert reference.box == REFERENCE_BOX
    assert [reference.mismatch(name, outputs[name]) for name in STORED_FRAMES] == [None] * len(STORED_FRAMES)


def _moved_weight(generator: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(generator, MuseTalkGenerator)
    weight = generator.models.unet.conv_in.weight
    with torch.no_grad():
        weight[0, 0, 0, 0] += 0.01


def _crop_one_pixel_right(generator: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    box_of = track.crop_box_from_landmarks

    def moved(*args: Any, **kwargs: Any) -> CropBox | None:
        box = box_of(*args, **kwargs)
        return None if box is None else dataclasses.replace(box, x1=box.x1 + 1, x2=box.x2 + 1)

    monkeypatch.setattr(track, "crop_box_from_landmarks", moved)


def _audio_one_frame_later(generator: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    window_start = audio_features.audio_window_start
    whisper_frames_per_video_frame = 2  # at 25 fps

    def later(frame_index: int, fps: Fraction, audio_window: int = 5) -> int:
        return window_start(frame_index, fps, audio_window) + whisper_frames_per_video_frame

    monkeypatch.setattr(audio_features, "audio_window_start", later)


@pytest.mark.parametrize("change", [_moved_weight, _crop_one_pixel_right, _audio_one_frame_later])
def test_a_real_change_fails_the_comparison_with_the_reference(
    change: Callable[[Generator, pytest.MonkeyPatch], None],
    tiny_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tolerance allows rounding, not a change: these are the smallest changes a bug would make."""
    generator = MuseTalkGenerator.from_pretrained(tiny_weights, "v15", torch.device("cpu"), torch.float32)
    reference = load_reference(REFERENCE)
    assert reference.mismatch("dub", dubbed_frames(generator)) is None
    change(generator, monkeypatch)
    problem = reference.mismatch("dub", dubbed_frames(generator))
    assert problem is not None and problem.startswith("dub: frames [0, 19, 39] differ from the reference")


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
        with client.websocket_connect("ws://127.0.0.1/ws/toy") as ws:
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


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        record_reference(Path(folder))
    print(f"wrote {REFERENCE}")
