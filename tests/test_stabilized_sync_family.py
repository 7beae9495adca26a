"""The stabilized-sync family behind the generator interface, with tiny scaffolded weights: its weights
folder, its mel windows (streamed equals offline), and the pipelines MuseTalk runs in (dub, avatars,
streams), with the same guarantees: frame count, untouched upper face, frames without a face passed
through."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings, StreamSettings
from lipsync.errors import WeightsError
from lipsync.io.audio import Audio, load_audio
from lipsync.io.video import FrameReader, probe_video
from lipsync.io.writer import VideoWriter
from lipsync.models.families import families_in, load_generator
from lipsync.models.generator import FaceBatch
from lipsync.models.stabilized_sync import check, scaffold
from lipsync.models.stabilized_sync.generator import IDENTITY, StabilizedSyncGenerator
from lipsync.models.stabilized_sync.mel import MEL_WINDOW_STEPS, log_mel, mel_window
from lipsync.models.stabilized_sync.mel_stream import MelWindows
from lipsync.models.stabilized_sync.weights import WeightsLayout
from lipsync.pipeline.avatar import AvatarStore, prepare_avatar
from lipsync.pipeline.dub import DubPipeline
from lipsync.pipeline.speak import SpeakPipeline
from lipsync.pipeline.stream import StreamSession
from lipsync.timing import StageTimes

from conftest import media, write_clip, write_wav

CLIP_FRAMES = 12
SPEECH_SECONDS = 0.9  # 22 frames at 25 fps: the 12-frame clip cycles
GENERATE = DubSettings(silence="generate", runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=4))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stabilized-weights")
    scaffold(root, tiny=True)
    return root


@pytest.fixture(scope="module")
def generator(weights: Path) -> StabilizedSyncGenerator:
    loaded = load_generator(weights, device="cpu", dtype="fp32")  # the folder says which family it holds
    assert isinstance(loaded, StabilizedSyncGenerator)
    return loaded


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(media("talk_c.mp4"), tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_FRAMES)


def speech(seconds: float = SPEECH_SECONDS) -> Audio:
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    samples = audio.samples[: round(seconds * AUDIO_SAMPLE_RATE)]
    return dataclasses.replace(audio, samples=samples, duration=Fraction(len(samples), AUDIO_SAMPLE_RATE))


# --- the weights folder --------------------------------------------------------------------------


def test_scaffolded_folder_is_recognised_checked_and_loaded(
    weights: Path, generator: StabilizedSyncGenerator
) -> None:
    assert families_in(weights) == ["stabilized-sync"]
    report = check(weights)
    assert report.ok and report.untrained
    assert generator.untrained and generator.face_size == 96 and generator.family == "stabilized-sync"
    assert generator.models.silent_generator is not None  # G_S closes the references by default
    assert all(not p.requires_grad for p in generator.models.generator.parameters())


def test_a_damaged_file_is_named_with_the_fix(weights: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    layout = WeightsLayout(broken)
    layout.silent_generator.write_bytes(layout.silent_generator.read_bytes()[:1000])
    report = check(broken)
    assert not report.ok and [p.path.name for p in report.problems()] == ["silent_generator.safetensors"]
    layout.generator.unlink()
    with pytest.raises(WeightsError) as caught:
        load_generator(broken, device="cpu", dtype="fp32")
    assert "generator.safetensors" in caught.value.problem and "scaffold" in caught.value.fix


def test_scaffold_refuses_to_overwrite_trained_weights(weights: Path, tmp_path: Path) -> None:
    import shutil

    trained = tmp_path / "trained"
    shutil.copytree(weights, trained)
    (trained / "lipsync.json").unlink()
    with pytest.raises(WeightsError, match="not overwriting"):
        scaffold(trained, tiny=True)


# --- mel windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_mel_windows_equal_the_whole_file_mel_and_stream_the_same(fps: Fraction) -> None:
    samples = speech(1.3).samples
    whole = log_mel(samples)
    frames = math.floor(len(samples) * fps / AUDIO_SAMPLE_RATE)
    offline = MelWindows.offline(samples, fps).windows(list(range(frames)))
    expected = np.stack([mel_window(whole, t, fps) for t in range(frames)])
    np.testing.assert_allclose(offline, expected, atol=1e-5)

    stream = MelWindows(fps)
    rng = np.random.default_rng(1)
    got: list[np.ndarray] = []
    position = 0
    while position < len(samples):
        size = int(rng.integers(1, 3000))
        stream.append(samples[position : position + size])
        position += size
        ready = stream.ready_frames(len(got))
        # A frame is ready once 0.2 s of audio from its start (plus half an FFT) has arrived, not before.
        for t in range(len(got), ready):
            start = math.floor(Fraction(80 * t) / fps)
            assert (start + MEL_WINDOW_STEPS - 1) * 200 + 400 <= stream.samples_received
        got += list(stream.windows(list(range(len(got), ready))))
        stream.forget_before(len(got))
    stream.finish()
    got += list(stream.windows(list(range(len(got), stream.ready_frames(len(got))))))
    assert len(got) == frames
    np.testing.assert_array_equal(np.stack(got), offline)


# --- the pipelines -------------------------------------------------------------------------------


def test_dub_changes_only_the_lower_face_and_follows_the_audio(
    generator: StabilizedSyncGenerator, clip: Path, tmp_path: Path
) -> None:
    speech_file = tmp_path / "speech.wav"
    write_wav(speech_file, speech().samples)
    out = tmp_path / "out.mp4"
    summary = DubPipeline(generator, GENERATE)(clip, speech_file, out, progress=False)
    assert summary.frames == probe_video(out).frame_count == math.floor(SPEECH_SECONDS * 25)
    assert summary.untrained and summary.frames_generated == summary.frames
    assert {"silent lips", "audio encoder", "generator"} <= {s.value for s in summary.times.seconds}

    first = next(DubPipeline(generator, GENERATE).frames(clip, speech_file))
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(generator, store, "me", clip, GENERATE, show_bar=False)
    avatar = store.load("me")
    original, box = avatar.frame(0), avatar.box(0)
    assert box is not None
    inside = np.zeros(original.shape[:2], dtype=bool)
    inside[box.y1 : box.y2, box.x1 : box.x2] = avatar.mask(0) > 0
    changed = np.abs(first.image.astype(int) - original.astype(int)).sum(axis=2) > 0
    assert changed.sum() > 500 and not (changed & ~inside).any()
    # The mask starts below the middle of the box: the eyes and everything above are the source's.
    assert not changed[: box.y1 + box.height // 2].any()


def test_frames_without_a_face_are_passed_through(generator: StabilizedSyncGenerator, tmp_path: Path) -> None:
    info = probe_video(media("talk_c.mp4"))
    gappy = tmp_path / "gappy.mp4"
    blank = {3, 4}
    with FrameReader(info) as reader, VideoWriter(gappy, info.fps, info.width, info.height) as writer:
        for index, frame in enumerate(reader.frames(0, 8)):
            writer.write(np.zeros_like(frame) if index in blank else frame)
    speech_file = tmp_path / "speech.wav"
    write_wav(speech_file, speech(0.32).samples)  # 8 frames
    frames = list(DubPipeline(generator, GENERATE).frames(gappy, speech_file))
    assert len(frames) == 8
    for index in blank:
        assert frames[index].image.max() == 0, f"frame {index} without a face was changed"


def test_an_avatar_speaks_like_dub_and_a_stream_like_both(
    generator: StabilizedSyncGenerator, clip: Path, tmp_path: Path
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(generator, store, "me", clip, GENERATE, show_bar=False)
    avatar = store.load("me")
    assert avatar.family == "stabilized-sync"
    identity = avatar.frame_arrays[IDENTITY]
    assert identity.shape == (CLIP_FRAMES, 96, 96, 3) and identity.dtype == np.uint8
    speech_file = write_wav(tmp_path / "speech.wav", speech().samples)
    audio = load_audio(speech_file)
    spoken = [f for f in SpeakPipeline(generator, GENERATE).frames(avatar, audio, StageTimes())]
    dubbed = [f.image for f in DubPipeline(generator, GENERATE).frames(clip, speech_file)]
    assert len(spoken) == len(dubbed) == math.floor(SPEECH_SECONDS * 25)
    assert all(np.array_equal(a, b) for a, b in zip(spoken, dubbed, strict=True))

    with StreamSession(generator, avatar, StreamSettings(batch_size=4)) as session:
        rng = np.random.default_rng(0)
        position = 0
        while position < len(audio.samples):
            size = int(rng.integers(100, 4000))
            session.push_audio(audio.samples[position : position + size])
            position += size
        session.end_speech()
        streamed = [frame.image for frame in session.frames_until_quiet()]
    assert len(streamed) == len(spoken)
    assert all(np.array_equal(a, b) for a, b in zip(streamed, spoken, strict=True))


def test_without_g_s_the_references_are_the_crops(weights: Path, clip: Path, tmp_path: Path) -> None:
    plain = StabilizedSyncGenerator.from_pretrained(weights, torch.device("cpu"), torch.float32, False)
    assert plain.models.silent_generator is None
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(plain, store, "plain", clip, GENERATE, show_bar=False)
    avatar = store.load("plain")
    assert np.array_equal(avatar.frame_arrays[IDENTITY], avatar.frame_arrays["face"])


def test_the_face_size_configuration_is_chosen_at_scaffold_and_read_at_load(tmp_path: Path) -> None:
    from lipsync.cli.main import main

    assert main(["weights", "scaffold", str(tmp_path / "w"), "--model", "stabilized-sync", "--tiny",
                 "--face-size", "128"]) == 0  # fmt: skip
    loaded = load_generator(tmp_path / "w", device="cpu", dtype="fp32")
    assert loaded.face_size == 128 and loaded.frame_arrays()[IDENTITY].shape == (128, 128, 3)
    with pytest.raises(WeightsError, match="no 100 px configuration"):
        scaffold(tmp_path / "other", tiny=True, face_size=100)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_silent_lips_shows_the_crops_above_their_g_s_references(
    weights: Path, generator: StabilizedSyncGenerator, clip: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    import cv2

    from lipsync.cli.main import main

    out = tmp_path / "strip.png"
    options = ["--weights", str(weights), "--device", "cpu", "--dtype", "fp32"]
    assert main(["silent-lips", str(clip), "-o", str(out), "--frames", "4", *options]) == 0
    strip = cv2.imread(str(out))[..., ::-1]
    assert strip.shape == (2 * 96, 4 * 96, 3)
    # The bottom row is G_S's reference of each crop of the top row (what G_L would be given).
    crops = np.stack(np.split(strip[:96], 4, axis=1))
    batch = FaceBatch(crops, np.zeros((4, 68, 2), np.float32), [0, 1, 2, 3])
    expected = np.concatenate(list(generator.prepare(batch, StageTimes())[IDENTITY]), axis=1)
    assert np.array_equal(strip[96:, 96:], expected[:, 96:])  # the first crop carries the UNTRAINED label
    refused = main(["silent-lips", str(clip), "-o", str(tmp_path / "x.png"), "--weights", str(tiny_weights)])
    assert refused == 2 and not (tmp_path / "x.png").exists()  # MuseTalk makes no silent-lip references
