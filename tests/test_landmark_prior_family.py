"""The landmark-prior family behind the generator interface, with tiny scaffolded weights: its weights
folder, its five mel windows per frame (streamed equals offline), its reference choice, and the pipelines
(dub, avatars, streams) with the same guarantees as the other families: frame count, untouched upper face,
frames without a face passed through, avatar speech equal to a dub and to a stream."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings, StreamSettings
from lipsync.errors import WeightsError
from lipsync.io.audio import Audio, load_audio
from lipsync.io.video import FrameReader, ping_pong_index, probe_video
from lipsync.io.writer import VideoWriter
from lipsync.models.families import families_in, load_generator
from lipsync.models.generator import GenerationRequest
from lipsync.models.landmark_prior import check, scaffold
from lipsync.models.landmark_prior.generator import (
    FACE,
    REFERENCE_FACES,
    REFERENCE_LANDMARKS,
    TRACK_LANDMARKS,
    LandmarkPriorGenerator,
    LandmarkPriorStage,
)
from lipsync.models.landmark_prior.mel_windows import SequenceMelWindows
from lipsync.models.landmark_prior.references import neighbour_frames, reference_features, spread_frames
from lipsync.models.landmark_prior.weights import WeightsLayout, read_config
from lipsync.models.stabilized_sync.mel import MEL_WINDOW_STEPS, SILENCE_VALUE
from lipsync.models.stabilized_sync.mel_stream import MelWindows
from lipsync.pipeline.avatar import Avatar, AvatarStore, prepare_avatar
from lipsync.pipeline.dub import DubPipeline
from lipsync.pipeline.speak import SpeakPipeline
from lipsync.pipeline.stream import StreamSession
from lipsync.timing import StageTimes

from conftest import media, write_clip, write_wav

CLIP_FRAMES = 12
SPEECH_SECONDS = 0.6  # 15 frames at 25 fps: the 12-frame clip turns back at its end
REFERENCES = 3  # image references in the test folder (the paper's training N; 25 at inference costs 8×)
LIP_REFERENCES = 2
GENERATE = DubSettings(silence="generate", runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=4))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("landmark-prior-weights")
    scaffold(root, tiny=True)
    config = dataclasses.replace(read_config(root), references=REFERENCES, lip_references=LIP_REFERENCES)
    WeightsLayout(root).config.write_text(json.dumps(config.to_json()), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def generator(weights: Path) -> LandmarkPriorGenerator:
    loaded = load_generator(weights, device="cpu", dtype="fp32")  # the folder says which family it holds
    assert isinstance(loaded, LandmarkPriorGenerator)
    return loaded


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(media("talk_c.mp4"), tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_FRAMES)


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("speech") / "speech.wav", speech().samples)


@pytest.fixture(scope="module")
def avatar(generator: LandmarkPriorGenerator, clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    store = AvatarStore(tmp_path_factory.mktemp("avatars"))
    prepare_avatar(generator, store, "me", clip, GENERATE, show_bar=False)
    return store.load("me")


@pytest.fixture(scope="module")
def dubbed(generator: LandmarkPriorGenerator, clip: Path, speech_file: Path) -> list[np.ndarray]:
    return [f.image for f in DubPipeline(generator, GENERATE).frames(clip, speech_file)]


def speech(seconds: float = SPEECH_SECONDS) -> Audio:
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    samples = audio.samples[: round(seconds * AUDIO_SAMPLE_RATE)]
    return dataclasses.replace(audio, samples=samples, duration=Fraction(len(samples), AUDIO_SAMPLE_RATE))


# --- the weights folder --------------------------------------------------------------------------


def test_scaffolded_folder_is_recognised_checked_and_loaded(
    weights: Path, generator: LandmarkPriorGenerator
) -> None:
    assert families_in(weights) == ["landmark-prior"]
    report = check(weights)
    assert report.ok and report.untrained
    assert generator.untrained and generator.face_size == 128 and generator.family == "landmark-prior"
    assert generator.config.references == REFERENCES and generator.config.sequence_frames == 5
    networks = (generator.models.transformer, generator.models.alignment, generator.models.renderer)
    assert all(not p.requires_grad for n in networks for p in n.parameters())
    assert not any(n.training for n in networks)


def test_the_face_size_is_chosen_at_scaffold_and_read_at_load(tmp_path: Path) -> None:
    from lipsync.cli.main import main

    assert main(["weights", "scaffold", str(tmp_path / "w"), "--model", "landmark-prior", "--tiny",
                 "--face-size", "256"]) == 0  # fmt: skip
    loaded = load_generator(tmp_path / "w", device="cpu", dtype="fp32")
    assert loaded.face_size == 256 and loaded.frame_arrays()[FACE].shape == (256, 256, 3)
    with pytest.raises(WeightsError, match="no 100 px configuration"):
        scaffold(tmp_path / "other", tiny=True, face_size=100)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_a_damaged_file_is_named_with_the_fix(weights: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    layout = WeightsLayout(broken)
    layout.alignment.write_bytes(layout.alignment.read_bytes()[:1000])
    report = check(broken)
    assert not report.ok and [p.path.name for p in report.problems()] == ["alignment.safetensors"]
    assert "truncated" in report.format() and "scaffold" in report.format()
    layout.renderer.unlink()
    with pytest.raises(WeightsError) as caught:
        load_generator(broken, device="cpu", dtype="fp32")
    assert "renderer.safetensors" in caught.value.problem and "alignment.safetensors" in caught.value.problem
    assert "scaffold" in caught.value.fix

    config = json.loads(layout.config.read_text(encoding="utf-8"))
    layout.config.write_text(json.dumps({**config, "sequence_frames": 7}), encoding="utf-8")
    with pytest.raises(WeightsError, match="only T = 5 is built") as caught:
        load_generator(broken, model="landmark-prior", device="cpu", dtype="fp32")
    assert "config.json" in caught.value.problem and "scaffold" in caught.value.fix


def test_scaffold_refuses_to_overwrite_trained_weights(weights: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    shutil.copytree(weights, trained)
    (trained / "lipsync.json").unlink()
    with pytest.raises(WeightsError, match="not overwriting"):
        scaffold(trained, tiny=True)


# --- audio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_five_centred_windows_per_frame_stream_like_offline(fps: Fraction) -> None:
    samples = speech(1.0).samples
    frames = math.floor(len(samples) * fps / AUDIO_SAMPLE_RATE)
    offline = SequenceMelWindows.offline(samples, fps).windows(list(range(frames)))
    assert offline.shape == (frames, 5, 1, 80, 16)
    # Frame t reads IP_LAP's windows of t − 2 … t + 2: the project's windows of frames t − 4 … t.
    single = MelWindows.offline(samples, fps).windows(list(range(frames)))
    for t in range(4, frames):
        np.testing.assert_array_equal(offline[t], single[t - 4 : t + 1])
    # Before the audio starts, the columns are silence and the rest is the start of frame 0's window.
    missing = math.ceil(Fraction(80 * 2) / fps)  # frame −2's window starts this many columns early
    np.testing.assert_array_equal(offline[0, 2, ..., :missing], SILENCE_VALUE)
    np.testing.assert_array_equal(offline[0, 2, ..., missing:], single[0, ..., : MEL_WINDOW_STEPS - missing])

    stream = SequenceMelWindows(fps)
    rng = np.random.default_rng(1)
    got: list[np.ndarray] = []
    position = 0
    while position < len(samples):
        size = int(rng.integers(1, 3000))
        stream.append(samples[position : position + size])
        position += size
        ready = stream.ready_frames(len(got))
        # The latency of the stabilized-sync family's single window: 200·⌊80t/fps⌋ + 3400 samples.
        for t in range(len(got), ready):
            assert 200 * math.floor(Fraction(80 * t) / fps) + 3400 <= stream.samples_received
        got += list(stream.windows(list(range(len(got), ready))))
        stream.forget_before(len(got))
    stream.finish()
    got += list(stream.windows(list(range(len(got), stream.ready_frames(len(got))))))
    assert len(got) == frames
    np.testing.assert_array_equal(np.stack(got), offline)


# --- references ----------------------------------------------------------------------------------


def synthetic_track(frames: int, seed: int = 0) -> np.ndarray:
    """(frames, 68, 2): a face that turns its head and opens its mouth by random amounts."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 100, (68, 2))
    turns, openings = rng.uniform(-1, 1, frames), rng.uniform(0, 12, frames)
    points = np.repeat(base[None], frames, axis=0)
    points[:, :, 0] += turns[:, None] * base[None, :, 1] * 0.1  # a shear, as a turn would do
    lower = [*range(5, 12), *range(55, 60), *range(65, 68)]  # chin, lower lip
    points[:, lower, 1] += openings[:, None]
    return points + rng.normal(0, 0.2, points.shape)


