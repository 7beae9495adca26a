"""Read a video at a fixed frame rate by presentation time, aligned with its audio track.

Output frame k shows the source frame on screen at origin + k / fps, so variable-frame-rate input and
any source rate give the same timeline. The origin is the later of the first frame's time and the audio's
start: audio sample `audio_skip` (of the decoded track) lines up with output frame 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipsync.errors import InputError
from lipsync.io.video import VIDEO_FIX, frame_to_rgb, upright_size

FALLBACK_FPS = 25  # frame duration assumed when a stream states no rate and frames carry no times


@dataclass(frozen=True)
class StreamTimes:
    """What the resampler needs to know of a file's streams."""

    width: int
    height: int
    audio_start: Fraction | None  # seconds on the container clock; None: no audio track
    fallback_frame_seconds: Fraction  # per frame, where frames lack timestamps or durations


def seconds(timestamp: int | None, time_base: Fraction | None) -> Fraction | None:
    """A stream timestamp in seconds, exactly; None when it is unknown."""
    if timestamp is None or time_base is None:
        return None
    return timestamp * Fraction(time_base)


def probe_stream_times(path: Path) -> StreamTimes:
    """The first video stream's size and rate and the first audio stream's start; InputError if the file
    has no video stream or cannot be opened."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video track", VIDEO_FIX)
            video = container.streams.video[0]
            rate = video.average_rate or video.guessed_rate or video.base_rate
            audio_start: Fraction | None = None
            if container.streams.audio:
                audio = container.streams.audio[0]
                audio_start = seconds(audio.start_time, audio.time_base) or Fraction(0)
            width, height = upright_size(container, video)
            return StreamTimes(
                width=width,
                height=height,
                audio_start=audio_start,
                fallback_frame_seconds=1 / Fraction(rate) if rate else Fraction(1, FALLBACK_FPS),
            )
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot open {path}: {exc}", VIDEO_FIX) from exc


class PresentationResampler:
    """Frames of `path` at `fps`; with `audio_samples` (the decoded track's length at `sample_rate`),
    output stops where the audio ends. `audio_skip` and `frame_limit` are known once frames() started."""

    def __init__(
        self,
        path: Path,
        times: StreamTimes,
        fps: int,
        sample_rate: int,
        audio_samples: int | None = None,
    ) -> None:
        self._path = path
        self._times = times
        self._fps = fps
        self._sample_rate = sample_rate
        self._audio_samples = audio_samples
        self.audio_skip = 0
        self.frame_limit: int | None = None

    def _start(self, first_time: Fraction) -> Fraction:
        audio_start = self._times.audio_start
        origin = first_time if audio_start is None else max(first_time, audio_start)
        if audio_start is not None:
            self.audio_skip = round((origin - audio_start) * self._sample_rate)
        if self._audio_samples is not None:
            samples_per_frame = Fraction(self._sample_rate, self._fps)
            self.frame_limit = int(max(0, self._audio_samples - self.audio_skip) // samples_per_frame)
        return origin

    def _more(self, k: int) -> bool:
        return self.frame_limit is None or k < self.frame_limit

    def frames(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """(source frame number, frame) for output frames 0, 1, ...; a frame repeats when the source
        rate is lower, and source frames are skipped when it is higher. InputError if decoding fails."""
        step = Fraction(1, self._fps)
        try:
            with av.open(str(self._path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                held: av.VideoFrame | None = None
                held_number, held_time = -1, Fraction(0)
                origin = Fraction(0)
                k = 0
                for number, frame in enumerate(container.decode(stream)):
                    t = seconds(frame.pts, frame.time_base)
                    if t is None:
                        t = number * self._times.fallback_frame_seconds
                    if held is None:
                        origin = self._start(t)
                    else:
                        t = max(t, held_time)
                        while self._more(k) and origin + k * step < t:
                            yield held_number, held
                            k += 1
                    if not self._more(k):
                        return
                    held, held_number, held_time = frame, number, t
                if held is None:
                    return
                end = held_time + self._times.fallback_frame_seconds
                while self._more(k) and origin + k * step < end:
                    yield held_number, held
                    k += 1
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode {self._path}: {exc}", VIDEO_FIX) from exc


def rgb_frames(frames: Iterator[tuple[int, av.VideoFrame]]) -> Iterator[np.ndarray]:
    """RGB arrays of resampled frames, converting a repeated source frame once."""
    last_number, last = -1, np.zeros(0, np.uint8)
    for number, frame in frames:
        if number != last_number:
            last_number, last = number, frame_to_rgb(frame)
        yield last
