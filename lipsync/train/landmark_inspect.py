"""Inspection strips of the landmark transformer: predicted against real lip and jaw landmarks over faces.

Every k-th frame of a clip (a prepared clip folder, or a video tracked as `lipsync dub` tracks it) with a
face, side by side at the face size: the real content landmarks (lower jaw, lips) in green, the predicted
ones in red, as points joined along the sketch's edges. Each frame is predicted as the generator predicts
it (`generator.py`): its five mel windows, the pose landmarks of its neighbours s − 2 … s + 2 (reflected at
the ends, `neighbour_frames`), the first N_l references of the inference rule (`spread_frames`), and the
middle row of the five predicted frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

from lipsync.config import FaceSettings
from lipsync.errors import InputError
from lipsync.face.crop import crop_face
from lipsync.face.track import track_face
from lipsync.io.audio import load_audio
from lipsync.io.video import FrameReader, probe_video
from lipsync.models.landmark_prior.generator import TRACK_LANDMARKS, LandmarkPriorGenerator
from lipsync.models.landmark_prior.landmark_sets import (
    CONTENT_POINTS,
    FACE_EDGES,
    POSE_POINTS,
    REFERENCE_ORDER,
)
from lipsync.models.landmark_prior.landmark_transformer import LandmarkTransformer
from lipsync.models.landmark_prior.mel_windows import CENTRE, SequenceMelWindows
from lipsync.models.landmark_prior.references import neighbour_frames, spread_frames
from lipsync.train.landmark_prior_clips import read_family_clip

REAL_COLOUR = (0, 255, 0)  # RGB green
PREDICTED_COLOUR = (255, 0, 0)  # RGB red
POINT_RADIUS = 1
CONTENT_EDGES = tuple((a, b) for a, b in FACE_EDGES if a in CONTENT_POINTS and b in CONTENT_POINTS)


@dataclass(frozen=True)
class InspectionClip:
    """What a strip is drawn from: crops, crop-normalised landmarks (NaN without a face), audio windows."""

    faces: np.ndarray  # (N, S, S, 3) uint8 RGB; black where there is no face
    landmarks: np.ndarray  # (N, 2, 68) float32
    mels: SequenceMelWindows

    @property
    def has_face(self) -> np.ndarray:
        return ~np.isnan(self.landmarks[:, 0, 0])


def clip_inspection(folder: Path, face_size: int) -> InspectionClip:
    """A prepared clip folder, in the family's frame (`landmark_prior_clips`)."""
    clip = read_family_clip(folder, face_size)
    assert clip.faces is not None
    return InspectionClip(clip.faces, clip.landmarks, clip.mels)


def video_inspection(path: Path, generator: LandmarkPriorGenerator, max_frames: int) -> InspectionClip:
    """The first `max_frames` frames of a video, tracked and cropped by the generator's rules (as `dub`)."""
    info = probe_video(Path(path))
    count = min(info.frame_count, max_frames)
    with FrameReader(info) as reader:
        track = track_face(
            reader.frames(0, count), FaceSettings(), info.width, info.height, box_rule=generator.crop_box
        )
        if track.faces_found == 0:
            raise InputError(f"no face in the first {count} frames of {path}", "give a video of a face")
        size = generator.face_size
        faces = np.zeros((count, size, size, 3), dtype=np.uint8)
        for index, frame in enumerate(reader.frames(0, count)):
            box = track.box(index)
            if box is not None:
                faces[index] = crop_face(frame, box, size)
    landmarks = generator.track_references(track)[TRACK_LANDMARKS]
    mels = SequenceMelWindows.offline(load_audio(Path(path)).samples, Fraction(info.fps))
    return InspectionClip(faces, landmarks, mels)


def strip_frames(has_face: np.ndarray, every: int, count: int) -> list[int]:
    """Every `every`-th frame from 0 that has a face, at most `count` of them."""
    return [int(f) for f in range(0, len(has_face), every) if has_face[f]][:count]


@torch.no_grad()
def predict_content(
    transformer: LandmarkTransformer, clip: InspectionClip, frames: list[int], references: int
) -> np.ndarray:
    """(len(frames), 2, 31): each frame's predicted lower jaw and lips, as the generator predicts them."""
    has_face = clip.has_face
    points = clip.landmarks.transpose(0, 2, 1)  # the rule reads (F, 68, 2) in any coordinates
    chosen = spread_frames(has_face, np.nan_to_num(points), references)
    windows = np.stack([clip.landmarks[neighbour_frames(f, has_face)] for f in frames])
    parameter = next(transformer.parameters())
    device, dtype = parameter.device, parameter.dtype

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device, dtype)

    sets = tensor(clip.landmarks[chosen][..., REFERENCE_ORDER])
    mels = tensor(clip.mels.windows(frames))
    content = transformer(mels, tensor(windows[..., POSE_POINTS]), sets.expand(len(frames), *sets.shape))
    return content[:, CENTRE].float().cpu().numpy()


def draw_landmarks(face: np.ndarray, content: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Content points (2, 31) normalised to the crop, drawn on `face` (S, S, 3) in place."""
    size = face.shape[0]
    points = np.full((2, len(REFERENCE_ORDER)), np.nan, dtype=np.float64)
    points[:, CONTENT_POINTS] = content
    pixels = np.floor(np.nan_to_num(points, nan=-1.0) * size).astype(np.int64)
    for a, b in CONTENT_EDGES:
        cv2.line(face, (int(pixels[0, a]), int(pixels[1, a])), (int(pixels[0, b]), int(pixels[1, b])), colour)
    for index in CONTENT_POINTS:
        cv2.circle(face, (int(pixels[0, index]), int(pixels[1, index])), POINT_RADIUS, colour, -1)


def inspection_strip(
    transformer: LandmarkTransformer, clip: InspectionClip, every: int, count: int, references: int
) -> np.ndarray:
    """(S, S · frames, 3) uint8 RGB: the strip described in the module doc."""
    frames = strip_frames(clip.has_face, every, count)
    if not frames:
        raise InputError("no frame with a face to inspect", "give a clip or video with a visible face")
    was_training = transformer.training
    transformer.eval()
    try:
        predicted = predict_content(transformer, clip, frames, references)
    finally:
        transformer.train(was_training)
    tiles = []
    for frame, content in zip(frames, predicted, strict=True):
        face = clip.faces[frame].copy()
        draw_landmarks(face, clip.landmarks[frame][:, CONTENT_POINTS], REAL_COLOUR)
        draw_landmarks(face, content, PREDICTED_COLOUR)
        tiles.append(face)
    return np.concatenate(tiles, axis=1)


def save_inspection(strip: np.ndarray, path: Path) -> Path:
    """Write a strip as a PNG (folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
        raise InputError(f"could not write {path}", "give a writable .png path")
    return path
