"""Write RGB frames to an H.264 MP4 (or MOV), muxing in the audio of another file, atomically."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from fractions import Fraction
from glob import escape as glob_escape
from pathlib import Path
from types import TracebackType
from typing import Final

import av
import numpy as np

from lipsync.config import OUTPUT_CRF, VIDEO_OUTPUT_FORMATS
from lipsync.errors import InputError, OutputError
from lipsync.io.audio import AUDIO_FIX
from lipsync.io.files import process_alive, require_file

VIDEO_CODEC: Final = "libx264"
PIXEL_FORMAT = "yuv420p"
X264_PRESET = "veryfast"
AUDIO_CODEC: Final = "aac"
AUDIO_BIT_RATE = 192_000
AAC_SAMPLE_RATES = frozenset(
    {96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000}
)
FALLBACK_AUDIO_RATE = 48_000
# faststart puts the index first (playable while downloading); use_metadata_tags keeps custom keys.
MP4_FLAGS = "+faststart+use_metadata_tags"
NEW_FILE_MODE = 0o666  # narrowed by the umask, like any file the user creates
TEMP_TOKEN_BYTES = 4
PID_DIGITS = 10  # room kept for a process id (Linux allows up to 2^22)
NAME_MAX_BYTES = 255  # the longest file name ext4, xfs, btrfs and APFS take

OUTPUT_FIX = "Choose an output path in an existing folder you can write to."
WRITE_FIX = "Free some space on that disk (or write elsewhere), then run again; nothing was left behind."


class VideoWriter:
    """Encodes frames as they come; the output appears at `path` only when `close` succeeds."""

    def __init__(
        self,
        path: Path,
        fps: Fraction,
        width: int,
        height: int,
        *,
        audio_path: Path | None = None,
        metadata: Mapping[str, str] | None = None,
        crf: int = OUTPUT_CRF,
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.width, self.height = width, height
        self.frames_written = 0
        self._finished = False
        check_video_output(self.path, {"audio": Path(audio_path)} if audio_path is not None else {})
        self._temp = _create_temp_file(self.path)
        self._audio: _AudioMuxer | None = None
        try:
            self._container = av.open(
                str(self._temp),
                mode="w",
                format=VIDEO_OUTPUT_FORMATS[self.path.suffix.lower()],
                options={"movflags": MP4_FLAGS},
            )
            self._container.metadata.update(metadata or {})
            self._video = self._add_video_stream(crf)
            if audio_path is not None:
                self._audio = _AudioMuxer(Path(audio_path), self._container)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame of shape (height, width, 3)."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 frame of shape {(self.height, self.width, 3)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        padded = _pad_to_even(frame)
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = self._video.codec_context.time_base
        try:
            self._container.mux(self._video.encode(video_frame))
            self.frames_written += 1
            if self._audio is not None:
                self._audio.encode_until(self.frames_written / self.fps)
        except (OSError, av.error.FFmpegError) as exc:  # a full disk, a lost network share
            self.abort()
            raise OutputError(f"Could not write {self.path} ({exc}).", WRITE_FIX) from exc

    def close(self) -> Path:
        """Finish both streams, then move the finished file into place; returns the output path."""
        if self._finished:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise OutputError(f"No frames were written to {self.path}.", "Write at least one frame.")
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.finish()
            self._container.close()
            os.replace(self._temp, self.path)
            self._finished = True
        except (OSError, av.error.FFmpegError) as exc:
            self.abort()
            raise OutputError(f"Could not finish writing {self.path} ({exc}).", WRITE_FIX) from exc
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the unfinished file."""
        if self._finished:
            return
        self._finished = True
        for resource in (getattr(self, "_audio", None), getattr(self, "_container", None)):
            if resource is not None:
                with contextlib.suppress(Exception):
                    resource.close()
        self._temp.unlink(missing_ok=True)

    def _add_video_stream(self, crf: int) -> av.video.stream.VideoStream:
        stream = self._container.add_stream(
            VIDEO_CODEC, rate=self.fps, options={"crf": str(crf), "preset": X264_PRESET}
        )
        stream.width, stream.height = _even(self.width), _even(self.height)
        stream.pix_fmt = PIXEL_FORMAT
        stream.codec_context.time_base = 1 / self.fps
        stream.thread_type = "AUTO"
        return stream


