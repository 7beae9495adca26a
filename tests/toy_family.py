"""A toy generator family for tests: it pastes the reference frame's mouth, shifted down by the loudness of
the audio around each frame. No networks, and nothing in the pipelines or the server knows it exists: it
proves the generator interface is enough for a family of its own."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from lipsync.config import AudioFeatureMode, StreamSettings
from lipsync.io.audio import frame_count_for_audio, frame_start_sample
from lipsync.models.generator import ArraySpec, FaceBatch, GenerationRequest, Generator, GeneratorInfo
from lipsync.models.weights import (
    WEIGHTS_MANIFEST,
    FileCheck,
    ModelEntry,
    WeightsReport,
    is_untrained,
    read_weights_manifest,
    write_model_entry,
)
from lipsync.timing import StageTimes

SIZE = 64
HALF = SIZE // 2
CONTEXT_SAMPLES = 640  # 40 ms of audio on each side of a frame's own: the toy's lookahead
MAX_SHIFT = 12  # px the mouth moves down at full loudness


class LoudnessAudio:
    """Per frame, the RMS of its samples with 40 ms either side (a StreamingAudio; the toy keeps it all)."""

    def __init__(self, fps: Fraction) -> None:
        self.fps = Fraction(fps)
        self._chunks: list[np.ndarray] = []
        self._finished = False

    @property
    def samples_received(self) -> int:
        return sum(len(c) for c in self._chunks)

    @property
    def finished(self) -> bool:
        return self._finished

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(np.asarray(samples, dtype=np.float32))

    def finish(self) -> None:
        self._finished = True

    def ready_frames(self, start: int = 0) -> int:
        received = self.samples_received
        total = frame_count_for_audio(Fraction(received, 16_000), self.fps)
        ready = start
        while ready < total and (self._finished or self._end(ready) <= received):
            ready += 1
        return ready

    def forget_before(self, frame_index: int) -> None:
        pass

    def samples(self, start: int, stop: int) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.float32), *self._chunks])[start:stop]

    def windows(self, frame_indices: Sequence[int]) -> np.ndarray:
        held = self.samples(0, self.samples_received)
        starts = [max(0, frame_start_sample(i, self.fps) - CONTEXT_SAMPLES) for i in frame_indices]
        ends = [self._end(i) for i in frame_indices]
        return np.array([np.sqrt(np.mean(held[s:e] ** 2)) for s, e in zip(starts, ends, strict=True)])

    def _end(self, frame: int) -> int:
        return frame_start_sample(frame + 1, self.fps) + CONTEXT_SAMPLES


class ToyGenerator(Generator):
    family = "toy"
    face_size = SIZE

    def __init__(self) -> None:
        super().__init__(GeneratorInfo("toy", None, None, torch.device("cpu"), torch.float32, untrained=True))

    def frame_arrays(self) -> dict[str, ArraySpec]:
        return {"mouth": ArraySpec((HALF, SIZE, 3), "uint8")}

    def prepare(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        return {"mouth": faces.crops[:, HALF:]}

    def reference_frames(self, has_face: np.ndarray, points: np.ndarray) -> list[int]:
        return [int(np.flatnonzero(has_face)[0])]

    def prepare_references(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        return {"face": faces.crops[0]}

    def offline_audio(self, samples: np.ndarray, fps: Fraction, mode: AudioFeatureMode) -> LoudnessAudio:
        audio = LoudnessAudio(fps)
        audio.append(samples)
        audio.finish()
        return audio

    def streaming_audio(self, fps: Fraction, settings: StreamSettings) -> LoudnessAudio:
        return LoudnessAudio(fps)

    def generate(self, request: GenerationRequest, times: StageTimes) -> np.ndarray:
        faces = np.repeat(request.references["face"][None], len(request.sources), axis=0)
        for face, mouth, loudness in zip(faces, request.prepared["mouth"], request.conditioning, strict=True):
            shift = min(MAX_SHIFT, int(loudness * 4 * MAX_SHIFT))
            face[HALF + shift :] = mouth[: HALF - shift]
        return faces


# --- what a family package offers lipsync.models.families -------------------------------------------

FAMILY = "toy"
VERSIONS = ("v1",)
DEFAULT_VERSION = "v1"


def load(root: Path, version: str, device: torch.device, dtype: torch.dtype) -> ToyGenerator:
    return ToyGenerator()


def check(root: Path, version: str | None = None) -> WeightsReport:
    listed = FAMILY in read_weights_manifest(root)
    file = FileCheck(Path(root) / WEIGHTS_MANIFEST, "present" if listed else "missing", "")
    return WeightsReport(Path(root), FAMILY, "toy", (file,), is_untrained(root, FAMILY))


def scaffold(root: Path, tiny: bool = False, seed: int = 0, face_size: int | None = None) -> None:
    write_model_entry(root, ModelEntry(FAMILY, DEFAULT_VERSION, "tiny", untrained=True))


def recognise(root: Path) -> bool:
    return False
