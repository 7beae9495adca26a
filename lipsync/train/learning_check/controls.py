"""The controls the trained model is compared with: shuffled audio, and a mouth copied from another frame.

* Shuffled audio: the tail's audio cut into pieces (0.2 s: one mel window) put in a random order (fixed
  seed). The same model dubs with it; the scores still use the tail's own audio, so a model that follows
  the audio should lose sync here.
* Copied mouth (no model): every frame gets the lower face of another frame of the same video, at least
  `min_distance` frames away, drawn at random (fixed seed per frame). It is a Generator, so the dubbing
  pipeline finds, crops and pastes exactly as for the family: the family's crop box and lower-face mask,
  the crop resized through the family's face size. A real mouth, never in sync except by chance.
* Real landmarks (landmark-prior family): the family's own generator with the transformer's lower jaw and
  lips replaced by the frame's real ones (tracked as `dub` tracks), so the renderer alone is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from lipsync.config import AudioFeatureMode, FaceSettings, StreamSettings
from lipsync.errors import InputError, LipsyncError
from lipsync.face.crop import CropBox
from lipsync.face.landmarks import FaceLandmarks
from lipsync.models.generator import (
    ArraySpec,
    AudioConditioning,
    FaceBatch,
    GenerationRequest,
    Generator,
    GeneratorInfo,
    StreamingAudio,
)
from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS
from lipsync.timing import StageTimes

CROPS = "crops"  # reference arrays: the crop of every frame with a face ...
SOURCES = "sources"  # ... and its frame number


def shuffled_audio(samples: np.ndarray, piece_samples: int, seed: int) -> np.ndarray:
    """`samples` cut into pieces of `piece_samples` (the last may be shorter) in a random order."""
    if piece_samples < 1:
        raise ValueError(f"piece_samples must be at least 1, got {piece_samples}")
    pieces = [samples[start : start + piece_samples] for start in range(0, len(samples), piece_samples)]
    order = np.random.default_rng(seed).permutation(len(pieces))
    return np.concatenate([pieces[i] for i in order]) if pieces else samples.copy()


class _NoAudio:
    """Conditioning for a generator that ignores the audio."""

    def windows(self, frame_indices: Sequence[int]) -> Any:
        return None


class CopiedMouthGenerator(Generator):
    """Pastes the face of a random other frame (at least `min_distance` away) with `family`'s rules."""

    family = "copied-mouth"

    def __init__(self, family: Generator, seed: int, min_distance: int) -> None:
        super().__init__(GeneratorInfo(self.family, None, None, torch.device("cpu"), torch.float32, False))
        self.face_size = family.face_size
        self._family = family
        self._seed = seed
        self._min_distance = min_distance

    def crop_box(
        self, points: np.ndarray, frame_width: int, frame_height: int, settings: FaceSettings
    ) -> CropBox | None:
        return self._family.crop_box(points, frame_width, frame_height, settings)

    def blend_mask(self, landmarks: FaceLandmarks, box: CropBox) -> np.ndarray:
        return self._family.blend_mask(landmarks, box)

    def frame_arrays(self) -> dict[str, ArraySpec]:
        return {}

    def prepare(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        return {}

    def reference_frames(self, has_face: np.ndarray, points: np.ndarray) -> list[int]:
        return [int(i) for i in np.flatnonzero(has_face)]

    def prepare_references(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        return {CROPS: faces.crops, SOURCES: np.asarray(faces.sources, dtype=np.int64)}

    def offline_audio(self, samples: np.ndarray, fps: Fraction, mode: AudioFeatureMode) -> AudioConditioning:
        return _NoAudio()

    def streaming_audio(self, fps: Fraction, settings: StreamSettings) -> StreamingAudio:
        raise LipsyncError("the copied-mouth control dubs whole files only", "use it with DubPipeline")

    def donor(self, frame: int, sources: np.ndarray) -> int:
        """The row of `sources` whose face frame `frame` gets: random, at least min_distance away."""
        far = np.flatnonzero(np.abs(sources - frame) >= self._min_distance)
        if far.size == 0:
            raise InputError(
                f"no frame with a face is {self._min_distance} or more frames from frame {frame}",
                "use longer tails (a longer clip, or a smaller head_fraction)",
            )
        return int(far[np.random.default_rng([self._seed, frame]).integers(far.size)])

    def generate(self, request: GenerationRequest, times: StageTimes) -> np.ndarray:
        crops, sources = request.references[CROPS], request.references[SOURCES]
        return np.stack([crops[self.donor(frame, sources)] for frame in request.sources])


class RealLandmarkGenerator(LandmarkPriorGenerator):
    """`family`'s networks, drawing each frame from its own real landmarks instead of the transformer's:
    the five target sketches of frame s show the tracked landmarks of s − 2 … s + 2 (as in training)."""

    def __init__(self, family: LandmarkPriorGenerator) -> None:
        super().__init__(family.models, family.info.weights)

    def _predict(self, mels: torch.Tensor, windows: np.ndarray, reference_points: np.ndarray) -> np.ndarray:
        return windows[..., CONTENT_POINTS]
