"""Offline dubbing: a video (or photo) plus a speech track in, the same video with new lips out.

Two streaming passes over the source, with bounded memory:
1. face analysis: landmarks and a smoothed crop box per source frame (small arrays, no frames kept);
2. generation: frames in output order (cycling forwards then backwards when the audio is longer),
   in batches: crop → VAE encode → audio window → one UNet pass → VAE decode → paste back → encode.
Frames without a face, or (with `silence="keep"`) in silent stretches, pass through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    FACE_SIZE,
    WHISPER_HIDDEN_SIZE,
    AudioFeatureMode,
    DubSettings,
    FaceSettings,
    SilenceMode,
    audio_tokens,
)
from lipsync.errors import InputError, NoFaceError
from lipsync.face.crop import CropBox, crop_face
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.face.mask import lower_face_mask
from lipsync.face.track import NO_BOX, FaceTrack, track_face
from lipsync.io.audio import Audio, load_audio
from lipsync.io.video import FrameReader, VideoInfo, ping_pong_index, probe_video
from lipsync.io.writer import VideoWriter, check_output_path
from lipsync.models.audio_features import AudioFeatureStream, BlockedAudioFeatures, frame_count_for_audio
from lipsync.models.device import resolve_device, resolve_dtype
from lipsync.models.loading import MuseTalkModels, load_models
from lipsync.models.sliding_features import SlidingAudioFeatures
from lipsync.models.unet import predict_latents
from lipsync.models.vae import decode_latents, encode_faces
from lipsync.pipeline.render import render_frames, timed
from lipsync.pipeline.silence import speech_strengths
from lipsync.pipeline.timing import Stage, StageTimes

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


class DubPipeline:
    """Loaded models plus settings; call it once per (source, audio, output)."""

    def __init__(self, models: MuseTalkModels, settings: DubSettings) -> None:
        self.models = models
        self.settings = settings

    @classmethod
    def from_weights(cls, weights: Path, settings: DubSettings) -> DubPipeline:
        device = resolve_device(settings.runtime.device)
        dtype = resolve_dtype(settings.runtime.dtype, device)
        return cls(load_models(weights, settings.version, device, dtype), settings)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run every network once on a full batch, so first-call costs stay out of timings."""
        size = self.settings.runtime.batch_size
        crops = np.zeros((size, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
        tokens = torch.zeros(
            (size, audio_tokens(self.models.audio_window), WHISPER_HIDDEN_SIZE),
            device=self.models.device,
            dtype=self.models.dtype,
        )
        decode_latents(self.models, predict_latents(self.models, encode_faces(self.models, crops), tokens))

    def __call__(
        self,
        source: Path,
        audio_path: Path,
        output: Path,
        *,
        progress: bool = True,
        max_frames: int | None = None,
    ) -> DubSummary:
        started = time.perf_counter()
        times = StageTimes(device=self.models.device)
        check_output_path(output, {"video": source, "audio": audio_path})

        info = probe_video(source, self.settings.image_fps)
        audio = load_audio(audio_path, AUDIO_SAMPLE_RATE)
        total = frame_count_for_audio(audio.duration, info.fps)
        if max_frames is not None:
            total = min(total, max_frames)
        if total == 0:
            raise InputError(
                f"{audio_path} lasts {audio.duration_s:.3f} s: "
                f"less than one frame at {float(info.fps):.2f} fps",
                "give a speech track at least one frame long",
            )

        with FrameReader(info) as reader:
            count = min(info.frame_count, total)
            track = find_faces(reader, info, count, self.settings.face, times, progress)
            if track.faces_found == 0:
                raise NoFaceError(
                    f"no face was found in any frame of {source}",
                    "use a video or photo where one face is clearly visible, frontal, at least 100 px wide",
                )
            strengths = mouth_strengths(self.settings.silence, audio, info.fps, total)
            features = audio_features(self.models, self.settings.audio_features, audio, info.fps)
            metadata = {"comment": UNTRAINED_LABEL} if self.models.untrained else {}
            with VideoWriter(
                output, info.fps, info.width, info.height, audio_path=audio_path, metadata=metadata
            ) as writer:
                with_face, generated = self._generate(
                    reader, track, features, strengths, writer, total, times, progress
                )

        return DubSummary(
            output=output,
            frames=total,
            frames_with_face=with_face,
            frames_generated=generated,
            fps=info.fps,
            audio_seconds=audio.duration_s,
            untrained=self.models.untrained,
            wall_seconds=time.perf_counter() - started,
            times=times,
        )

    def _generate(
        self,
        reader: FrameReader,
        track: FaceTrack,
        features: BlockedAudioFeatures,
        strengths: np.ndarray,
        writer: VideoWriter,
        total: int,
        times: StageTimes,
        progress: bool,
    ) -> tuple[int, int]:
        """Write `total` output frames; return (frames with a face, frames with a generated mouth)."""
        sources = np.array([ping_pong_index(i, track.frame_count) for i in range(total)], dtype=np.int64)
        has_face = track.boxes[sources, 0] != NO_BOX
        strengths = np.where(has_face, strengths, np.float32(0.0)).astype(np.float32)
        frames = timed(reader.cycled(total), times, Stage.DECODE)
        bar = tqdm(total=total, desc="dubbing", unit="frame", disable=not progress)
        prep = TrackedFaces(self.models, track)
        for frame in render_frames(
            self.models, prep, frames, features, strengths, self.settings.runtime.batch_size, times, bar
        ):
            with times.measure(Stage.ENCODE):
                writer.write(frame)
        bar.close()
        return int(np.count_nonzero(has_face)), int(np.count_nonzero(strengths > 0))


class TrackedFaces:
    """FacePrep for dubbing: latents encoded on the fly from each frame's crop; masks from its landmarks."""

    def __init__(self, models: MuseTalkModels, track: FaceTrack) -> None:
        self.models = models
        self.track = track

    def box(self, source: int) -> CropBox | None:
        return self.track.box(source)

    def mask(self, source: int) -> np.ndarray:
        box, landmarks = self.track.box(source), self.track.landmarks(source)
        assert box is not None and landmarks is not None
        return lower_face_mask(landmarks, box)

    def latents(self, sources: list[int], frames: list[np.ndarray], times: StageTimes) -> torch.Tensor:
        crops = []
        for source, frame in zip(sources, frames, strict=True):
            box = self.track.box(source)
            assert box is not None
            crops.append(crop_face(frame, box))
        with times.measure(Stage.VAE_ENCODE):
            return encode_faces(self.models, np.stack(crops))


def mouth_strengths(mode: SilenceMode, audio: Audio, fps: Fraction, total: int) -> np.ndarray:
    """Per output frame, how much generated mouth to show: all 1 with `generate`, 0 in pauses with `keep`."""
    if mode == "generate":
        return np.ones(total, dtype=np.float32)
    return speech_strengths(audio.samples, audio.sample_rate, fps, total)


def audio_features(
    models: MuseTalkModels, mode: AudioFeatureMode, audio: Audio, fps: Fraction
) -> BlockedAudioFeatures:
    """The reference's whole-file segments, or the sliding blocks a live stream uses."""
    if mode == "sliding":
        return SlidingAudioFeatures.offline(models, audio.samples, fps)
    return AudioFeatureStream(models, audio.samples, fps)


def find_faces(
    reader: FrameReader,
    info: VideoInfo,
    count: int,
    settings: FaceSettings,
    times: StageTimes,
    progress: bool,
    on_frame: Callable[[int], None] | None = None,
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
        track = track_face(frames, settings, info.width, info.height, detector=detector, on_frame=frame_done)
    bar.close()
    decode_here = times.seconds[Stage.DECODE] - decode_before
    times.seconds[Stage.LANDMARKS] += time.perf_counter() - started - decode_here
    return track