def test_references_are_distinct_frames_spread_over_pose_and_mouth() -> None:
    points = synthetic_track(40)
    has_face = np.ones(40, dtype=bool)
    has_face[[5, 17]] = False
    picked = spread_frames(has_face, points, 8)
    assert len(picked) == len(set(picked)) == 8 and not {5, 17} & set(picked)
    features = reference_features(points)
    faces = np.flatnonzero(has_face)
    # The first is the frame nearest the mean; each next one is the farthest from those before it.
    assert picked[0] == faces[np.argmin(np.linalg.norm(features[faces] - features[faces].mean(0), axis=1))]
    for k in range(1, 8):
        gap = np.linalg.norm(features[faces][:, None] - features[picked[:k]][None], axis=2).min(axis=1)
        assert np.isclose(gap.max(), gap[np.flatnonzero(faces == picked[k])[0]])
    # So the picked frames are spread: no frame is farther from them than they are from each other.
    chosen = features[picked]
    separation = min(np.linalg.norm(a - b) for i, a in enumerate(chosen) for b in chosen[i + 1 :])
    cover = np.linalg.norm(features[faces][:, None] - chosen[None], axis=2).min(axis=1).max()
    assert cover <= separation + 1e-12
    # Fewer faces than asked: every face, once.
    assert sorted(spread_frames(has_face[:6], points[:6], 25)) == [0, 1, 2, 3, 4]


