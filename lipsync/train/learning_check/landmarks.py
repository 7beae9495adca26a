"""The landmark-prior recipe's landmark table: the trained transformer against a mean-mouth baseline.

On each held-out tail, every frame with a face is predicted as the generator predicts it (`landmark_inspect`:
its five mel windows, its neighbours' pose landmarks, the inference rule's references, the middle of the
five predicted frames) and compared with the tail's own content landmarks (lower jaw and lips, normalised to
each frame's crop, tracked as `dub` tracks). The same transformer is also fed the tail's audio in shuffled
pieces (the dubs' shuffled-audio control): what it gains from the audio itself is the gap between the two.
The baseline predicts one constant: the mean content landmarks over every frame of the prepared heads (the
training data), in the same crop units. Errors are the mean
absolute coordinate error (the trainer's held-out L1), in crop units and in pixels of a 128 px face.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from lipsync.io.files import atomic_path
from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS
from lipsync.train.learning_check.report import Column
from lipsync.train.learning_check.scoring import Score

PIXELS = 128  # errors are also given in pixels of a face this size (as `lipsync train landmarks` logs)
MEAN_MOUTH_FILE = "mean-mouth.json"

TRAINED, SHUFFLED, MEAN_MOUTH = "trained transformer", "shuffled audio", "mean mouth"
ROWS = {
    TRAINED: "the trained transformer's lower jaw and lips, predicted from the tail's audio and pose",
    SHUFFLED: "the same transformer fed the tail's audio in shuffled pieces (pose and references unchanged)",
    MEAN_MOUTH: "no model: every frame gets the mean lower jaw and lips of the heads (crop-normalised)",
}
COLUMNS = (
    Column("l1", "landmark L1 (crop) ↓", 4),
    Column("l1_px", f"landmark L1 (px at {PIXELS}) ↓", 2),
)


def mean_content(landmarks: Iterable[np.ndarray]) -> np.ndarray:
    """(2, 31): the mean content landmarks over every frame with a face of clips of (N, 2, 68) landmarks
    (NaN rows: no face), each frame weighing alike."""
    frames = [clip[..., CONTENT_POINTS] for clip in landmarks]
    stacked = np.concatenate(frames) if frames else np.empty((0, 2, len(CONTENT_POINTS)), np.float32)
    stacked = stacked[~np.isnan(stacked).any(axis=(1, 2))]
    if not len(stacked):
        raise ValueError("no frame with a face to average")
    return stacked.astype(np.float64).mean(axis=0)


def head_mean_mouth(dataset: Path) -> tuple[np.ndarray, dict[str, int]]:
    """The mean content landmarks of the prepared heads, and the frames each clip gave."""
    from lipsync.train.data.format import list_clips
    from lipsync.train.landmark_prior_clips import read_family_clip

    clips = {folder.name: read_family_clip(folder).landmarks for folder in list_clips(dataset)}
    return mean_content(clips.values()), {name: len(points) for name, points in clips.items()}


def write_mean_mouth(path: Path, mean: np.ndarray, frames: dict[str, int]) -> Path:
    data = {"content_landmarks": mean.tolist(), "units": "crop (x, y in [0, 1])", "head_clips": frames}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def landmark_errors(predicted: np.ndarray, real: np.ndarray) -> dict[str, Score]:
    """Mean absolute coordinate error of (F, 2, 31) landmarks: crop units and px at 128."""
    l1 = float(np.abs(predicted - real).mean())
    return {"l1": Score(l1, len(real)), "l1_px": Score(l1 * PIXELS, len(real))}


def landmark_scores(
    generator: LandmarkPriorGenerator,
    tail: Path,
    frames: int,
    mean: np.ndarray,
    piece_samples: int,
    seed: int,
) -> dict[str, dict[str, Score]]:
    """The rows of one tail (`frames` frames long); the shuffled row cuts its audio into `piece_samples`
    pieces in the order of `seed` (`controls.shuffled_audio`)."""
    from lipsync.io.audio import load_audio
    from lipsync.models.landmark_prior.mel_windows import SequenceMelWindows
    from lipsync.train.landmark_inspect import predict_content, video_inspection
    from lipsync.train.learning_check.controls import shuffled_audio

    clip = video_inspection(tail, generator, frames)
    shuffled = shuffled_audio(load_audio(tail).samples, piece_samples, seed)
    shuffled_clip = replace(clip, mels=SequenceMelWindows.offline(shuffled, clip.mels.fps))
    faces = [int(f) for f in np.flatnonzero(clip.has_face)]
    real = clip.landmarks[faces][..., CONTENT_POINTS]
    transformer, references = generator.models.transformer, generator.config.landmark_references
    return {
        TRAINED: landmark_errors(predict_content(transformer, clip, faces, references), real),
        SHUFFLED: landmark_errors(predict_content(transformer, shuffled_clip, faces, references), real),
        MEAN_MOUTH: landmark_errors(np.broadcast_to(mean, real.shape), real),
    }
