"""The evaluated videos on one 25 fps timeline: a face pass first (landmarks, boxes), then the frames again.

Every metric sees the frames the same resampler gives (presentation time, as `data prepare`), so frame t
of the generated video, frame t of the reference and audio samples [640 t, 640 (t + 1)) belong together.
Videos are streamed twice rather than held in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE, FaceSettings
from lipsync.errors import InputError
from lipsync.eval.lse import LSE_FPS, SAMPLES_PER_VIDEO_FRAME
from lipsync.face.track import FaceTrack, track_face
from lipsync.io.audio import load_audio
from lipsync.io.resample import PresentationResampler, StreamTimes, probe_stream_times, rgb_frames
from lipsync.io.video import is_image_path

EVAL_FPS = LSE_FPS  # syncnet_python re-encodes to 25 fps; all metrics share this timeline
SAMPLES_PER_FRAME = SAMPLES_PER_VIDEO_FRAME  # 640
EVAL_FACE_SETTINGS = (
    FaceSettings()
)  # the v1.5 dub's crop box (10 px below the chin): the region dubbing changes


@dataclass(frozen=True)
class TrackedVideo:
    """A video read at EVAL_FPS, with its face followed through every frame."""

    path: Path
    times: StreamTimes
    track: FaceTrack
    audio_skip: int  # samples of its own audio track before frame 0
    max_frames: int | None

    @property
    def frame_count(self) -> int:
        return self.track.frame_count

    def frames(self) -> Iterator[np.ndarray]:
        """The same RGB frames the face pass saw, decoded again."""
        resampler = PresentationResampler(self.path, self.times, EVAL_FPS, AUDIO_SAMPLE_RATE)
        return itertools.islice(rgb_frames(resampler.frames()), self.frame_count)


def track_video(
    path: Path, max_frames: int | None = None, on_frame: Callable[[int], None] | None = None
) -> TrackedVideo:
    """Decode `path` at EVAL_FPS (at most max_frames) and follow its largest face."""
    path = Path(path)
    if is_image_path(path):
        raise InputError(f"{path} is an image", "evaluate a video: give the dubbed .mp4 and its source video")
    times = probe_stream_times(path)
    resampler = PresentationResampler(path, times, EVAL_FPS, AUDIO_SAMPLE_RATE)
    frames = itertools.islice(rgb_frames(resampler.frames()), max_frames)
    track = track_face(frames, EVAL_FACE_SETTINGS, times.width, times.height, on_frame=on_frame)
    if track.frame_count == 0:
        raise InputError(f"no frame of {path} could be decoded", "give a video that plays")
    return TrackedVideo(path, times, track, resampler.audio_skip, max_frames)


def speech_for(generated: TrackedVideo, audio: Path | None) -> tuple[np.ndarray, str] | None:
    """The speech the generated video should follow, aligned with its frame 0, and where it came from:
    the --audio file (from its start) or else the generated video's own track; None if neither exists."""
    if audio is not None:
        return load_audio(Path(audio)).samples, str(audio)
    if generated.times.audio_start is None:
        return None
    samples = load_audio(generated.path).samples
    return samples[generated.audio_skip :], f"{generated.path} (its audio track)"


def audio_envelope(samples: np.ndarray, frames: int) -> np.ndarray:
    """RMS of each frame's 640 samples (0 past the end of the audio), float32 (frames,)."""
    padded = np.zeros(frames * SAMPLES_PER_FRAME, dtype=np.float32)
    usable = samples[: len(padded)]
    padded[: len(usable)] = usable
    per_frame = padded.reshape(frames, SAMPLES_PER_FRAME).astype(np.float64)
    return np.sqrt(np.mean(per_frame**2, axis=1)).astype(np.float32)