def test_sequence_neighbours_follow_the_forward_cycle() -> None:
    count = 7
    has_face = np.ones(count, dtype=bool)
    for source in range(2, count):  # the cycle's first pass, where each source is visited going forward
        assert neighbour_frames(source, has_face) == [
            ping_pong_index(source + d, count) for d in range(-2, 3)
        ]
    assert neighbour_frames(0, has_face) == [1, 0, 0, 1, 2]  # reflected at the start as the cycle would
    has_face[4] = False
    assert neighbour_frames(3, has_face) == [1, 2, 3, 3, 5]  # a neighbour without a face: the frame itself


def test_an_avatar_stores_the_crops_the_track_and_the_references(avatar: Avatar) -> None:
    assert avatar.family == "landmark-prior"
    assert avatar.frame_arrays[FACE].shape == (CLIP_FRAMES, 128, 128, 3)
    track = avatar.references[TRACK_LANDMARKS]
    assert track.shape == (CLIP_FRAMES, 2, 68) and np.isfinite(track).all()
    assert (track > -0.01).all() and (track < 1.01).all()  # normalised to each frame's crop
    # 15 landmark references are asked for, but the clip has 12 frames: each frame once.
    faces, landmarks = avatar.references[REFERENCE_FACES], avatar.references[REFERENCE_LANDMARKS]
    assert faces.shape == (CLIP_FRAMES, 128, 128, 3) and landmarks.shape == (CLIP_FRAMES, 2, 68)
    rows = [int(np.flatnonzero((avatar.frame_arrays[FACE] == face).all(axis=(1, 2, 3)))[0]) for face in faces]
    assert sorted(rows) == list(range(CLIP_FRAMES))
    np.testing.assert_allclose(landmarks, track[rows], atol=1e-5)


# --- the pipelines -------------------------------------------------------------------------------


