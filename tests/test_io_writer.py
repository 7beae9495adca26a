"""Writing H.264 + AAC MP4s: frame count and rate, audio length, odd sizes, metadata, atomic output."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync.errors import InputError, OutputError
from lipsync.io import writer as writer_module
from lipsync.io.audio import load_audio
from lipsync.io.video import FrameReader, probe_video
from lipsync.io.writer import VideoWriter

from conftest import media


def copy_clip(source: Path, out: Path, audio: Path, frame_count: int, crop: int = 0) -> None:
    info = probe_video(source)
    size = (info.width - crop, info.height - crop)
    with FrameReader(info) as reader, VideoWriter(out, info.fps, *size, audio_path=audio) as writer:
        for _, frame in reader.cycled(frame_count):
            writer.write(np.ascontiguousarray(frame[crop:, crop:]))


@pytest.mark.parametrize(
    ("clip", "audio_name"),
    [("talk_a_22fps.mp4", "talk_a_22fps.mp4"), ("talk_c.mp4", "speech_16k_stereo.wav")],
)
def test_frames_rate_and_audio(tmp_path: Path, clip: str, audio_name: str) -> None:
    source, audio = media(clip), media(audio_name)
    info = probe_video(source)
    seconds = load_audio(audio).duration
    frame_count = round(seconds * info.fps)  # cycles talk_c (5 s) to cover the 8 s of speech
    out = tmp_path / "out.mp4"
    copy_clip(source, out, audio, frame_count)

    assert os.listdir(tmp_path) == ["out.mp4"]
    written = probe_video(out)
    assert (written.frame_count, written.fps) == (frame_count, info.fps)
    assert (written.width, written.height) == (info.width, info.height)
    with av.open(str(out)) as container:
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        assert video_stream.codec_context.name == "h264"
        assert video_stream.codec_context.format.name == "yuv420p"
        assert audio_stream.codec_context.name == "aac"
        assert audio_stream.codec_context.sample_rate == load_audio(audio).source_sample_rate
    one_frame = 1 / float(info.fps)
    assert load_audio(out).duration_s == pytest.approx(float(seconds), abs=one_frame)


def test_pixels_survive_encoding(tmp_path: Path) -> None:
    source = media("talk_c.mp4")
    out = tmp_path / "out.mp4"
    copy_clip(source, out, source, 10)
    with FrameReader(probe_video(source)) as before, FrameReader(probe_video(out)) as after:
        for a, b in zip(before.frames(0, 10), after.frames(), strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_odd_size_is_padded(tmp_path: Path) -> None:
    source = media("talk_c.mp4")  # 590x590 cropped to 589x589
    out = tmp_path / "odd.mp4"
    copy_clip(source, out, source, 5, crop=1)
    written = probe_video(out)
    assert (written.width, written.height, written.frame_count) == (590, 590, 5)


def test_exact_fraction_rate_without_audio(tmp_path: Path) -> None:
    fps = Fraction(30000, 1001)
    out = tmp_path / "ntsc.mp4"
    with VideoWriter(out, fps, 64, 48) as writer:
        for value in range(7):
            writer.write(np.full((48, 64, 3), value * 30, np.uint8))
    written = probe_video(out)
    assert (written.fps, written.frame_count) == (fps, 7)
    with av.open(str(out)) as container:
        assert not container.streams.audio


def test_metadata_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "tagged.mp4"
    metadata = {"comment": "dubbed by lipsync", "title": "A title", "lipsync_model": "v15"}
    with VideoWriter(out, Fraction(25), 32, 32, metadata=metadata) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
    with av.open(str(out)) as container:
        assert metadata.items() <= container.metadata.items()


def test_abort_and_exceptions_leave_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, Fraction(25), 32, 32, audio_path=media("speech_16k_stereo.wav"))
    writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.abort()
    assert os.listdir(tmp_path) == []

    with pytest.raises(RuntimeError), VideoWriter(out, Fraction(25), 32, 32) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
        raise RuntimeError("the model failed")
    assert os.listdir(tmp_path) == []

    with pytest.raises(ValueError), VideoWriter(out, Fraction(25), 32, 32) as writer:
        writer.write(np.zeros((16, 32, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_existing_output_survives_failure(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's old file")
    with pytest.raises(RuntimeError), VideoWriter(out, Fraction(25), 32, 32) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
        raise RuntimeError
    assert out.read_bytes() == b"the user's old file"
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_bad_output_paths(tmp_path: Path) -> None:
    audio = tmp_path / "voice.wav"
    audio.write_bytes(media("speech_16k_stereo.wav").read_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (tmp_path / "no" / "such" / "out.mp4", "does not exist"),
        (tmp_path, "is a folder"),
        (audio, "is the audio input"),
        (tmp_path / "." / "voice.wav", "is the audio input"),
    ]
    if not os.access(locked, os.W_OK):  # root can write anywhere
        cases.append((locked / "out.mp4", "not writable"))
    for path, words in cases:
        with pytest.raises(OutputError) as caught:
            VideoWriter(path, Fraction(25), 32, 32, audio_path=audio)
        assert words in caught.value.problem
        assert caught.value.fix
    locked.chmod(0o700)
    assert sorted(os.listdir(tmp_path)) == ["locked", "voice.wav"]


def test_bad_audio_raises_input_error_and_cleans_up(tmp_path: Path) -> None:
    mute = tmp_path / "mute.mp4"
    with VideoWriter(mute, Fraction(25), 32, 32) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
    for audio, words in [(mute, "no audio track"), (tmp_path / "missing.wav", "does not exist")]:
        with pytest.raises(InputError, match=words):
            VideoWriter(tmp_path / "out.mp4", Fraction(25), 32, 32, audio_path=audio)
    assert os.listdir(tmp_path) == ["mute.mp4"]


def test_close_without_frames_is_an_error(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "out.mp4", Fraction(25), 32, 32)
    with pytest.raises(OutputError, match="No frames"):
        writer.close()
    assert os.listdir(tmp_path) == []


def test_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module.os, "access", lambda *_: False)  # tests may run as root
    with pytest.raises(OutputError, match="not writable"):
        VideoWriter(tmp_path / "out.mp4", Fraction(25), 32, 32)


def test_padding_repeats_the_edge() -> None:
    frame = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    padded = writer_module._pad_to_even(frame)
    assert padded.shape == (4, 6, 3)
    assert np.array_equal(padded[:3, :5], frame)
    assert np.array_equal(padded[3, :5], frame[2]) and np.array_equal(padded[:3, 5], frame[:, 4])


def test_audio_is_interleaved_as_frames_are_written(tmp_path: Path) -> None:
    rate = 16_000
    audio = media("speech_16k_stereo.wav")
    with VideoWriter(tmp_path / "out.mp4", Fraction(25), 32, 32, audio_path=audio) as w:
        for _ in range(50):  # 2 s of an 8 s track
            w.write(np.zeros((32, 32, 3), np.uint8))
        assert w._audio is not None
        assert 2 * rate <= w._audio._samples_out < 3 * rate


def test_the_output_suffix_names_the_container_written(tmp_path: Path) -> None:
    for name in ("x.avi", "x.mkv", "x.webm", "x", "x.MP4.txt"):
        with pytest.raises(OutputError) as caught:
            VideoWriter(tmp_path / name, Fraction(25), 32, 32)
        assert "names no container lipsync writes" in caught.value.problem and ".mp4" in caught.value.fix
    assert os.listdir(tmp_path) == []
    for name, container in (("x.mov", "mov"), ("x.MP4", "mp4"), ("x.m4v", "mp4")):
        with VideoWriter(tmp_path / name, Fraction(25), 32, 32) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
        with av.open(str(tmp_path / name)) as written:
            brand = written.metadata.get("major_brand", "")
        assert ("qt" in brand) == (container == "mov"), (name, brand)
        assert probe_video(tmp_path / name).frame_count == 1
