"""The landmark-prior family behind the generator interface (see this folder's README, Inference).

Per source frame, once (avatars store it): the face crop. Per video, once: every frame's 68 landmarks
normalised to its crop (`track_references`), and the reference frames (`reference_frames`, the rule in
`references`) with their crops and landmarks; their encodings by M_a's E_r and M_r's lip encoder read
nothing of the target, so the generator computes them once per reference set and keeps them (a content-
keyed cache; a live session computes them when it opens). Per output frame t with source frame s: the landmark
transformer reads the mel windows of t − 2 … t + 2, the pose landmarks of s − 2 … s + 2 and the first
N_l references' landmarks, and predicts the lower jaw and lips of all five frames; their sketches, the
occluded crop and the first N references go through M_a; M_r draws the face from them, the first 5
references as lip references and frame t's mel window. The pipeline pastes it back with the lower-face mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lipsync.config import AudioFeatureMode, FaceSettings, StreamSettings
from lipsync.errors import InputError
from lipsync.face.crop import CropBox
from lipsync.face.track import FaceTrack
from lipsync.models.encoder_cache import EncoderCache, frame_key
from lipsync.models.generator import ArraySpec, FaceBatch, GenerationRequest, Generator, GeneratorInfo
from lipsync.models.landmark_prior.alignment import ReferenceFeatures
from lipsync.models.landmark_prior.landmark_sets import (
    CONTENT_POINTS,
    COORDINATES,
    LANDMARK_COUNT,
    LIP_EDGES,
    POSE_POINTS,
    REFERENCE_ORDER,
)
from lipsync.models.landmark_prior.mel_windows import CENTRE, SequenceMelWindows
from lipsync.models.landmark_prior.networks import LandmarkPriorModels, load_models
from lipsync.models.landmark_prior.references import neighbour_frames, spread_frames
from lipsync.models.landmark_prior.sketch import draw_sketch, sketch_stack
from lipsync.models.landmark_prior.weights import DEFAULT_VERSION, FAMILY
from lipsync.models.stabilized_sync.generator import face_box
from lipsync.timing import StageTimes

FACE = "face"  # per-frame array: the face crop, (S, S, 3) uint8 RGB
TRACK_LANDMARKS = "track_landmarks"  # reference array: (frames, 2, 68) float32, NaN where no face
REFERENCE_FACES = "reference_faces"  # reference array: (R, S, S, 3) uint8, in `spread_frames` order
REFERENCE_LANDMARKS = "reference_landmarks"  # reference array: (R, 2, 68) float32, the same frames
REFERENCE_ARRAYS = (TRACK_LANDMARKS, REFERENCE_FACES, REFERENCE_LANDMARKS)
PIXEL_MAX = 255.0
REFERENCE_CACHE_BYTES = 1024 * 2**20  # encoded reference sets kept: 181 MiB each at 128 px, N = 25, fp32
PREPARE_AGAIN = "prepare the avatar again with these weights (lipsync avatar prepare VIDEO --name NAME)"


class LandmarkPriorStage(str, Enum):
    REFERENCES = "references"  # the reference set's tensors, sketches and encodings (kept after the first)
    LIP_LANDMARKS = "lip landmarks"
    SKETCHES = "sketches"
    ALIGNMENT = "alignment"
    RENDERER = "renderer"


def to_tensor(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(..., S, S, 3) uint8 RGB → (..., 3, S, S) in [0, 1] (IP_LAP's range)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return (tensor.movedim(-1, -3).to(dtype) / PIXEL_MAX).contiguous()


def to_images(faces: Tensor) -> np.ndarray:
    """(B, 3, S, S) in [0, 1] → (B, S, S, 3) uint8 RGB."""
    scaled = (faces.float().clamp(0.0, 1.0) * PIXEL_MAX).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def occlude(crops: Tensor) -> Tensor:
    """I^m: the crops with their lower half black (IP_LAP zeroes rows S/2 … S − 1)."""
    masked = crops.clone()
    masked[..., crops.shape[-2] // 2 :, :] = 0
    return masked


def normalised_landmarks(points: np.ndarray, size: int) -> np.ndarray:
    """(B, 68, 2) crop pixels → (B, 2, 68) in [0, 1] across the crop (IP_LAP's layout)."""
    return (np.asarray(points, dtype=np.float32) / size).transpose(0, 2, 1).copy()


def crop_normalised_landmarks(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 2, 68) float32: each frame's landmarks (N, 68, 2) normalised to its crop box (N, 4) x1, y1, x2, y2
    (the crop is the box resized to a square); NaN for frames without a face (x1 < 0). Training reads
    landmarks through this too."""
    faces = boxes[:, 0] >= 0
    face_boxes = boxes[faces, None].astype(np.float32)
    landmarks = np.full((len(boxes), COORDINATES, LANDMARK_COUNT), np.nan, np.float32)
    landmarks[faces] = (
        (points[faces] - face_boxes[..., :2]) / (face_boxes[..., 2:] - face_boxes[..., :2])
    ).transpose(0, 2, 1)
    return landmarks


@dataclass(frozen=True)
class ReferenceSet:
    """The N image references and L lip references as the networks read them, with their encodings; every
    tensor has a leading dimension of 1 (one entry of the reference cache)."""

    faces: Tensor  # (1, N, 3, S, S), the first N reference crops
    sketches: Tensor  # (1, N, 3, S, S), their landmark sketches
    lip_faces: Tensor  # (1, L, 3, S, S), the first L reference crops
    lip_sketches: Tensor  # (1, L, 3, S, S), their lip sketches
    features: ReferenceFeatures | None  # E_r of (faces, sketches) (None: w/o Ali)
    lip_features: Tensor | None  # (1, L, c2, S/2, S/2), the lip encoder's (None: w/o Lip)


class LandmarkPriorGenerator(Generator):
    """The landmark transformer, M_a and M_r, as one generator."""

    family = FAMILY
    face_size = 128  # set per instance from the weights' config
    generate_stages = tuple(LandmarkPriorStage)

    def __init__(
        self,
        models: LandmarkPriorModels,
        weights: Path | None = None,
        reference_cache_bytes: int = REFERENCE_CACHE_BYTES,
    ) -> None:
        super().__init__(
            GeneratorInfo(FAMILY, DEFAULT_VERSION, weights, models.device, models.dtype, models.untrained)
        )
        self.models = models
        self.config = models.config
        self.face_size = models.config.face_size
        self.reference_cache = EncoderCache(reference_cache_bytes)

    @classmethod
    def from_pretrained(cls, root: Path, device: torch.device, dtype: torch.dtype) -> LandmarkPriorGenerator:
        return cls(load_models(root, device, dtype), Path(root))

    def crop_box(
        self, points: np.ndarray, frame_width: int, frame_height: int, settings: FaceSettings
    ) -> CropBox | None:
        """The stabilized-sync rule: the landmarks' bounds with a forehead margin (our choice for both)."""
        return face_box(points, frame_width, frame_height, settings)

    def frame_arrays(self) -> dict[str, ArraySpec]:
        return {FACE: ArraySpec((self.face_size, self.face_size, 3), "uint8")}

    def prepare(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        return {FACE: faces.crops}

    def reference_frames(self, has_face: np.ndarray, points: np.ndarray) -> list[int]:
        return spread_frames(has_face, points, self.config.reference_frames)

    def prepare_references(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        return {
            REFERENCE_FACES: faces.crops,
            REFERENCE_LANDMARKS: normalised_landmarks(faces.points, self.face_size),
        }

    def track_references(self, track: FaceTrack) -> dict[str, np.ndarray]:
        return {TRACK_LANDMARKS: crop_normalised_landmarks(track.points, track.boxes)}

    def recipe(self) -> dict[str, Any]:
        """References depend on how many of each kind the config asks for."""
        config = self.config
        counts = (config.references, config.lip_references, config.landmark_references)
        return {**super().recipe(), "face_size": self.face_size, "references": list(counts)}

    def offline_audio(self, samples: np.ndarray, fps: Fraction, mode: AudioFeatureMode) -> SequenceMelWindows:
        """The same windows whatever the mode: each depends only on its own 0.2 s of audio."""
        return SequenceMelWindows.offline(samples, fps)

    def streaming_audio(self, fps: Fraction, settings: StreamSettings) -> SequenceMelWindows:
        return SequenceMelWindows(fps)

    @torch.inference_mode()
    def generate(self, request: GenerationRequest, times: StageTimes) -> np.ndarray:
        references = _references(request.references)
        with times.measure(LandmarkPriorStage.REFERENCES):
            kept = self._reference_set(references)
        track = references[TRACK_LANDMARKS]
        has_face = ~np.isnan(track[:, 0, 0])
        windows = np.stack([track[neighbour_frames(s, has_face)] for s in request.sources])  # (A, 5, 2, 68)
        mels = torch.from_numpy(np.asarray(request.conditioning)).to(self.device, self.dtype)
        with times.measure(LandmarkPriorStage.LIP_LANDMARKS):
            windows[..., CONTENT_POINTS] = self._predict(mels, windows, references[REFERENCE_LANDMARKS])
        with times.measure(LandmarkPriorStage.SKETCHES):
            targets = self._tensor(
                np.stack([sketch_stack(list(frames), self.face_size) for frames in windows])
            )
        count = len(windows)
        with times.measure(LandmarkPriorStage.ALIGNMENT):
            masked = occlude(to_tensor(request.prepared[FACE], self.device, self.dtype))
            features = kept.features
            alignment = self.models.alignment(
                masked,
                targets,
                _rows1(kept.faces, count),
                _rows1(kept.sketches, count),
                None
                if features is None
                else ReferenceFeatures(_rows1(features.full, count), _rows1(features.half, count)),
            )
        with times.measure(LandmarkPriorStage.RENDERER):
            out = self.models.renderer(
                masked,
                targets,
                _rows1(kept.lip_faces, count),
                _rows1(kept.lip_sketches, count),
                mels[:, CENTRE],
                alignment,
                None if kept.lip_features is None else _rows1(kept.lip_features, count),
            )
            return to_images(out)

    def prime(
        self,
        frame_arrays: Mapping[str, np.ndarray],
        sources: Sequence[int],
        references: Mapping[str, np.ndarray],
    ) -> None:
        """Encode the avatar's reference set now, so that a session's first frame does not pay for it."""
        with torch.inference_mode():
            self._reference_set(_references(references))

    def _reference_set(self, references: Mapping[str, np.ndarray]) -> ReferenceSet:
        """The first N and L references as tensors, their sketches and encodings: built once per reference
        set and kept by content, so a later call only hashes the set."""
        used = max(self.config.references, self.config.lip_references)
        faces, points = references[REFERENCE_FACES][:used], references[REFERENCE_LANDMARKS][:used]
        build = partial(self._build_reference_set, faces, points)
        faces_t, sketches, lip_faces, lip_sketches, *encoded = self.reference_cache.encoded(
            [frame_key(faces, points)], build
        )
        features = None
        if not self.config.render.without_alignment:
            full, half, *encoded = encoded
            features = ReferenceFeatures(full, half)
        lip_features = None if self.config.render.without_lip_module else encoded[0]
        return ReferenceSet(faces_t, sketches, lip_faces, lip_sketches, features, lip_features)

    def _build_reference_set(self, faces: np.ndarray, points: np.ndarray, rows: list[int]) -> list[Tensor]:
        """One cache entry (`rows` is its one row): the crops and sketches of the first N image and L lip
        references, then E_r's two scales (unless w/o Ali), then the lip encoder's (unless w/o Lip)."""
        size, count, lip_count = self.face_size, self.config.references, self.config.lip_references
        crops = to_tensor(faces, self.device, self.dtype)
        sketches = self._tensor(np.stack([draw_sketch(p, size) for p in points[:count]]))
        lip_sketches = self._tensor(np.stack([draw_sketch(p, size, LIP_EDGES) for p in points[:lip_count]]))
        levels = [crops[:count], sketches, crops[:lip_count], lip_sketches]
        if not self.config.render.without_alignment:
            features = self.models.alignment.encode_references(crops[:count], sketches)
            levels += [features.full, features.half]
        lips = self.models.renderer.encode_lips(crops[:lip_count], lip_sketches)
        if lips is not None:
            levels.append(lips)
        return [level.unsqueeze(0) for level in levels]

    def _predict(self, mels: Tensor, windows: np.ndarray, reference_points: np.ndarray) -> np.ndarray:
        """(A, 5, 2, 31): lower jaw and lips of the five frames, from their mels and pose landmarks."""
        pose = torch.from_numpy(windows[..., POSE_POINTS]).to(self.device, self.dtype)
        sets = reference_points[: self.config.landmark_references][..., REFERENCE_ORDER]
        content = self.models.transformer(mels, pose, _rows(self._tensor(sets), len(windows)))
        return content.float().cpu().numpy()

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(array).to(self.device, self.dtype)

    @torch.inference_mode()
    def warm_up(self, batch_size: int) -> None:
        size, frames = self.face_size, self.config.reference_frames
        points = np.full((frames, LANDMARK_COUNT, COORDINATES), size / 2, np.float32)
        crops = np.zeros((frames, size, size, 3), np.uint8)
        batch = FaceBatch(crops, points, list(range(frames)))
        references = {
            **self.prepare_references(batch, StageTimes()),
            TRACK_LANDMARKS: np.full((1, COORDINATES, LANDMARK_COUNT), 0.5, np.float32),
        }
        mels = SequenceMelWindows.offline(np.zeros(16000, np.float32), Fraction(25)).windows([0] * batch_size)
        prepared = {FACE: crops[:1].repeat(batch_size, axis=0)}
        self.generate(GenerationRequest(prepared, references, mels, [0] * batch_size), StageTimes())
        self.reference_cache.clear()  # the warm-up's blank references are no avatar's


def _rows(tensor: Tensor, count: int) -> Tensor:
    """The same (K, ...) tensor for each of `count` rows: (count, K, ...), without copying."""
    return tensor.unsqueeze(0).expand(count, *tensor.shape)


def _rows1(tensor: Tensor, count: int) -> Tensor:
    """A (1, ...) tensor as (count, ...), without copying."""
    return tensor.expand(count, *tensor.shape[1:])


def _references(arrays: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    missing = [name for name in REFERENCE_ARRAYS if name not in arrays]
    if missing:
        raise InputError(f"the {FAMILY} references lack {', '.join(missing)}", PREPARE_AGAIN)
    return arrays
