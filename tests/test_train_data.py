"""`lipsync data prepare`: clips from real media, rejections, resume, mel, whisper features, CLI."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.cli.main import main
from lipsync.face.crop import CropBox
from lipsync.face.landmarks import INNER_LIPS, OUTER_LIPS
from lipsync.face.track import NO_BOX, FaceTrack
from lipsync.io.writer import VideoWriter
from lipsync.train.data.features import ensure_whisper_features, whisper_weights_id
from lipsync.train.data.format import (
    CLIPS_DIR,
    CROP_SIZE,
    REPORT_FILE,
    SAMPLES_PER_FRAME,
    SOURCES_DIR,
    DatasetError,
    DatasetSettings,
    list_clips,
    read_clip,
)
from lipsync.train.data.mel import (
    MAX_ABS_VALUE,
    MEL_BANDS,
    MEL_HOP,
    MEL_PAD_VALUE,
    REFERENCE_SYNC_COLUMNS,
    SYNCNET_MEL_COLUMNS,
    mel_window,
    syncnet_mel,
)
from lipsync.train.data.prepare import (
    NO_AUDIO,
    NO_FACE,
    TOO_SHORT,
    TOO_SMALL,
    UNREADABLE,
    PrepareReport,
    _plan_clips,
    crop_with_context,
    find_sources,
    prepare_dataset,
)

from conftest import media, write_clip

SETTINGS = DatasetSettings(clip_seconds=2.0, min_clip_seconds=1.0)
FPS = 25
EYES = slice(36, 48)
FACE_BOX_IN_CROP = np.array([32, 32, 288, 288])
BOX_TOLERANCE_PX = 1.5
NO_FACE_FRAMES = 25
NO_FACE_SIZE = 96
# talk_a's video starts 33 ms after its audio, and its audio ends at 6.107 s: 6.07 s of both.
TALK_A_SECONDS = 6.07
TALK_C_SECONDS = 5.0


def make_no_face_video(path: Path) -> Path:
    """One second of noise with a speech track: readable, with audio, and no face."""
    rng = np.random.default_rng(0)
    audio = media("speech_16k_stereo.wav")
    with VideoWriter(path, Fraction(FPS), NO_FACE_SIZE, NO_FACE_SIZE, audio_path=audio) as writer:
        for _ in range(NO_FACE_FRAMES):
            writer.write(rng.integers(0, 256, (NO_FACE_SIZE, NO_FACE_SIZE, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("talk_c.mp4", "talk_a_22fps.mp4"):
        (src / name).symlink_to(media(name))
    (src / "broken.mp4").write_bytes(b"this is not a video" * 100)
    make_no_face_video(src / "noise.mp4")
    write_clip(media("talk_c.mp4"), src / "silent.mp4", 10)  # video only: no audio track
    return src


@pytest.fixture(scope="module")
def prepared(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PrepareReport]:
    out = tmp_path_factory.mktemp("prepared") / "data"
    report = prepare_dataset(source_dir, out, SETTINGS, jobs=2, progress=False)
    return out, report


@pytest.fixture
def prepared_copy(prepared: tuple[Path, PrepareReport], tmp_path: Path) -> Path:
    """A copy of the prepared dataset a test may change (file times kept)."""
    copy = tmp_path / "data"
    shutil.copytree(prepared[0], copy, symlinks=True)
    return copy


def clip_files(root: Path) -> dict[str, int]:
    """Every file under clips/, with its modification time."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns for p in (root / CLIPS_DIR).rglob("*") if p.is_file()
    }


# --- real media ---------------------------------------------------------------------------------------