def test_dub_changes_only_the_lower_face(
    generator: LandmarkPriorGenerator,
    clip: Path,
    speech_file: Path,
    avatar: Avatar,
    dubbed: list[np.ndarray],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.mp4"
    summary = DubPipeline(generator, GENERATE)(clip, speech_file, out, progress=False, max_frames=4)
    assert summary.frames == probe_video(out).frame_count == 4 and summary.untrained
    assert {"lip landmarks", "sketches", "alignment", "renderer"} <= {s.value for s in summary.times.seconds}
    assert len(dubbed) == math.floor(SPEECH_SECONDS * 25)
    for index in (0, CLIP_FRAMES):  # the first frame, and the first one after the cycle turns back
        source = ping_pong_index(index, CLIP_FRAMES)
        original, box = avatar.frame(source), avatar.box(source)
        assert box is not None
        inside = np.zeros(original.shape[:2], dtype=bool)
        inside[box.y1 : box.y2, box.x1 : box.x2] = avatar.mask(source) > 0
        changed = np.abs(dubbed[index].astype(int) - original.astype(int)).sum(axis=2) > 0
        assert changed.sum() > 500 and not (changed & ~inside).any()
        assert not changed[: box.y1 + box.height // 2].any()  # the eyes and above are the source's


def test_frames_without_a_face_are_passed_through(generator: LandmarkPriorGenerator, tmp_path: Path) -> None:
    info = probe_video(media("talk_c.mp4"))
    gappy = tmp_path / "gappy.mp4"
    blank = {2, 3}
    with FrameReader(info) as reader, VideoWriter(gappy, info.fps, info.width, info.height) as writer:
        for index, frame in enumerate(reader.frames(0, 6)):
            writer.write(np.zeros_like(frame) if index in blank else frame)
    speech_file = write_wav(tmp_path / "speech.wav", speech(0.24).samples)  # 6 frames
    frames = list(DubPipeline(generator, GENERATE).frames(gappy, speech_file))
    assert len(frames) == 6
    for index in blank:
        assert frames[index].image.max() == 0, f"frame {index} without a face was changed"


def _request(avatar: Avatar, rows: int = 2) -> GenerationRequest:
    mels = SequenceMelWindows.offline(speech().samples, avatar.fps).windows(list(range(rows)))
    sources = [s for s in range(avatar.frame_count) if avatar.has_face(s)][:rows]
    prepared = {FACE: avatar.frame_arrays[FACE][sources]}
    return GenerationRequest(prepared, dict(avatar.references), mels, sources)


def test_the_reference_set_is_encoded_once_and_kept_by_its_content(
    generator: LandmarkPriorGenerator, weights: Path, avatar: Avatar
) -> None:
    cache = generator.reference_cache
    cache.clear()
    misses = cache.misses
    request = _request(avatar)
    first = generator.generate(request, StageTimes())
    assert len(cache) == 1 and cache.misses == misses + 1
    times = StageTimes()
    assert np.array_equal(generator.generate(request, times), first)
    assert cache.misses == misses + 1, "the same references were encoded again"
    assert LandmarkPriorStage.REFERENCES in times.seconds

    other = dict(request.references)
    other[REFERENCE_FACES] = other[REFERENCE_FACES][::-1].copy()  # other faces first: another set
    generator.generate(dataclasses.replace(request, references=other), StageTimes())
    assert len(cache) == 2 and cache.misses == misses + 2

    keeps_nothing = LandmarkPriorGenerator(generator.models, weights, reference_cache_bytes=0)
    assert np.array_equal(keeps_nothing.generate(request, StageTimes()), first)
    assert len(keeps_nothing.reference_cache) == 0

    generator.warm_up(2)
    assert len(cache) == 0, "the warm-up's blank references were kept"
    with StreamSession(generator, avatar, StreamSettings(batch_size=4)):
        assert len(cache) == 1, "a session did not encode its avatar's references when it opened"


def test_an_avatar_speaks_like_dub_and_a_stream_like_both(
    generator: LandmarkPriorGenerator, avatar: Avatar, speech_file: Path, dubbed: list[np.ndarray]
) -> None:
    audio = load_audio(speech_file)
    spoken = list(SpeakPipeline(generator, GENERATE).frames(avatar, audio, StageTimes()))
    assert len(spoken) == len(dubbed)
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
