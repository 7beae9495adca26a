"""Read a video (PyAV) or a still image (OpenCV) as RGB frames: forward, reversed, ping-pong."""

from __future__ import annotations

import bisect
import math
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import cv2
import numpy as np

from lipsync.config import DEFAULT_IMAGE_FPS, MAX_FRAME_PIXELS, MAX_VIDEO_FRAMES
from lipsync.errors import InputError
from lipsync.io.files import require_file

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

RGB_CHANNELS = 3
# Reversed reading holds at most this many decoded frames at once ...
REVERSE_CHUNK_FRAMES = 16
# ... and never more than this many bytes of them (large frames get smaller chunks).
REVERSE_CHUNK_MAX_BYTES = 256 * 1024 * 1024

VIDEO_FIX = "Give a readable video file (e.g. .mp4, .mov, .mkv) or an image (.png, .jpg)."
SIZE_FIX = (
    "Scale it down first (e.g. ffmpeg -i IN -vf scale=1920:-2 OUT): lipsync takes pictures of at most "
    f"{MAX_FRAME_PIXELS:,} pixels."
)
LENGTH_FIX = f"Cut it into parts of at most {MAX_VIDEO_FRAMES:,} frames (e.g. with ffmpeg -t) and dub each."


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a video (or an image) will give."""

    path: Path
    fps: Fraction
    frame_count: int
    width: int
    height: int
    is_image: bool
    # Timestamps found by probing, reused by FrameReader to seek (no second demux pass).
    frame_index: _FrameIndex | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return float(self.frame_count / self.fps)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def probe_video(path: Path, image_fps: Fraction = DEFAULT_IMAGE_FPS) -> VideoInfo:
    """Describe a video or image file; raise InputError when it cannot be used as the video input."""
    path = Path(path)
    require_file(path, "a video or image file", VIDEO_FIX)
    if is_image_path(path):
        if Fraction(image_fps) <= 0:
            raise InputError(
                f"`image_fps` is {image_fps}: a photo needs a positive frame rate",
                "give e.g. 25 (the default)",
            )
        image = _read_image(path)
        height, width = image.shape[:2]
        return VideoInfo(path, Fraction(image_fps), 1, width, height, is_image=True)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video track.", VIDEO_FIX)
            stream = container.streams.video[0]
            if stream.frames > MAX_VIDEO_FRAMES:
                raise _too_long(path, f"its header claims {stream.frames:,} frames")
            fps = stream_fps(stream)
            width, height = upright_size(container, stream, path)
        frame_index = _index_frames(path)
        frame_count = len(frame_index.pts)
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} is not a readable video ({exc}).", VIDEO_FIX) from exc
    if frame_count == 0 or width <= 0 or height <= 0:
        raise InputError(f"{path} has no video frames.", VIDEO_FIX)
    if fps is None:
        raise InputError(f"{path} has no frame rate in its header.", "Re-encode it with a fixed frame rate.")
    return VideoInfo(path, fps, frame_count, width, height, is_image=False, frame_index=frame_index)


def decodable_frames(path: Path) -> tuple[int, Fraction | None]:
    """(how many frames of the video decode, from the first up to the first that does not; its header's
    frame rate). A truncated file may list every frame in its index yet decode only part of them, or
    none; every frame is decoded once. InputError when it is no video at all."""
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video track.", VIDEO_FIX)
            stream = container.streams.video[0]
            check_picture_size(path, stream.codec_context.width, stream.codec_context.height)
            fps = stream_fps(stream)
            for frame in _decodable(container, stream):
                check_picture_size(path, frame.width, frame.height, decoded=True)
                count += 1
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} is not a readable video ({exc}).", VIDEO_FIX) from exc
    return count, fps


def ping_pong_index(output_index: int, frame_count: int) -> int:
    """Source frame for output frame `output_index`: 0, 1, ..., N-1, N-1, ..., 1, 0, 0, 1, ..."""
    if frame_count < 1 or output_index < 0:
        raise ValueError(f"need frame_count >= 1 and output_index >= 0, got {frame_count}, {output_index}")
    phase = output_index % (2 * frame_count)
    return phase if phase < frame_count else 2 * frame_count - 1 - phase


class FrameReader:
    """Streams RGB uint8 frames (H, W, 3) of a video or image without holding the whole video."""

    def __init__(self, info: VideoInfo) -> None:
        self.info = info
        self._image: np.ndarray | None = None
        self._index = info.frame_index
        self._open: set[av.container.InputContainer] = set()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for container in list(self._open):
            container.close()
        self._open.clear()

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Frames start .. stop-1 in order."""
        stop = self.info.frame_count if stop is None else stop
        self._check_range(start, stop)
        if self.info.is_image:
            yield from self._image_frames(stop - start)
            return
        if start == 0:
            yield from self._decode_from_start(0, stop)
        else:
            yield from self._decode_range(start, stop)

    def frame(self, index: int) -> np.ndarray:
        """One frame, decoded from the nearest earlier keyframe (for a few frames picked out of order)."""
        return next(self.frames(index, index + 1))

    def frames_reversed(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Frames stop-1 down to start, decoded chunk by chunk from the nearest earlier keyframe."""
        self._check_range(start, stop)
        if self.info.is_image:
            yield from self._image_frames(stop - start)
            return
        chunk = self._chunk_frames()
        chunk_stop = stop
        while chunk_stop > start:
            chunk_start = max(start, chunk_stop - chunk)
            frames = list(self._decode_range(chunk_start, chunk_stop))
            while frames:
                yield frames.pop()
            chunk_stop = chunk_start

    def cycled(self, count: int) -> Iterator[tuple[int, np.ndarray]]:
        """(source index, frame) for output frames 0 .. count-1, following `ping_pong_index`."""
        total = self.info.frame_count
        if total == 1:
            frame = next(self.frames(0, 1))
            for _ in range(count):
                yield 0, frame.copy()
            return
        produced = 0
        forward = True
        while produced < count:
            take = min(total, count - produced)
            if forward:
                yield from zip(range(take), self.frames(0, take), strict=True)
            else:
                yield from zip(
                    range(total - 1, total - 1 - take, -1),
                    self.frames_reversed(total - take, total),
                    strict=True,
                )
            produced += take
            forward = not forward

    # --- internals --------------------------------------------------------------------------------

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.info.frame_count:
            raise ValueError(f"frame range {start}..{stop} is outside 0..{self.info.frame_count}")

    def _chunk_frames(self) -> int:
        frame_bytes = self.info.width * self.info.height * RGB_CHANNELS
        return max(1, min(REVERSE_CHUNK_FRAMES, REVERSE_CHUNK_MAX_BYTES // frame_bytes))

    def _image_frames(self, count: int) -> Iterator[np.ndarray]:
        if self._image is None:
            self._image = _read_image(self.info.path)
        for _ in range(count):
            yield self._image.copy()

    def _shorten(self, decodable: int) -> None:
        """The frames from `decodable` on cannot be decoded (a damaged tail): from now on the video ends
        there, so the forward-backward cycle turns at its last good frame."""
        if 0 < decodable < self.info.frame_count:
            self.info = replace(self.info, frame_count=decodable)

    def _open_stream(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        container = av.open(str(self.info.path))
        self._open.add(container)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream

    def _release(self, container: av.container.InputContainer) -> None:
        self._open.discard(container)
        container.close()

    def _decode_from_start(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Decode from the first frame, counting frames; pads with the last frame if the decoder
        gives fewer frames than probed (a damaged tail), so timing stays aligned with the audio."""
        container, stream = self._open_stream()
        index = 0
        last: np.ndarray | None = None
        try:
            for frame in _decodable(container, stream):
                if index >= stop:
                    break
                if index >= start:
                    last = _to_rgb(frame)
                    yield last
                index += 1
        finally:
            self._release(container)
        if index < stop:
            self._shorten(index)
            if last is None:
                raise InputError(f"{self.info.path}: frame {index} could not be decoded.", VIDEO_FIX)
            for _ in range(stop - max(index, start)):
                yield last.copy()

    def _decode_range(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Frames start .. stop-1: seek to the keyframe at or before `start`, then decode forward."""
        if self._index is None:
            self._index = _index_frames(self.info.path)
        done = start
        if self._index.seekable and start > 0:
            for frame in self._decode_after_seek(self._index, start, stop):
                yield frame
                done += 1
        if done < stop:  # no usable seek, or timestamps disagreed: decode from the first frame
            yield from self._decode_from_start(done, stop)

    def _decode_after_seek(self, index: _FrameIndex, start: int, stop: int) -> Iterator[np.ndarray]:
        """Frames from `start` while their timestamps match the index; stops early otherwise."""
        container, stream = self._open_stream()
        try:
            try:
                keyframe = index.keyframe_pts_before(start)
                container.seek(keyframe, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                return
            wanted = start
            for frame in _decodable(container, stream):
                if frame.pts is None or frame.pts < index.pts[start]:
                    continue  # frames before the range, including undecodable leading ones
                if frame.pts != index.pts[wanted]:
                    return
                yield _to_rgb(frame)
                wanted += 1
                if wanted == stop:
                    return
        finally:
            self._release(container)


@dataclass(frozen=True)
class _FrameIndex:
    """Presentation timestamps of every frame, in order, and which ones are keyframes."""

    pts: list[int]
    keyframe_pts: list[int]
    seekable: bool  # every frame has a distinct timestamp and the first frame is a keyframe

    def keyframe_pts_before(self, frame: int) -> int:
        return self.keyframe_pts[bisect.bisect_right(self.keyframe_pts, self.pts[frame]) - 1]


def _index_frames(path: Path) -> _FrameIndex:
    """One demux pass (no decoding): the frames decoding will give, by their packets."""
    pts: list[int | None] = []
    keyframes: list[int] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if len(pts) == MAX_VIDEO_FRAMES:
                raise _too_long(path, f"it has more than {MAX_VIDEO_FRAMES:,} frames")
            pts.append(packet.pts)
            if packet.is_keyframe and packet.pts is not None:
                keyframes.append(packet.pts)
    known = [p for p in pts if p is not None]
    if len(known) < len(pts) or len(set(known)) < len(known):
        return _FrameIndex(list(range(len(pts))), [], seekable=False)
    ordered = sorted(known)
    seekable = bool(keyframes) and min(keyframes) == ordered[0]
    return _FrameIndex(ordered, sorted(keyframes), seekable)


def stream_fps(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate.numerator, rate.denominator)
    return None


def _decodable(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    """The stream's frames up to the first one that cannot be decoded (a damaged tail ends the video)."""
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except (StopIteration, av.error.FFmpegError):
            return
        yield frame


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame_to_rgb(frame)


def check_picture_size(path: Path | None, width: int, height: int, *, decoded: bool = False) -> None:
    """Raise InputError when a picture of width x height is over MAX_FRAME_PIXELS; `decoded`: the size
    is that of a decoded frame, not one a header claims."""
    if width * height > MAX_FRAME_PIXELS:
        where = "a video frame" if path is None else str(path)
        raise InputError(
            f"{where} is {width}x{height}: {width * height:,} pixels, over the limit of "
            f"{MAX_FRAME_PIXELS:,}" + ("." if decoded else "; it was not decoded."),
            SIZE_FIX,
        )


def _too_long(path: Path, why: str) -> InputError:
    return InputError(f"{path} is too long for lipsync: {why} (at most {MAX_VIDEO_FRAMES:,}).", LENGTH_FIX)


DISPLAY_MATRIX_VALUES = 9  # a 3x3 int32 matrix; a, b, c, d (values 0, 1, 3, 4) in 16.16 fixed point


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's display matrix (how players turn it: every phone portrait video has one), or None."""
    side_data: Any = frame.side_data  # PyAV's stub types this container as a single entry
    found = side_data.get("DISPLAYMATRIX")
    if found is None:
        return None
    values: tuple[int, ...] = struct.unpack(f"={DISPLAY_MATRIX_VALUES}i", bytes(found))
    return values


def quarter_turns(matrix: tuple[int, ...] | None) -> int:
    """Clockwise quarter turns a player applies for this matrix (0-3), as FFmpeg computes the angle."""
    if matrix is None:
        return 0
    a, b, c, d = (matrix[i] / 65536 for i in (0, 1, 3, 4))
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return 0
    clockwise = math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    return round(clockwise / 90) % 4


def upright(pixels: np.ndarray, matrix: tuple[int, ...] | None) -> np.ndarray:
    """The frame as players show it: turned (and mirrored) by its display matrix, the way FFmpeg's
    autorotate does it (transpose for quarter turns, flips for half turns and mirrored matrices)."""
    turns = quarter_turns(matrix)
    if matrix is None or (turns == 0 and matrix[0] > 0 and matrix[4] > 0):
        return pixels
    if turns == 1:  # 90 degrees clockwise; a mirrored matrix makes it a plain transpose
        turned = pixels.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(pixels, k=-1)
    elif turns == 3:  # 90 degrees counter-clockwise; mirrored: clockwise, then upside down
        turned = np.rot90(pixels, k=-1)[::-1] if matrix[3] < 0 else np.rot90(pixels, k=1)
    else:  # no turn or a half turn: mirror each axis the matrix flips
        turned = pixels[:, ::-1] if matrix[0] < 0 else pixels
        turned = turned[::-1] if matrix[4] < 0 else turned
    return np.ascontiguousarray(turned)


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) RGB uint8 pixels of a decoded frame, upright as players show it."""
    check_picture_size(None, frame.width, frame.height, decoded=True)  # a stream may change size midway
    return upright(np.ascontiguousarray(frame.to_ndarray(format="rgb24")), display_matrix(frame))


def upright_size(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path | None = None
) -> tuple[int, int]:
    """(width, height) of the stream's frames once upright: swapped for a quarter turn. A size over
    MAX_FRAME_PIXELS in the header raises InputError before any frame is decoded."""
    width, height = stream.codec_context.width, stream.codec_context.height
    check_picture_size(path, width, height)
    first = next(container.decode(stream), None)
    if first is not None and quarter_turns(display_matrix(first)) % 2:
        return height, width
    return width, height


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) a still image's header claims, read without decoding its pixels; InputError when
    the file is not an image or the size is over MAX_FRAME_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; the limit here is lower and raised below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{path} claims a size of over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, over the limit of "
            f"{MAX_FRAME_PIXELS:,}; it was not decoded.",
            SIZE_FIX,
        ) from exc
    except OSError as exc:
        if exc.errno is not None and not isinstance(exc, UnidentifiedImageError):
            raise InputError(f"{path} cannot be read ({exc}).", "Check the file's permissions.") from exc
        raise InputError(f"{path} is not a readable image.", VIDEO_FIX) from exc
    except (ValueError, SyntaxError) as exc:  # Pillow's word for some malformed headers
        raise InputError(f"{path} is not a readable image.", VIDEO_FIX) from exc
    check_picture_size(path, width, height)
    return width, height


def _read_image(path: Path) -> np.ndarray:
    """RGB pixels of a still image, turned upright by its EXIF orientation (phone photos need it). Its
    header is checked first: an image too large to hold is refused before it is decoded."""
    image_size(path)
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc}).", "Check the file's permissions.") from exc
    try:
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    except cv2.error as exc:
        raise InputError(f"{path} is not a readable image ({exc.msg}).", VIDEO_FIX) from exc
    if image is None:
        raise InputError(f"{path} is not a readable image.", VIDEO_FIX)
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
