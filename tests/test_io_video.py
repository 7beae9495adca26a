"""Probing and reading videos and images: forward, reversed and ping-pong order give the same pixels."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync.config import MAX_FRAME_PIXELS
from lipsync.errors import InputError
from lipsync.io import video
from lipsync.io.video import FrameReader, VideoInfo, ping_pong_index, probe_video

from conftest import media, write_png

EXIF_ORIENTATION = 0x0112
EXIF_ROTATE_90_CW = 6
CLIPS = ["talk_a_22fps.mp4", "talk_b.mp4", "talk_c.mp4", "talk_d_mpeg4.mp4"]


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def talk_c_frames() -> list[np.ndarray]:
    return decode_all(media("talk_c.mp4"))


@pytest.mark.parametrize("name", CLIPS)
def test_frame_count_matches_full_decode(name: str) -> None:
    path = media(name)
    info = probe_video(path)
    with av.open(str(path)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert info.frame_count == decoded
    assert not info.is_image
    assert isinstance(info.fps, Fraction)
    assert info.duration_s == pytest.approx(decoded / float(info.fps))


def test_non_integer_fps_is_exact() -> None:
    info = probe_video(media("talk_a_22fps.mp4"))
    assert info.fps.denominator != 1
    assert float(info.fps) == pytest.approx(22.13, abs=0.01)
    assert (info.width, info.height) == (700, 700)


def test_image_is_one_frame(tmp_path: Path) -> None:
    image = np.zeros((37, 51, 3), np.uint8)
    image[:, :, 2] = 255  # red in BGR
    path = tmp_path / "face.PNG"
    cv2.imwrite(str(path), image)
    info = probe_video(path, image_fps=Fraction(30))
    assert (info.frame_count, info.width, info.height, info.is_image, info.fps) == (1, 51, 37, True, 30)
    with FrameReader(info) as reader:
        frames = list(reader.frames())
        cycled = list(reader.cycled(4))
    assert len(frames) == 1
    assert frames[0].shape == (37, 51, 3)
    assert (frames[0][..., 0] == 255).all() and (frames[0][..., 2] == 0).all()  # RGB order
    assert [index for index, _ in cycled] == [0, 0, 0, 0]
    assert all(np.array_equal(frame, frames[0]) for _, frame in cycled)


def test_image_follows_exif_orientation(tmp_path: Path) -> None:
    pil_image = pytest.importorskip("PIL.Image")
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255
    image = pil_image.fromarray(pixels)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = EXIF_ROTATE_90_CW
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif)
    info = probe_video(path)
    assert (info.width, info.height) == (20, 40)
    with FrameReader(info) as reader:
        assert next(reader.frames()).shape == (40, 20, 3)


def test_bad_inputs_raise_input_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    broken_image = tmp_path / "broken.png"
    broken_image.write_bytes(b"\x89PNG garbage")
    cases = [
        (tmp_path / "missing.mp4", "does not exist"),
        (tmp_path, "folder"),
        (text, "not a readable video"),
        (empty, "not a readable video"),
        (broken_image, "broken.png"),
        (media("speech_44k_stereo.wav"), "no video track"),
    ]
    for path, words in cases:
        with pytest.raises(InputError) as caught:
            probe_video(path)
        assert words in caught.value.problem
        assert str(path.name) in caught.value.problem
        assert caught.value.fix


def test_ping_pong_index() -> None:
    assert [ping_pong_index(i, 3) for i in range(14)] == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1]
    assert [ping_pong_index(i, 1) for i in range(5)] == [0] * 5
    with pytest.raises(ValueError):
        ping_pong_index(0, 0)


def test_frames_are_rgb_contiguous(talk_c_frames: list[np.ndarray]) -> None:
    info = probe_video(media("talk_c.mp4"))
    with FrameReader(info) as reader:
        frames = list(reader.frames())
        middle = list(reader.frames(60, 75))
    assert len(frames) == info.frame_count
    for frame, expected in zip(frames, talk_c_frames, strict=True):
        assert frame.dtype == np.uint8 and frame.shape == (590, 590, 3) and frame.flags.c_contiguous
        assert np.array_equal(frame, expected)
    assert all(np.array_equal(a, b) for a, b in zip(middle, talk_c_frames[60:75], strict=True))


@pytest.mark.parametrize("name", ["talk_a_22fps.mp4", "talk_c.mp4", "talk_d_mpeg4.mp4"])
def test_reversed_equals_forward(name: str) -> None:
    path = media(name)
    forward = decode_all(path)
    with FrameReader(probe_video(path)) as reader:
        backward = list(reader.frames_reversed(0, len(forward)))
        window = list(reader.frames_reversed(7, 41))
    assert len(backward) == len(forward)
    assert all(np.array_equal(a, b) for a, b in zip(backward, forward[::-1], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(window, forward[40:6:-1], strict=True))


def test_reversed_seeks_instead_of_decoding_from_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """talk_d has a keyframe every 12 frames: every chunk must come from a seek."""
    path = media("talk_d_mpeg4.mp4")
    forward = decode_all(path)

    def no_full_decode(self: FrameReader, start: int, stop: int) -> None:
        raise AssertionError(f"decoded from the start for {start}..{stop}")

    with FrameReader(probe_video(path)) as reader:
        monkeypatch.setattr(FrameReader, "_decode_from_start", no_full_decode)
        backward = list(reader.frames_reversed(1, len(forward)))
    assert all(np.array_equal(a, b) for a, b in zip(backward, forward[:0:-1], strict=True))


def test_reversed_without_timestamps_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    path = media("talk_d_mpeg4.mp4")
    forward = decode_all(path)
    info = probe_video(path)
    monkeypatch.setattr(
        video, "_index_frames", lambda _: video._FrameIndex(list(range(info.frame_count)), [], False)
    )
    with FrameReader(info) as reader:
        backward = list(reader.frames_reversed(150, 200))
    assert all(np.array_equal(a, b) for a, b in zip(backward, forward[:149:-1], strict=True))


def test_cycled_follows_ping_pong(talk_c_frames: list[np.ndarray]) -> None:
    info = probe_video(media("talk_c.mp4"))
    count = 2 * info.frame_count + 30
    with FrameReader(info) as reader:
        cycled = list(reader.cycled(count))
    assert len(cycled) == count
    for output_index, (source_index, frame) in enumerate(cycled):
        assert source_index == ping_pong_index(output_index, info.frame_count)
        assert np.array_equal(frame, talk_c_frames[source_index])


def test_reversed_memory_is_bounded_by_one_chunk() -> None:
    info = probe_video(media("talk_c.mp4"))
    frame_bytes = info.width * info.height * 3
    with FrameReader(info) as reader:
        reader._chunk_frames()  # warm-up imports outside the measurement
        tracemalloc.start()
        try:
            for _ in reader.frames_reversed(0, info.frame_count):
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # The chunk plus a frame in flight, never the whole clip (125 frames).
    assert peak < (video.REVERSE_CHUNK_FRAMES + 2) * frame_bytes
    assert peak < info.frame_count * frame_bytes / 4


def test_close_stops_open_generators() -> None:
    info = VideoInfo(media("talk_c.mp4"), Fraction(25), 125, 590, 590, is_image=False)
    reader = FrameReader(info)
    frames = reader.frames()
    next(frames)
    reader.close()
    frames.close()


def test_probing_indexes_the_file_once_for_all_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reversed reading seeks with the timestamps probing found: no second pass over the file."""
    import lipsync.io.video as video

    passes = []
    real_index = video._index_frames
    monkeypatch.setattr(video, "_index_frames", lambda path: passes.append(path) or real_index(path))
    info = probe_video(media("talk_d_mpeg4.mp4"))
    with FrameReader(info) as reader:
        assert sum(1 for _ in reader.cycled(info.frame_count + 20)) == info.frame_count + 20
    assert len(passes) == 1


