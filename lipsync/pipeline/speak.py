"""Speaking from a prepared avatar: only the audio-dependent work runs (conditioning, generation, paste).

Given the same source, options and audio, the frames equal `lipsync dub`'s frame for frame: the avatar holds
exactly what dubbing would compute on the way (frames, boxes, masks, the generator's prepared arrays), and
the same render core runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings
from lipsync.errors import InputError
from lipsync.io.audio import Audio, frame_count_for_audio, load_audio
from lipsync.io.writer import VideoWriter, check_video_output, output_file
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import Avatar
from lipsync.pipeline.dub import UNTRAINED_LABEL, DubSummary, mouth_strengths
from lipsync.pipeline.render import generator_times, render_frames, step_aligned, timed
from lipsync.timing import Stage, StageTimes


class SpeakPipeline:
    """A loaded generator plus settings (silence, audio features, batch size); call it per (avatar, audio)."""

    def __init__(self, generator: Generator, settings: DubSettings | None = None) -> None:
        self.generator = generator
        self.settings = settings or DubSettings()

    def frames(
        self, avatar: Avatar, audio: Audio, times: StageTimes, bar: tqdm | None = None
    ) -> Iterator[np.ndarray]:
        """The output frames, in order, for `audio` spoken by `avatar`."""
        sources, strengths = self.plan(avatar, audio)
        yield from self._render(avatar, audio, sources, strengths, times, bar)

    def _render(
        self,
        avatar: Avatar,
        audio: Audio,
        sources: np.ndarray,
        strengths: np.ndarray,
        times: StageTimes,
        bar: tqdm | None,
    ) -> Iterator[np.ndarray]:
        conditioning = self.generator.offline_audio(audio.samples, avatar.fps, self.settings.audio_features)
        pairs = timed(((int(s), avatar.frame(int(s))) for s in sources), times, Stage.DECODE)
        batch_size = step_aligned(self.settings.runtime.batch_size, self.generator.step_frames)
        yield from render_frames(
            self.generator, avatar, pairs, conditioning, strengths, batch_size, times, bar
        )

    def plan(self, avatar: Avatar, audio: Audio) -> tuple[np.ndarray, np.ndarray]:
        """Source frame and mouth strength of every output frame (strength 0: no face, or silence)."""
        total = frame_count_for_audio(audio.duration, avatar.fps)
        sources = avatar.cycle[np.arange(total) % len(avatar.cycle)]
        strengths = mouth_strengths(self.settings.silence, audio, avatar.fps, total)
        strengths = np.where(avatar.boxes[sources, 0] >= 0, strengths, np.float32(0.0)).astype(np.float32)
        return sources, strengths

    def __call__(
        self, avatar: Avatar, audio: str | Path, output: str | Path, *, progress: bool = True
    ) -> DubSummary:
        """Write `output` (.mp4): `avatar` saying the speech in `audio`; return the summary."""
        started = time.perf_counter()
        audio_path, output = Path(audio), output_file(output)
        check_video_output(output, {"audio": audio_path, "avatar source": avatar.info.source})
        speech = load_audio(audio_path, AUDIO_SAMPLE_RATE)
        total = frame_count_for_audio(speech.duration, avatar.fps)
        if total == 0:
            raise InputError(
                f"{audio_path} lasts {speech.duration_s:.3f} s: "
                f"less than one frame at {float(avatar.fps):.2f} fps",
                "give a speech track at least one frame long",
            )
        sources, strengths = self.plan(avatar, speech)
        times = generator_times(self.generator)
        untrained = self.generator.untrained or avatar.info.untrained
        metadata = {"comment": UNTRAINED_LABEL} if untrained else {}
        bar = tqdm(total=total, desc=f"speaking as {avatar.info.name}", unit="frame", disable=not progress)
        size = (avatar.info.width, avatar.info.height)
        with VideoWriter(output, avatar.fps, *size, audio_path=audio_path, metadata=metadata) as writer:
            for frame in self._render(avatar, speech, sources, strengths, times, bar):
                with times.measure(Stage.ENCODE):
                    writer.write(frame)
        bar.close()
        return DubSummary(
            output=output,
            frames=total,
            frames_with_face=int(np.count_nonzero(avatar.boxes[sources, 0] >= 0)),
            frames_generated=int(np.count_nonzero(strengths > 0)),
            fps=avatar.fps,
            audio_seconds=speech.duration_s,
            untrained=untrained,
            wall_seconds=time.perf_counter() - started,
            times=times,
        )
