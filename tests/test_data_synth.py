"""`lipsync data synth`: the controlled-sync corpus, on real faces from the shared media."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.cli.main import main
from lipsync.config import AUDIO_SAMPLE_RATE, PCM16_FULL_SCALE
from lipsync.errors import InputError
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.io.audio import load_audio
from lipsync.io.video import FrameReader, probe_video
from lipsync.train.data.synth import MANIFEST, OPENING_SUFFIX, synth_corpus
from lipsync.train.data.synth_mouth import frame_openings, inner_lip_gap, jitter_path, mouth_width
from lipsync.train.data.synth_speech import espeak_utterances

from conftest import media

MINUTES = 0.15  # 9 s of speech: two or three sentences, at least one per person
SEED = 7
MIN_R = 0.9


def _build(out: Path, seed: int = SEED) -> None:
    synth_corpus(out, [media("talk_b.mp4"), media("talk_c.mp4")], minutes=MINUTES, seed=seed, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    _build(out)
    return out


def _clips(corpus: Path) -> list[Path]:
    return sorted(corpus.glob("*/*.mp4"))


def _frames(video: Path) -> list[np.ndarray]:
    with FrameReader(probe_video(video)) as reader:
        return list(reader.frames())


def _measure(video: Path, detector: FaceMeshDetector) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the inner-lip gap and the mouth width our landmarks find (px)."""
    gaps, widths = [], []
    for frame in _frames(video):
        faces = detector.detect(frame)
        assert len(faces) == 1, f"{video}: {len(faces)} faces"
        gaps.append(inner_lip_gap(faces[0].points))
        widths.append(mouth_width(faces[0].points))
    return np.array(gaps), np.array(widths)