def test_image_bombs_are_refused_from_their_header_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = math.isqrt(MAX_FRAME_PIXELS) + 1  # just over the limit, and a complete image
    claims = write_png(tmp_path / "claims.png", 65535, 65535)  # 68 bytes claiming 4.3 G pixels
    real = write_png(tmp_path / "real.png", side, side, bit_depth=1, color_type=0)
    assert claims.stat().st_size < 100 and real.stat().st_size < 200_000

    def no_decoding(*args: object) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(video.cv2, "imdecode", no_decoding)
    for path in (claims, real):
        with pytest.raises(InputError) as caught:
            probe_video(path)
        assert path.name in caught.value.problem and "not decoded" in caught.value.problem
        assert "pixels" in caught.value.problem and "Scale it down" in caught.value.fix


def test_a_video_whose_stream_claims_a_huge_frame_is_refused_before_decoding(tmp_path: Path) -> None:
    side = math.isqrt(MAX_FRAME_PIXELS) + 2
    clip = tmp_path / "huge.y4m"  # a raw YUV stream: its text header says the size, one short frame
    clip.write_bytes(f"YUV4MPEG2 W{side} H{side} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + bytes(1000))
    with pytest.raises(InputError) as caught:
        probe_video(clip)
    assert f"{side}x{side}" in caught.value.problem and "not decoded" in caught.value.problem


def test_a_video_with_more_frames_than_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 10)
    with pytest.raises(InputError) as caught:
        probe_video(media("talk_c.mp4"))  # its header says how many frames it has
    assert "too long" in caught.value.problem and "claims 125 frames" in caught.value.problem
    assert "Cut it" in caught.value.fix
    uncounted = tmp_path / "uncounted.y4m"  # no frame count in the header: counted, up to the limit
    frame = b"FRAME\n" + bytes(16 * 16 * 3 // 2)
    uncounted.write_bytes(b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C420jpeg\n" + frame * 12)
    with pytest.raises(InputError, match="too long for lipsync: it has more than 10 frames"):
        probe_video(uncounted)
