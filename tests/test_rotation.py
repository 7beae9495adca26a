"""Phone videos: a display matrix turns (or mirrors) the stored frames; everything reads them upright, so
the mouth is painted where it is and the output plays upright."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync.config import DubSettings, RuntimeSettings
from lipsync.io.resample import PresentationResampler, probe_stream_times, rgb_frames
from lipsync.io.video import FrameReader, probe_video, upright
from lipsync.models.generator import Generator
from lipsync.pipeline.dub import DubPipeline

from conftest import media

ONE = 65536  # 1.0 in the matrix's 16.16 fixed point
LANDSCAPE = slice(60, 530)  # rows of talk_c (590x590) kept: an upright 590x470 picture
FRAMES = 12


def matrix(a: int, b: int, c: int, d: int) -> tuple[int, ...]:
    return (a * ONE, b * ONE, 0, c * ONE, d * ONE, 0, 0, 0, 1 << 30)


MARKED = np.zeros((4, 6, 3), dtype=np.uint8)
MARKED[0, 0] = 255  # top-left


@pytest.mark.parametrize(
    ("display", "expected"),
    [
        (matrix(1, 0, 0, 1), MARKED),
        (matrix(0, 1, -1, 0), np.rot90(MARKED, k=-1)),  # players turn it a quarter clockwise
        (matrix(0, -1, 1, 0), np.rot90(MARKED, k=1)),  # a quarter counter-clockwise
        (matrix(-1, 0, 0, -1), MARKED[::-1, ::-1]),  # half a turn
        (matrix(-1, 0, 0, 1), MARKED[:, ::-1]),  # mirrored left to right
        (matrix(1, 0, 0, -1), MARKED[::-1]),  # mirrored top to bottom
        (matrix(0, 1, 1, 0), MARKED.transpose(1, 0, 2)),  # mirrored and turned: a transpose
        (matrix(0, -1, -1, 0), np.rot90(MARKED, k=-1)[::-1]),  # the other diagonal
    ],
)
def test_frames_are_turned_as_players_turn_them(display: tuple[int, ...], expected: np.ndarray) -> None:
    assert np.array_equal(upright(MARKED, display), expected)
    assert upright(MARKED, None) is MARKED


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(upright, rotated): the same landscape frames, stored as they are, and stored turned a quarter
    clockwise with a display matrix that turns them back (as a phone records a portrait video)."""
    folder = tmp_path_factory.mktemp("rotation")
    with FrameReader(probe_video(media("talk_c.mp4"))) as reader:
        frames = [frame[LANDSCAPE] for frame in reader.frames(0, FRAMES)]
    paths = (folder / "upright.mp4", folder / "rotated.mp4")
    for path, turn in zip(paths, (None, 90), strict=True):
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25, options={"crf": "12"})
            stored = [
                frame if turn is None else np.ascontiguousarray(np.rot90(frame, k=-1)) for frame in frames
            ]
            stream.height, stream.width = stored[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            if turn is not None:
                stream.set_display_rotation(turn)  # counter-clockwise: undoes the clockwise storage
            for index, pixels in enumerate(stored):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return paths


def test_a_rotated_video_reads_upright_everywhere(clips: tuple[Path, Path]) -> None:
    upright_clip, rotated = clips
    info = probe_video(rotated)
    assert (info.width, info.height) == (590, 470)
    with FrameReader(info) as reader, FrameReader(probe_video(upright_clip)) as plain:
        turned, straight = next(reader.frames(0, 1)), next(plain.frames(0, 1))
    assert turned.shape == straight.shape == (470, 590, 3)
    assert np.abs(turned.astype(int) - straight.astype(int)).mean() < 3  # the same picture, two encodes
    # The 25 fps reader of data preparation and evaluation too.
    times = probe_stream_times(rotated)
    assert (times.width, times.height) == (590, 470)
    first = next(rgb_frames(PresentationResampler(rotated, times, 25, 16_000).frames()))
    assert np.array_equal(first, turned)


def test_a_rotated_video_is_dubbed_upright_with_the_mouth_in_place(
    tiny_generator: Generator, clips: tuple[Path, Path]
) -> None:
    settings = DubSettings(silence="generate", runtime=RuntimeSettings(batch_size=4))
    speech = media("speech_44k_stereo.wav")
    centres = []
    for clip in clips:
        with FrameReader(probe_video(clip)) as reader:
            source = next(reader.frames(0, 1))
        out = next(DubPipeline(tiny_generator, settings).frames(clip, speech))
        assert out.image.shape == (470, 590, 3)  # written upright
        changed = np.abs(out.image.astype(int) - source.astype(int)).sum(axis=2) > 0
        rows, cols = np.nonzero(changed)
        assert len(rows) > 1000
        assert not changed[: rows.min()].any() and rows.min() > 470 // 3  # the upper face is unchanged
        centres.append((rows.mean(), cols.mean()))
    (upright_row, upright_col), (rotated_row, rotated_col) = centres
    assert abs(upright_row - rotated_row) < 8 and abs(upright_col - rotated_col) < 8  # same place


def test_video_info_fps_of_a_rotated_clip_is_kept(clips: tuple[Path, Path]) -> None:
    assert probe_video(clips[1]).fps == Fraction(25) and probe_video(clips[1]).frame_count == FRAMES
