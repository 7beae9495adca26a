"""Prepared clips (`lipsync data prepare`) as the landmark-prior family sees a video at inference.

Shared by the family's trainers (landmark transformer, renderer). Per clip, at 25 fps:

* `landmarks` (N, 2, 68) float32: every frame's 68 landmarks normalised to that frame's crop box, in [0, 1]
  across it, by the generator's own normalisation (`crop_normalised_landmarks`);
* `faces` (N, S, S, 3) uint8 RGB, only when a face size is given: every frame cut with the family's crop
  rule and resized like inference (`stabilized_data.family_crops`; this family crops as stabilized-sync);
* `mels`: the family's audio conditioning of the clip's audio.npy (`SequenceMelWindows`, what the
  generator's `offline_audio` gives at inference): `clip.mels.windows([t])` is frame t's five (1, 80, 16)
  windows, of frames t − 2 … t + 2.

The crop box of a frame (`family_boxes`) is the one `family_crops` cuts: the stored crop's landmarks through
the family's `face_box`, not clipped to the stored crop, with the default extra margin scaled from source
pixels to the stored crop. So `landmarks[i] · S` are the points in `faces[i]`'s pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync.config import TRAINING_FPS
from lipsync.models.landmark_prior.generator import crop_normalised_landmarks
from lipsync.models.landmark_prior.mel_windows import SequenceMelWindows
from lipsync.train.data.format import ClipMeta, read_clip
from lipsync.train.stabilized_data import family_boxes, family_crops

CACHE_CLIPS = 64  # clips a `FamilyClips` keeps in memory (128 px faces: ~5 MB per 100 frames)


@dataclass(frozen=True)
class FamilyClip:
    """One prepared clip in the family's frame (see the module doc)."""

    meta: ClipMeta
    landmarks: np.ndarray  # (N, 2, 68) float32, normalised to each frame's crop
    mels: SequenceMelWindows  # `.windows(frames)`: (len(frames), 5, 1, 80, 16)
    faces: np.ndarray | None = None  # (N, S, S, 3) uint8 RGB, when read with a face size

    @property
    def frame_count(self) -> int:
        return len(self.landmarks)


def crop_landmarks(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 2, 68) float32: landmarks (N, 68, 2) normalised to their frames' boxes (N, 4) by the generator's
    own normalisation. Boxes may reach past the stored crop: both are moved so that every box starts at
    x, y ≥ 0 (x1 < 0 marks a frame without a face there), which the normalisation does not see."""
    boxes = np.asarray(boxes, dtype=np.int32)
    shift = max(0, -int(boxes[:, :2].min(initial=0)))
    return crop_normalised_landmarks(np.asarray(points, dtype=np.float32) + shift, boxes + shift)


def read_family_clip(folder: Path, face_size: int | None = None) -> FamilyClip:
    """A prepared clip folder as a `FamilyClip`; its faces too when `face_size` is given."""
    prepared = read_clip(Path(folder), with_whisper=False)
    landmarks = crop_landmarks(np.asarray(prepared.landmarks), family_boxes(prepared))
    mels = SequenceMelWindows.offline(np.asarray(prepared.audio, np.float32), Fraction(TRAINING_FPS))
    faces = None if face_size is None else family_crops(prepared, face_size)
    return FamilyClip(prepared.meta, landmarks, mels, faces)


class FamilyClips:
    """The clips of one split, read on first use and kept (least recently used out, `cache` clips).
    Picklable for DataLoader workers, which start with an empty cache."""

    def __init__(self, folders: Sequence[Path], face_size: int | None = None, cache: int = CACHE_CLIPS):
        self.folders = [Path(folder) for folder in folders]
        self.face_size = face_size
        self.cache = cache
        self._clips: OrderedDict[int, FamilyClip] = OrderedDict()

    def __len__(self) -> int:
        return len(self.folders)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_clips": OrderedDict()}

    def __getitem__(self, index: int) -> FamilyClip:
        if index in self._clips:
            self._clips.move_to_end(index)
            return self._clips[index]
        clip = read_family_clip(self.folders[index], self.face_size)
        self._clips[index] = clip
        if len(self._clips) > self.cache:
            self._clips.popitem(last=False)
        return clip