class _AudioMuxer:
    """Streams the first audio track of a file into the container as AAC, on demand."""

    def __init__(self, source: Path, container: av.container.OutputContainer) -> None:
        require_file(source, "an audio file", AUDIO_FIX)
        self._container = container
        try:
            self._source = av.open(str(source))
        except av.error.FFmpegError as exc:
            raise InputError(f"{source} is not a readable audio file ({exc}).", AUDIO_FIX) from exc
        if not self._source.streams.audio:
            self._source.close()
            raise InputError(f"{source} has no audio track.", AUDIO_FIX)
        in_stream = self._source.streams.audio[0]
        rate = in_stream.codec_context.sample_rate
        rate = rate if rate in AAC_SAMPLE_RATES else FALLBACK_AUDIO_RATE
        layout = "mono" if in_stream.codec_context.channels == 1 else "stereo"
        self._stream = container.add_stream(AUDIO_CODEC, rate=rate)
        self._stream.layout = layout
        self._stream.format = "fltp"
        self._stream.bit_rate = AUDIO_BIT_RATE
        self._rate = rate
        self._resampler = av.AudioResampler(
            format="fltp", layout=layout, rate=rate, frame_size=self._stream.codec_context.frame_size
        )
        self._frames = self._resampled_frames()
        self._samples_out = 0

    def encode_until(self, seconds: Fraction) -> None:
        """Encode audio up to (at least) `seconds` from the start."""
        while self._samples_out < seconds * self._rate:
            frame = next(self._frames, None)
            if frame is None:
                return
            self._encode(frame)

    def finish(self) -> None:
        for frame in self._frames:
            self._encode(frame)
        self._container.mux(self._stream.encode(None))
        self.close()

    def close(self) -> None:
        self._source.close()

    def _encode(self, frame: av.AudioFrame) -> None:
        frame.pts = self._samples_out
        frame.time_base = Fraction(1, self._rate)
        self._samples_out += frame.samples
        self._container.mux(self._stream.encode(frame))

    def _resampled_frames(self) -> Iterator[av.AudioFrame]:
        for frame in self._source.decode(self._source.streams.audio[0]):
            frame.pts = None  # the encoder's timeline is ours; source gaps or offsets are not kept
            yield from self._resampler.resample(frame)
        yield from self._resampler.resample(None)


def output_file(value: str | Path) -> Path:
    """The output path a user gave; one written as a folder ("out/") is refused, not taken as a file."""
    if isinstance(value, str) and value.endswith(("/", os.sep)):
        raise OutputError(
            f"Output path {value} names a folder.", f"Give a file name in it, e.g. {value}out.mp4."
        )
    return Path(value)


def check_output_path(path: Path, inputs: Mapping[str, Path]) -> None:
    """Raise OutputError unless `path` can be written and is none of the `inputs` (by role, e.g. "audio").

    Cheap: callers run it before any long work, so a typo in the output path costs nothing.
    """
    if path.is_dir():
        raise OutputError(
            f"Output path {path} is a folder.", f"Give a file name in it, e.g. {path / 'out.mp4'}."
        )
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"Output folder {parent} does not exist.", f"Create it first: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder {parent} is not writable.", OUTPUT_FIX)
    for role, given in inputs.items():
        if _same_file(path, given):
            raise OutputError(
                f"Output path {path} is the {role} input: the same file as {given}.",
                "Write to a new file; lipsync never overwrites its inputs.",
            )


def check_video_output(path: Path, inputs: Mapping[str, Path]) -> None:
    """`check_output_path` for a video: its suffix must also name a container that is written
    (VIDEO_OUTPUT_FORMATS), so that a file called x.avi is never an MP4 inside."""
    check_output_path(path, inputs)
    problem = video_suffix_problem(path)
    if problem is not None:
        raise OutputError(f"Output path {path}: {problem}.", f"Name it e.g. {path.with_suffix('.mp4').name}.")


def video_suffix_problem(path: Path) -> str | None:
    """Why lipsync cannot write a video under this file name's suffix, or None when it can."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_OUTPUT_FORMATS:
        return None
    given = f"the suffix {path.suffix}" if path.suffix else "no suffix"
    return f"{given} names no container lipsync writes (it writes {', '.join(VIDEO_OUTPUT_FORMATS)})"


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _create_temp_file(path: Path) -> Path:
    """An exclusive new file next to `path`, so the final rename stays on one file system. Its name is
    the output's, shortened where needed so that a name the file system takes also fits with the suffix."""
    remove_dead_partials(path)
    while True:
        temp = path.with_name(_partial_name(path, os.getpid(), secrets.token_hex(TEMP_TOKEN_BYTES)))
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, NEW_FILE_MODE))
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"Cannot create a file in {path.parent} ({exc}).", OUTPUT_FIX) from exc
        return temp


def _partial_stem(path: Path) -> str:
    """`.NAME.partial-`, NAME shortened so that any process id and token still fit in a file name."""
    room = NAME_MAX_BYTES - len(".partial-") - PID_DIGITS - 1 - 2 * TEMP_TOKEN_BYTES - len(".mp4") - 1
    return "." + path.name.encode()[:room].decode(errors="ignore") + ".partial-"


def _partial_name(path: Path, pid: int, token: str) -> str:
    """`.NAME.partial-PID-TOKEN.mp4`: whose it is and for which output, recognisable by the next run."""
    return f"{_partial_stem(path)}{pid}-{token}.mp4"


def remove_dead_partials(path: Path) -> list[Path]:
    """Delete the unfinished files that runs which died (SIGKILL, a crash, a power cut) left for `path`;
    those of runs still alive are left alone. Returns what was removed."""
    removed = []
    prefix = _partial_stem(path)
    for leftover in path.parent.glob(f"{glob_escape(prefix)}*.mp4"):
        pid = leftover.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _even(size: int) -> int:
    return size + size % 2


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column once where a side is odd."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