@pytest.fixture(scope="module")
def measured(corpus: Path) -> dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each clip: its opening.npy, and the lip gap and mouth width measured on its frames."""
    with FaceMeshDetector(max_faces=2, video_mode=False) as detector:
        return {
            video: (np.load(video.with_suffix(OPENING_SUFFIX)), *_measure(video, detector))
            for video in _clips(corpus)
        }


def test_layout_is_one_folder_per_person_at_25_fps(corpus: Path) -> None:
    manifest = json.loads((corpus / MANIFEST).read_text())
    assert "not training data for real use" in manifest["note"]
    assert sorted(p.name for p in corpus.iterdir() if p.is_dir()) == ["talk_b", "talk_c"]
    assert [clip["video"] for clip in manifest["clips"]] == sorted(
        p.relative_to(corpus).as_posix() for p in _clips(corpus)
    )
    total = 0.0
    for video in _clips(corpus):
        info = probe_video(video)
        opening = np.load(video.with_suffix(OPENING_SUFFIX))
        assert info.fps == 25 and info.frame_count == opening.size
        assert opening.dtype == np.float32 and opening.min() >= 0 and opening.max() <= 1
        total += opening.size / 25
    assert total <= MINUTES * 60


def test_ground_truth_is_the_loudness_of_each_frames_own_audio(corpus: Path) -> None:
    for video in _clips(corpus):
        opening = np.load(video.with_suffix(OPENING_SUFFIX))
        from_mp4 = frame_openings(load_audio(video, AUDIO_SAMPLE_RATE).samples)[: opening.size]
        assert from_mp4.size == opening.size
        assert np.corrcoef(from_mp4, opening)[0, 1] > 0.99  # through AAC and back
        assert np.max(np.abs(from_mp4 - opening)) < 0.1


def test_lip_gap_measured_by_our_landmarks_follows_the_ground_truth(
    measured: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    for person in ("talk_b", "talk_c"):
        clips = [value for video, value in measured.items() if video.parent.name == person]
        assert clips, f"no clip of {person}"
        opening = np.concatenate([clip[0] for clip in clips])
        gap = np.concatenate([clip[1] for clip in clips])
        assert opening.max() > 0.6 and opening.min() == 0  # the speech spans closed to wide open
        r = np.corrcoef(gap, opening)[0, 1]
        assert r >= MIN_R, f"{person}: r = {r:.3f}"


def test_silence_closes_the_mouth(measured: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    assert np.array_equal(frame_openings(np.zeros(640 * 10, np.float32)), np.zeros(10, np.float32))
    for video, (opening, gap, width) in measured.items():
        silent = opening == 0
        # eSpeak sentences start with 0.15-0.5 s of silence: the first frames are exactly closed.
        assert silent[:2].all(), video
        assert np.all(gap[silent] < 0.05 * width[silent]), video
        assert np.max(gap[silent]) < 0.2 * np.max(gap), video


def test_only_the_lower_face_moves_against_the_head(
    measured: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    video = next(iter(measured))
    opening = measured[video][0]
    closed, wide = int(np.argmin(opening)), int(np.argmax(opening))
    frames = _frames(video)
    with FaceMeshDetector(max_faces=1, video_mode=False) as detector:
        a, b = (detector.detect(frames[k])[0].points for k in (closed, wide))
    eyes = slice(36, 48)
    # The jitter moves the head by a few px at most; the upper face keeps its shape, the lips part.
    assert np.max(np.abs(a[eyes] - b[eyes])) < 6
    assert np.linalg.norm(b[8] - a[8]) > 4  # the chin drops
    assert inner_lip_gap(b) > inner_lip_gap(a) + 8
    jitter = jitter_path(np.random.default_rng(0), 250)
    assert np.all(np.abs(jitter) <= [3, 3, 0.02]) and np.all(np.ptp(jitter, axis=0) > [1, 1, 0.005])
    assert np.max(np.abs(np.diff(jitter[:, :2], axis=0))) < 0.5  # smooth: under 0.5 px a frame


def test_same_seed_same_clips(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _build(again)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        if name.suffix != ".mp4":
            assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
        else:
            first, second = _frames(corpus / name), _frames(again / name)
            assert len(first) == len(second), name
            assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True)), name
    sentences = [[u.source for u in espeak_utterances(np.random.default_rng(seed), 10)] for seed in (1, 2)]
    assert sentences[0] != sentences[1]


def _write_wav(path: Path, seconds: float) -> None:
    """Two bursts of a tone between silences."""
    t = np.arange(int(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * ((t % 0.8) > 0.4)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(AUDIO_SAMPLE_RATE)
        file.writeframes(np.round(tone * PCM16_FULL_SCALE).astype("<i2").tobytes())


def test_photo_with_user_speech_and_force(tmp_path: Path) -> None:
    photo = tmp_path / "anna.png"
    cv2.imwrite(str(photo), cv2.cvtColor(_frames(media("talk_c.mp4"))[0], cv2.COLOR_RGB2BGR))
    speech = tmp_path / "speech"
    speech.mkdir()
    _write_wav(speech / "a.wav", 1.6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier corpus")
    with pytest.raises(InputError, match="not empty"):
        synth_corpus(out, [photo], speech, progress=False)
    assert main(["data", "synth", str(out), "--faces", str(photo), "--speech", str(speech), "-q"]) == 2
    report = synth_corpus(out, [photo], speech, force=True, progress=False)
    assert not (out / "old.txt").exists()
    opening = np.load(out / "anna" / f"clip_0000{OPENING_SUFFIX}")
    assert report.seconds == pytest.approx(1.6) and opening.size == 40
    assert np.array_equal(opening, frame_openings(load_audio(speech / "a.wav").samples))


def test_bad_inputs_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(InputError, match="No face was found") as error:
        synth_corpus(tmp_path / "a", [blank], progress=False)
    assert error.value.fix
    empty = tmp_path / "speech"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    code = main(["data", "synth", str(tmp_path / "b"), "--faces", str(blank), "--speech", str(empty), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no audio files" in err and "fix:" in err
    with pytest.raises(InputError, match="share the person folder"):
        synth_corpus(tmp_path / "c", [blank, tmp_path / "x" / "blank.jpg"], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.png", "speech"]  # nothing left behind