def test_clips_from_25fps_and_variable_rate_videos(prepared: tuple[Path, PrepareReport]) -> None:
    out, report = prepared
    clips = [read_clip(folder) for folder in list_clips(out)]
    by_source: dict[str, list] = {}
    for clip in clips:
        by_source.setdefault(clip.meta.source, []).append(clip)
    assert sorted(by_source) == ["talk_a_22fps.mp4", "talk_c.mp4"]
    # 5 s and 6.07 s cut into pieces of at most 2 s, of nearly equal length
    assert len(by_source["talk_c.mp4"]) == 3
    assert len(by_source["talk_a_22fps.mp4"]) == 4
    for source, seconds in (("talk_c.mp4", TALK_C_SECONDS), ("talk_a_22fps.mp4", TALK_A_SECONDS)):
        frames = sum(c.frame_count for c in by_source[source])
        assert abs(frames - seconds * FPS) <= 1, (source, frames)
        starts = [c.meta.start_frame for c in sorted(by_source[source], key=lambda c: c.meta.start_frame)]
        counts = [c.frame_count for c in sorted(by_source[source], key=lambda c: c.meta.start_frame)]
        assert starts == [0, *np.cumsum(counts)[:-1].tolist()]  # contiguous: the face is always found
        assert max(counts) <= SETTINGS.clip_seconds * FPS and max(counts) - min(counts) <= 1
    assert report.clips == report.clips_written == len(clips) == 7
    assert report.frames == sum(c.frame_count for c in clips)

    for clip in clips:
        n = clip.frame_count
        stem = Path(clip.meta.source).stem
        assert clip.meta.clip_id == f"{stem}__{stem}__{clip.meta.start_frame:06d}"
        assert clip.meta.speaker == stem
        assert clip.frames.shape == (n, CROP_SIZE, CROP_SIZE, 3) and clip.frames.dtype == np.uint8
        assert clip.face_boxes.shape == (n, 4) and clip.face_boxes.dtype == np.float32
        assert clip.landmarks.shape == (n, 68, 2) and clip.landmarks.dtype == np.float32
        assert clip.audio.shape == (n * SAMPLES_PER_FRAME,) and clip.audio.dtype == np.float32
        assert clip.mel.shape == (MEL_BANDS, 1 + n * SAMPLES_PER_FRAME // MEL_HOP)
        assert clip.mel.dtype == np.float32
        assert np.abs(clip.face_boxes - FACE_BOX_IN_CROP).max() < BOX_TOLERANCE_PX
        assert clip.landmarks.min() >= 0 and clip.landmarks.max() <= CROP_SIZE
        mouth_y = np.concatenate([clip.landmarks[:, OUTER_LIPS, 1], clip.landmarks[:, INNER_LIPS, 1]], axis=1)
        assert (mouth_y.min(axis=1) > clip.landmarks[:, EYES, 1].max(axis=1)).all()
        assert clip.meta.face_size > SETTINGS.min_face_size
        assert np.abs(clip.audio).max() > 0.01  # speech, not silence
        assert 0 < clip.frames.mean() < 255


def test_unusable_sources_are_reported_with_their_reasons(prepared: tuple[Path, PrepareReport]) -> None:
    out, report = prepared
    reasons = {r.source: r.reason for r in report.rejections}
    assert reasons == {"broken.mp4": UNREADABLE, "noise.mp4": NO_FACE, "silent.mp4": NO_AUDIO}
    assert report.sources_seen == report.sources_done == 5 and report.sources_skipped == 0
    saved = json.loads((out / REPORT_FILE).read_text())
    assert {r["source"]: r["reason"] for r in saved["rejections"]} == reasons
    summary = report.format()
    for reason in (UNREADABLE, NO_FACE, NO_AUDIO):
        assert f"rejected, {reason}: 1" in summary


def test_second_run_skips_every_source_and_rewrites_nothing(source_dir: Path, prepared_copy: Path) -> None:
    before = clip_files(prepared_copy)
    report = prepare_dataset(source_dir, prepared_copy, SETTINGS, jobs=1, progress=False)
    assert report.sources_skipped == 5 and report.sources_done == 0 and report.clips_written == 0
    assert report.clips == 7 and len(report.rejections) == 3  # resumed sources keep their rejections
    assert clip_files(prepared_copy) == before


def test_a_source_without_its_record_is_redone_and_leftovers_removed(
    source_dir: Path, prepared_copy: Path
) -> None:
    before = clip_files(prepared_copy)
    (prepared_copy / SOURCES_DIR / "talk_c__talk_c.json").unlink()
    stray = prepared_copy / CLIPS_DIR / ".tmp-interrupted"
    stray.mkdir()
    (stray / "frames.npy").write_bytes(b"half")
    report = prepare_dataset(source_dir, prepared_copy, SETTINGS, jobs=1, progress=False)
    assert report.sources_done == 1 and report.sources_skipped == 4 and report.clips_written == 3
    assert not stray.exists()
    after = clip_files(prepared_copy)
    assert after.keys() == before.keys()
    changed = {name for name in after if after[name] != before[name]}
    assert changed and all("talk_c__" in name for name in changed)
    assert all(name in changed for name in after if "talk_c__" in name)


def test_other_settings_on_an_existing_dataset_are_refused(source_dir: Path, prepared_copy: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source_dir, prepared_copy, DatasetSettings(clip_seconds=3.0), progress=False)
    assert "same settings" in caught.value.fix and "clip_seconds: 2.0 -> 3.0" in caught.value.problem


def test_whisper_features_are_computed_once(prepared_copy: Path, tiny_weights: Path) -> None:
    from lipsync.models.musetalk.loading import load_models

    models = load_models(tiny_weights, "v15", torch.device("cpu"), torch.float32)
    weights_id = whisper_weights_id(tiny_weights)
    assert len(weights_id) == 64
    for folder in list_clips(prepared_copy)[3:]:  # keep it short: three clips
        shutil.rmtree(folder)
    assert ensure_whisper_features(prepared_copy, models, weights_id, progress=False) == 3
    for folder in list_clips(prepared_copy):
        clip = read_clip(folder)
        assert clip.whisper is not None
        assert clip.whisper.shape == (clip.frame_count * 2, 5, 384) and clip.whisper.dtype == np.float32
        assert np.isfinite(clip.whisper).all()
        assert clip.meta.whisper_weights == weights_id
    assert ensure_whisper_features(prepared_copy, models, weights_id, progress=False) == 0
    assert ensure_whisper_features(prepared_copy, models, "other weights", progress=False) == 3


# --- pieces -------------------------------------------------------------------------------------------


def synthetic_track(widths: list[int | None]) -> FaceTrack:
    """A track with a box of the given width in each frame (None: no face)."""
    boxes = np.array([[0, 0, w, w] if w else [NO_BOX] * 4 for w in widths], dtype=np.int32)
    points = np.zeros((len(widths), 68, 2), dtype=np.float32)
    return FaceTrack(boxes=boxes, points=points, face_ovals=np.zeros((len(widths), 36, 2), np.float32))


def test_runs_are_split_evenly_and_short_or_small_runs_rejected() -> None:
    settings = DatasetSettings(clip_seconds=2.0, min_clip_seconds=1.0, min_face_size=64)
    widths: list[int | None] = [100] * 110 + [None] * 5 + [100] * 10 + [None] + [40] * 30
    rejections: list = []
    plans = _plan_clips("v.mp4", synthetic_track(widths), settings, rejections)
    assert [(p.start, p.count) for p in plans] == [(0, 37), (37, 36), (73, 37)]
    assert [(r.reason, r.start_frame, r.frame_count) for r in rejections] == [
        (TOO_SHORT, 115, 10),
        (TOO_SMALL, 126, 30),
    ]


def test_speaker_is_the_first_sub_folder_of_nested_videos(tmp_path: Path) -> None:
    for rel in ("id01/clip.mp4", "id01/day2/clip.mp4", "id02/clip.mov", "id02/clip.mp4", "id02/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = {s.rel: (s.speaker, s.key) for s in find_sources(tmp_path)}
    assert found == {
        "id01/clip.mp4": ("id01", "id01__clip"),
        "id01/day2/clip.mp4": ("id01", "id01__day2__clip"),
        "id02/clip.mov": ("id02", "id02__clip-mov"),
        "id02/clip.mp4": ("id02", "id02__clip-mp4"),
    }
    assert {s.speaker for s in find_sources(tmp_path, speaker_from="stem")} == {"clip"}


def test_crop_context_outside_the_frame_is_black() -> None:
    frame = np.full((200, 200, 3), 200, dtype=np.uint8)
    crop, origin, scale = crop_with_context(frame, CropBox(0, 0, 80, 80), 0.125, CROP_SIZE)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert origin.tolist() == [-10, -10] and scale.tolist() == [CROP_SIZE / 100, CROP_SIZE / 100]
    assert crop[:28, :28].max() == 0 and crop[40:, 40:].min() == 200


def test_mel_of_silence_and_of_a_tone() -> None:
    seconds = 1.0
    silence = syncnet_mel(np.zeros(int(16_000 * seconds), np.float32))
    assert silence.shape == (MEL_BANDS, 81) and silence.dtype == np.float32
    assert np.all(silence == -MAX_ABS_VALUE)
    t = np.arange(16_000) / 16_000
    low = syncnet_mel((0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    high = syncnet_mel((0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32))
    low_band, high_band = int(low[:, 40].argmax()), int(high[:, 40].argmax())
    assert 5 < low_band < high_band < MEL_BANDS - 5
    assert low.max() <= MAX_ABS_VALUE and low[:, 40].max() > 0


def test_mel_window_columns() -> None:
    mel = np.arange(MEL_BANDS * 100, dtype=np.float32).reshape(MEL_BANDS, 100)
    assert REFERENCE_SYNC_COLUMNS == 16 and SYNCNET_MEL_COLUMNS == 52
    assert mel_window(mel, 0, 5).shape == (MEL_BANDS, 16)
    window = mel_window(mel, 3, 16)
    assert window.shape == (MEL_BANDS, 52)
    assert np.array_equal(window, mel[:, 9:61])  # int(80 * 3 / 25) = 9
    tail = mel_window(mel, 25, 16)  # columns 80..131 of 100
    assert np.array_equal(tail[:, :20], mel[:, 80:]) and np.all(tail[:, 20:] == MEL_PAD_VALUE)


# --- command line -------------------------------------------------------------------------------------


def test_cli_resumes_computes_whisper_features_and_prints_a_summary(
    source_dir: Path, prepared_copy: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "prepare", str(source_dir), str(prepared_copy), "--clip-seconds", "2", "-q"]
    code = main([*args, "--weights", str(tiny_weights)])
    output = capsys.readouterr().out
    assert code == 0
    assert "7 clips" in output and "5 already prepared" in output
    assert "rejected, no face: 1" in output and "noise.mp4" in output
    assert "whisper features: 7 clips computed" in output
    assert all(read_clip(folder).whisper is not None for folder in list_clips(prepared_copy))


@pytest.mark.parametrize("case", ["missing", "empty", "inside", "settings"])
def test_cli_errors(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "missing":
        src = tmp_path / "nowhere"
    elif case == "inside":
        (src / "a.mp4").write_bytes(b"")
        out = src / "out"
    elif case == "settings":
        (src / "a.mp4").write_bytes(b"")
        extra = ["--clip-seconds", "1", "--min-clip-seconds", "2"]
    code = main(["data", "prepare", str(src), str(out), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "fix: " in err
    expected = {"missing": "does not exist", "empty": "no videos", "inside": "inside", "settings": "cannot"}
    assert expected[case] in err
    assert not out.exists()
