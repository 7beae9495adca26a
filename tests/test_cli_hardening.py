"""Careless input and signals: each gives a clear error or a clean stop, never a traceback or a stray file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync.cli.main import main
from lipsync.config import FaceSettings
from lipsync.errors import InputError
from lipsync.face.track import track_face
from lipsync.io.video import FrameReader, probe_video
from lipsync.io.writer import NAME_MAX_BYTES, VideoWriter
from lipsync.models.generator import Generator

from conftest import REPO, media, write_clip, write_png


def dub_args(out: str, weights: Path, *extra: str) -> list[str]:
    inputs = [str(media("talk_c.mp4")), str(media("speech_44k_stereo.wav"))]
    return ["dub", *inputs, "-o", out, "--weights", str(weights), "--device", "cpu", "-q", *extra]


def test_an_output_written_as_a_folder_is_refused(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for target in (tmp_path / "new", tmp_path):  # a folder to be, and one that exists
        assert main(dub_args(f"{target}/", tiny_weights)) == 2
        assert "names a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_longest_name_the_file_system_takes_is_written(tmp_path: Path) -> None:
    out = tmp_path / ("x" * (NAME_MAX_BYTES - len(".mp4")) + ".mp4")
    with VideoWriter(out, Fraction(25), 32, 32) as writer:
        for _ in range(3):
            writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
    assert probe_video(out).frame_count == 3 and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_photo_frame_rate_must_be_positive(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(dub_args(str(tmp_path / "out.mp4"), tiny_weights, "--image-fps", "0"))
    assert stop.value.code == 2 and "must be above 0" in capsys.readouterr().err
    photo = tmp_path / "face.png"
    import cv2

    with FrameReader(probe_video(media("talk_c.mp4"))) as reader:
        cv2.imwrite(str(photo), next(reader.frames(0, 1))[..., ::-1])
    with pytest.raises(InputError, match="`image_fps` is -1"):
        probe_video(photo, Fraction(-1))


def test_a_crop_box_pushed_out_of_the_frame_says_so() -> None:
    info = probe_video(media("talk_c.mp4"))
    with FrameReader(info) as reader:
        frames = list(reader.frames(0, 3))
    with pytest.raises(InputError, match="crop box lies outside the frame") as error:
        track_face(frames, FaceSettings(bbox_shift=5000), info.width, info.height)
    assert "a face was found in 3 frames" in error.value.problem and "`bbox_shift`" in error.value.fix


def test_sighup_and_sigterm_stop_through_the_same_handler() -> None:
    from lipsync.cli.main import _raise_terminated, _stop_on_termination

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _stop_on_termination()
        assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGHUP) is _raise_terminated
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


# SIGHUP goes through SIGTERM's handler (the test above): its whole run waits for -m slow.
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_a_terminated_dub_leaves_no_partial_file(tiny_weights: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "lipsync.cli.main", *dub_args(str(out), tiny_weights)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in tmp_path.glob(".out.mp4.partial-*")):  # frames are being written
        assert process.poll() is None and time.monotonic() < deadline, "the dub never started writing"
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert "interrupted: stopped; nothing half-written was kept" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_partial_files_of_dead_runs_are_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    left_by_dead = tmp_path / f".out.mp4.partial-{int(dead.stdout)}-0badc0de.mp4"
    held_by_live = tmp_path / f".out.mp4.partial-{os.getpid()}-0badc0de.mp4"  # a run still writing
    other_output = tmp_path / f".other.mp4.partial-{int(dead.stdout)}-0badc0de.mp4"
    for leftover in (left_by_dead, held_by_live, other_output):
        leftover.write_bytes(b"half a video")
    with VideoWriter(out, Fraction(25), 32, 32) as writer:
        writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, held_by_live.name, other_output.name]
    )


def test_a_damaged_tail_ends_the_video_where_frames_stop_decoding(
    tiny_generator: Generator, tmp_path: Path
) -> None:
    from lipsync.pipeline.avatar import AvatarStore, prepare_avatar
    from lipsync.pipeline.dub import DubPipeline

    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", 30)  # index first (faststart)
    data = bytearray(clip.read_bytes())
    data[int(len(data) * 0.6) :] = bytes(len(data) - int(len(data) * 0.6))  # the last frames are zeros
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data)
    info = probe_video(damaged)
    assert info.frame_count == 30  # the index still lists every frame
    with FrameReader(info) as reader:
        assert len(list(reader.frames(0, 30))) == 30  # padded with the last good frame, no traceback
        good = reader.info.frame_count
    assert 5 < good < 30

    speech = media("speech_44k_stereo.wav")  # longer than the good frames: the cycle turns at the last one
    out = tmp_path / "out.mp4"
    summary = DubPipeline(tiny_generator)(damaged, speech, out, progress=False, max_frames=3 * good)
    assert summary.frames == probe_video(out).frame_count == 3 * good
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(tiny_generator, store, "damaged", damaged, show_bar=False)
    avatar = store.load("damaged")
    assert avatar.frame_count == good and sorted(set(avatar.cycle.tolist())) == list(range(good))


def test_an_output_suffix_that_is_not_written_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("x.avi", "x"):
        assert main(dub_args(str(tmp_path / name), tmp_path / "no-weights")) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "names no container lipsync writes" in err
        assert "fix: Name it e.g. x.mp4" in err and "no-weights" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_image_bomb_is_an_input_error_from_the_command(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = write_png(tmp_path / "bomb.png", 65535, 65535)  # 68 bytes claiming 65535x65535
    out = tmp_path / "out.mp4"
    command = ["dub", str(bomb), str(media("speech_16k_stereo.wav")), "-o", str(out)]
    assert main([*command, "--weights", str(tiny_weights), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "\nerror:" in err and "bomb.png" in err and "pixels" in err  # after the UNTRAINED warning
    assert "not decoded" in err and "fix: Scale it down" in err and "Traceback" not in err
    assert not out.exists()


def test_a_face_index_beyond_a_single_face_says_there_is_one(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = probe_video(media("talk_c.mp4"))
    with FrameReader(info) as reader:
        frames = list(reader.frames(0, 3))
    with pytest.raises(InputError) as error:
        track_face(frames, FaceSettings(face_index=1), info.width, info.height)
    assert "has only 1 face" in error.value.problem and "0 (the smallest)" not in error.value.fix
    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", 3)
    speech = str(media("speech_16k_stereo.wav"))
    command = ["dub", str(clip), speech, "-o", str(tmp_path / "out.mp4"), "--face", "1"]
    assert main([*command, "--weights", str(tiny_weights), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "has only 1 face" in err and "fix: leave `face_index` (--face) at 0, the default" in err


def test_an_audio_track_over_the_length_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipsync.io import audio

    monkeypatch.setattr(audio, "MAX_AUDIO_SECONDS", 2)
    speech = media("speech_16k_stereo.wav")  # 8 s: its header says so
    with pytest.raises(InputError, match="too long for lipsync: its header says 8 s"):
        audio.load_audio(speech)
    monkeypatch.setattr(audio, "MICROSECONDS", 10**12)  # as if the header said nothing of its length
    with pytest.raises(InputError, match="too long for lipsync: it has more than 2 s") as caught:
        audio.load_audio(speech)
    assert "Cut it" in caught.value.fix
