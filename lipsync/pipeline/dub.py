"""Offline dubbing: a video (or photo) plus a speech track in, the same video with new lips out.

Two streaming passes over the source, with bounded memory:
1. face analysis: landmarks and a smoothed crop box per source frame (small arrays, no frames kept);
2. generation: frames in output order (cycling forwards then backwards when the audio is longer),
   in batches: crop → the generator's per-frame arrays (MuseTalk: VAE encode) → its audio conditioning
   → generate (MuseTalk: one UNet pass, VAE decode) → paste back with its mask → encode.
Frames without a face, or (with `silence="keep"`) in silent stretches, pass through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    MAX_VIDEO_FRAMES,
    DeviceChoice,
    DtypeChoice,
    DubSettings,
    FaceSettings,
    SilenceMode,
)
from lipsync.errors import InputError, NoFaceError
from lipsync.face.crop import CropBox
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.face.track import NO_BOX, BoxRule, FaceTrack, track_face
from lipsync.io.audio import Audio, frame_count_for_audio, frame_start_sample, load_audio, to_pcm16
from lipsync.io.video import FrameReader, VideoInfo, ping_pong_index, probe_video
from lipsync.io.writer import VideoWriter, check_video_output, output_file
from lipsync.models.families import load_generator
from lipsync.models.generator import Generator
from lipsync.pipeline.render import (
    FACE_PASS_SHARE,
    ProgressCallback,
    face_batch,
    generator_times,
    reference_arrays,
    render_frames,
    step_aligned,
    timed,
)
from lipsync.pipeline.silence import speech_strengths
from lipsync.timing import Stage, StageTimes

UNTRAINED_LABEL = (
    "made with UNTRAINED scaffolded weights (lipsync weights scaffold): "
    "the mouth is random output, not a real lip-sync result"
)


@dataclass(frozen=True)
class DubSummary:
    """What a dubbing run produced, and where the time went."""

    output: Path
    frames: int
    frames_with_face: int
    frames_generated: int
    fps: Fraction
    audio_seconds: float
    untrained: bool
    wall_seconds: float
    times: StageTimes = field(repr=False)

    def format(self) -> str:
        lines = [
            f"wrote {self.output}",
            f"  frames: {self.frames} at {float(self.fps):.3f} fps ({self.audio_seconds:.2f} s of audio)",
            f"  frames with a face: {self.frames_with_face}; mouth generated in: {self.frames_generated}",
            f"  wall time: {self.wall_seconds:.1f} s ({self.frames / max(self.wall_seconds, 1e-9):.2f} fps)",
            "  time per stage:",
            self.times.table(self.frames),
        ]
        if self.untrained:
            lines.insert(0, f"WARNING: {UNTRAINED_LABEL}")
        return "\n".join(lines)


@dataclass(frozen=True)
class OutputFrame:
    """One output frame with the audio it shows."""

    index: int  # output frame number, from 0
    time: float  # index / fps, in seconds
    image: np.ndarray  # (H, W, 3) RGB uint8
    audio: np.ndarray  # int16 mono samples at 16 kHz that this frame shows


@dataclass(frozen=True)
class _Plan:
    """What a dub of one (source, speech) pair will make, decided before any frame is generated."""

    info: VideoInfo
    audio: Audio
    total: int
    untrained_metadata: dict[str, str]


class DubPipeline:
    """A loaded generator plus settings; call it once per (source, speech, output).

    >>> pipe = DubPipeline.from_pretrained("models", bbox_shift=5)
    >>> pipe("face.mp4", "speech.wav", "out.mp4")
    """

    def __init__(self, generator: Generator, settings: DubSettings | None = None) -> None:
        self.generator = generator
        self.settings = settings or DubSettings()

    @classmethod
    def from_pretrained(
        cls,
        weights: str | Path,
        device: DeviceChoice | None = None,
        dtype: DtypeChoice | None = None,
        settings: DubSettings | None = None,
        **options: Any,
    ) -> DubPipeline:
        """Load the generator a weights folder holds, on `device` ("auto", "cpu", "cuda") in `dtype`
        ("auto", "fp32", "bf16", "fp16"); both default to the settings' ("auto" unless `settings` says).
        `options` are any DubSettings field, or a field of its face and runtime settings (bbox_shift,
        extra_margin, face_index, batch_size, silence, ...), applied over `settings`."""
        given = {name: value for name, value in (("device", device), ("dtype", dtype)) if value is not None}
        settings = (settings or DubSettings()).with_options(**given, **options)
        generator = load_generator(
            Path(weights), settings.model, settings.version, settings.runtime.device, settings.runtime.dtype
        )
        return cls(generator, settings)

    def warm_up(self) -> None:
        """Run every network once on a full batch, so first-call costs stay out of timings."""
        self.generator.warm_up(self._batch_size)

    @property
    def _batch_size(self) -> int:
        return step_aligned(self.settings.runtime.batch_size, self.generator.step_frames)

    def __call__(
        self,
        source: str | Path,
        audio: str | Path,
        output: str | Path,
        *,
        progress: bool = True,
        max_frames: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> DubSummary:
        """Dub `source` (video or photo) with the speech in `audio`; write `output` (.mp4) and summarise.

        `on_progress(fraction)` is called as the work goes on (a server's job reports it), besides the bar.
        """
        started = time.perf_counter()
        source, audio_path, output = Path(source), Path(audio), output_file(output)
        times = generator_times(self.generator)
        check_video_output(output, {"video": source, "audio": audio_path})
        plan = self._plan(source, audio_path, max_frames)
        counts = _Counts()
        info = plan.info
        with VideoWriter(
            output, info.fps, info.width, info.height, audio_path=audio_path, metadata=plan.untrained_metadata
        ) as writer:
            for index, frame in enumerate(self._render(source, plan, times, progress, counts, on_progress)):
                with times.measure(Stage.ENCODE):
                    writer.write(frame)
                if on_progress is not None:
                    on_progress(FACE_PASS_SHARE + (1 - FACE_PASS_SHARE) * (index + 1) / plan.total)

        return DubSummary(
            output=output,
            frames=plan.total,
            frames_with_face=counts.with_face,
            frames_generated=counts.generated,
            fps=info.fps,
            audio_seconds=plan.audio.duration_s,
            untrained=self.generator.untrained,
            wall_seconds=time.perf_counter() - started,
            times=times,
        )

    def frames(
        self, source: str | Path, audio: str | Path, *, progress: bool = False, max_frames: int | None = None
    ) -> Iterator[OutputFrame]:
        """The output frames in order, each with the 16 kHz samples it shows; nothing is written."""
        source, audio_path = Path(source), Path(audio)
        plan = self._plan(source, audio_path, max_frames)
        pcm = to_pcm16(plan.audio.samples)
        fps = plan.info.fps
        times = generator_times(self.generator)
        for index, image in enumerate(self._render(source, plan, times, progress, _Counts())):
            samples = pcm[frame_start_sample(index, fps) : frame_start_sample(index + 1, fps)]
            yield OutputFrame(index, float(index / fps), image, samples)

    def _plan(self, source: Path, audio_path: Path, max_frames: int | None) -> _Plan:
        info = probe_video(source, self.settings.image_fps)
        audio = load_audio(audio_path, AUDIO_SAMPLE_RATE)
        total = frame_count_for_audio(audio.duration, info.fps)
        if max_frames is not None:
            total = min(total, max_frames)
        if total > MAX_VIDEO_FRAMES:  # a frame rate the header may make up, times the audio's length
            raise InputError(
                f"{audio_path} lasts {audio.duration_s:.1f} s: at {float(info.fps):.2f} fps, that is "
                f"{total:,} frames, over the limit of {MAX_VIDEO_FRAMES:,}",
                "give a shorter speech track, or a video or --image-fps with a lower frame rate",
            )
        if total == 0:
            raise InputError(
                f"{audio_path} lasts {audio.duration_s:.3f} s: "
                f"less than one frame at {float(info.fps):.2f} fps",
                "give a speech track at least one frame long",
            )
        metadata = {"comment": UNTRAINED_LABEL} if self.generator.untrained else {}
        return _Plan(info, audio, total, metadata)

    def _render(
        self,
        source: Path,
        plan: _Plan,
        times: StageTimes,
        progress: bool,
        counts: _Counts,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[np.ndarray]:
        """Output frames in order: a face pass over the source, then generation in batches."""
        info, total = plan.info, plan.total
        with FrameReader(info) as reader:
            count = min(info.frame_count, total)

            def face_progress(done: int) -> None:
                if on_progress is not None:
                    on_progress(FACE_PASS_SHARE * done / count)

            track = find_faces(
                reader,
                info,
                count,
                self.settings.face,
                times,
                progress,
                on_frame=face_progress,
                box_rule=self.generator.crop_box,
            ).head(reader.info.frame_count)  # shorter when the video's tail cannot be decoded
            if track.faces_found == 0:
                raise NoFaceError(
                    f"no face was found in any frame of {source}",
                    "use a video or photo where one face is clearly visible, frontal, at least 100 px wide",
                )
            strengths = mouth_strengths(self.settings.silence, plan.audio, info.fps, total)
            conditioning = self.generator.offline_audio(
                plan.audio.samples, info.fps, self.settings.audio_features
            )
            sources = np.array([ping_pong_index(i, track.frame_count) for i in range(total)], dtype=np.int64)
            has_face = track.boxes[sources, 0] != NO_BOX
            strengths = np.where(has_face, strengths, np.float32(0.0)).astype(np.float32)
            counts.with_face = int(np.count_nonzero(has_face))
            counts.generated = int(np.count_nonzero(strengths > 0))
            references = reference_arrays(self.generator, track, reader.frame, times)
            prep = TrackedFaces(self.generator, track, references)
            frames = timed(reader.cycled(total), times, Stage.DECODE)
            bar = tqdm(total=total, desc="dubbing", unit="frame", disable=not progress)
            yield from render_frames(
                self.generator, prep, frames, conditioning, strengths, self._batch_size, times, bar
            )
            bar.close()


@dataclass
class _Counts:
    with_face: int = 0
    generated: int = 0


class TrackedFaces:
    """FacePrep for dubbing: arrays prepared on the fly from each frame's crop; masks from its landmarks."""

    def __init__(self, generator: Generator, track: FaceTrack, references: dict[str, np.ndarray]) -> None:
        self.generator = generator
        self.track = track
        self._references = references

    @property
    def references(self) -> dict[str, np.ndarray]:
        return self._references

    def box(self, source: int) -> CropBox | None:
        return self.track.box(source)

    def mask(self, source: int) -> np.ndarray:
        box, landmarks = self.track.box(source), self.track.landmarks(source)
        assert box is not None and landmarks is not None
        return self.generator.blend_mask(landmarks, box)

    def prepared(
        self, sources: list[int], frames: list[np.ndarray], times: StageTimes
    ) -> dict[str, np.ndarray]:
        return self.generator.prepare(face_batch(self.generator, self.track, sources, frames), times)


def mouth_strengths(mode: SilenceMode, audio: Audio, fps: Fraction, total: int) -> np.ndarray:
    """Per output frame, how much generated mouth to show: all 1 with `generate`, 0 in pauses with `keep`."""
    if mode == "generate":
        return np.ones(total, dtype=np.float32)
    return speech_strengths(audio.samples, audio.sample_rate, fps, total)


def find_faces(
    reader: FrameReader,
    info: VideoInfo,
    count: int,
    settings: FaceSettings,
    times: StageTimes,
    progress: bool,
    on_frame: Callable[[int], None] | None = None,
    box_rule: BoxRule | None = None,
) -> FaceTrack:
    """The chosen face's landmarks and smoothed crop box in source frames 0 .. count-1.

    `on_frame(done)` is called after each frame with the number of frames analysed so far.
    """
    bar = tqdm(total=count, desc="finding faces", unit="frame", disable=not progress, leave=False)

    def frame_done(index: int) -> None:
        bar.update(1)
        if on_frame is not None:
            on_frame(index + 1)

    started = time.perf_counter()
    decode_before = times.seconds[Stage.DECODE]
    frames = timed(reader.frames(0, count), times, Stage.DECODE)
    with FaceMeshDetector(settings.max_faces, video_mode=not info.is_image) as detector:
        track = track_face(
            frames,
            settings,
            info.width,
            info.height,
            detector=detector,
            on_frame=frame_done,
            box_rule=box_rule,
        )
    bar.close()
    decode_here = times.seconds[Stage.DECODE] - decode_before
    times.seconds[Stage.LANDMARKS] += time.perf_counter() - started - decode_here
    return track
