"""Stabilized-sync training samples from a prepared dataset (`lipsync data prepare`).

**Faces.** The prepared clips store MuseTalk's face box with context (lipsync/train/data/format.py): not
the box this family crops at inference. So every frame is cut again here with the family's own rule
(`face_box` of the family's generator: the landmarks' bounds raised by a quarter of their height for the
forehead, the default extra margin below the chin) from the stored crop and its landmarks, and resized to
the configured face size with the same resize as inference (aspect ratio not kept, Lanczos). Where the box
reaches past the stored context (the forehead usually does), the crop's edge pixels are repeated. Training
and inference therefore see faces framed alike.

**Samples** (paper §3.5): 5 consecutive target frames of one clip; the identity references are another
5-frame window of the same clip that does not overlap the targets (random, as Wav2Lip draws them); the
pose references are the targets with their lower half masked (made by the trainer); the audio is each
frame's own 16-column mel window (`lipsync.models.stabilized_sync.mel.mel_window`), and the window of the
first frame covers the 5 frames together (what the sync expert scores). With `waveforms` (the wav2vec2 audio
encoder, ablation setup C) each frame also gets the raw samples its mel window is computed from
(`lipsync.models.stabilized_sync.wav2vec2.wave_windows`, from the clip's audio.npy, which mel.npy is made of).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from lipsync.config import FACE_SIZE, TRAINING_FPS, FaceSettings
from lipsync.face.crop import CropBox
from lipsync.models.stabilized_sync.mel import SYNC_FRAMES, mel_windows
from lipsync.models.stabilized_sync.wav2vec2 import wave_windows
from lipsync.train.data.format import ClipMeta, PreparedClip, read_clip
from lipsync.train.sampling import crops_to_images
from lipsync.train.unet_data import read_meta

log = logging.getLogger(__name__)

MIN_CLIP_FRAMES = 2 * SYNC_FRAMES  # a target window and a non-overlapping identity window
CACHE_CLIPS = 256  # clips whose faces and mel stay in memory per process (96 px: ~2 MB per 100 frames)


def family_crop_box(points: np.ndarray, width: int, height: int, extra_margin: float) -> CropBox | None:
    """The stabilized-sync inference crop box of 68 landmarks in a width x height image, not clipped to
    the image (the box may reach past it by up to one image size on every side)."""
    from lipsync.models.stabilized_sync.generator import face_box

    pad = max(width, height)
    settings = FaceSettings(bbox_shift=0, extra_margin=round(extra_margin))
    box = face_box(np.asarray(points, np.float64) + pad, width + 2 * pad, height + 2 * pad, settings)
    if box is None:
        return None
    return CropBox(box.x1 - pad, box.y1 - pad, box.x2 - pad, box.y2 - pad)


def family_boxes(clip: PreparedClip) -> np.ndarray:
    """(N, 4) int32 x1, y1, x2, y2: each frame's family crop box in the stored crop's pixels (the whole
    stored crop where the landmarks are degenerate); a box may reach past the stored crop."""
    height, width = clip.frames.shape[1:3]
    # The inference default extra margin is in source-video pixels; the stored crop scales the source so
    # that the face box is FACE_SIZE px wide.
    margin = FaceSettings().extra_margin * FACE_SIZE / max(clip.meta.face_size, 1.0)
    boxes = np.empty((clip.frame_count, 4), dtype=np.int32)
    for index, points in enumerate(clip.landmarks):
        box = family_crop_box(points, width, height, margin) or CropBox(0, 0, width, height)
        boxes[index] = (box.x1, box.y1, box.x2, box.y2)
    return boxes


def family_crops(clip: PreparedClip, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8: every frame of a prepared clip cut with the family's crop rule."""
    frames = np.asarray(clip.frames)
    height, width = frames.shape[1:3]
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for index, (frame, (x1, y1, x2, y2)) in enumerate(zip(frames, family_boxes(clip), strict=True)):
        pad = max(0, -x1, -y1, x2 - width, y2 - height)  # how far the box leaves the crop
        image = np.ascontiguousarray(frame)
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        region = image[y1 + pad : y2 + pad, x1 + pad : x2 + pad]
        out[index] = cv2.resize(region, (size, size), interpolation=cv2.INTER_LANCZOS4)
    return out


@dataclass
class StabilizedBatch:
    """B samples of 5 consecutive frames; S = face size. Images in [−1, 1]."""

    target: torch.Tensor  # (B, 5, 3, S, S)
    identity: torch.Tensor  # (B, 5, 3, S, S): a non-overlapping 5-frame window of the same clip
    mels: torch.Tensor  # (B, 5, 1, 80, 16): each frame's mel window
    clip_ids: tuple[str, ...]
    starts: tuple[int, ...]  # first target frame of each sample
    waves: torch.Tensor | None = None  # (B, 5, 3800): each frame's waveform window, when asked for

    def __len__(self) -> int:
        return len(self.target)

    @property
    def sync_mels(self) -> torch.Tensor:
        """(B, 1, 80, 16): the window of the 5 frames together (the first frame's)."""
        return self.mels[:, 0]

    def to(self, device: torch.device | str) -> StabilizedBatch:
        return StabilizedBatch(
            self.target.to(device),
            self.identity.to(device),
            self.mels.to(device),
            self.clip_ids,
            self.starts,
            None if self.waves is None else self.waves.to(device),
        )


@dataclass(frozen=True)
class SampleIndex:
    clip: int
    start: int
    identity_start: int


class StabilizedClips:
    """The clips of one split with their family-cropped faces and mel (cached, least recently used out);
    with `waveforms`, their audio too, and batches carry waveform windows."""

    def __init__(self, folders: Sequence[Path], face_size: int, waveforms: bool = False) -> None:
        self.face_size = face_size
        self.waveforms = waveforms
        self.metas: list[ClipMeta] = []
        self.folders: list[Path] = []
        for folder in folders:
            meta = read_meta(folder)
            if meta.frame_count >= MIN_CLIP_FRAMES:
                self.metas.append(meta)
                self.folders.append(Path(folder))
            else:
                log.warning(
                    "clip %s has %d frames, fewer than %d: skipped",
                    meta.clip_id,
                    meta.frame_count,
                    MIN_CLIP_FRAMES,
                )
        self._cache: OrderedDict[int, tuple[torch.Tensor, np.ndarray, np.ndarray | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.folders)

    def __getstate__(self) -> dict[str, object]:  # DataLoader workers start with an empty cache
        return {**self.__dict__, "_cache": OrderedDict()}

    def _load(self, clip: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
        if clip in self._cache:
            self._cache.move_to_end(clip)
            return self._cache[clip]
        prepared = read_clip(self.folders[clip], with_whisper=False)
        entry = (
            crops_to_images(family_crops(prepared, self.face_size)),
            np.asarray(prepared.mel, np.float32),
            np.asarray(prepared.audio, np.float32) if self.waveforms else None,
        )
        self._cache[clip] = entry
        if len(self._cache) > CACHE_CLIPS:
            self._cache.popitem(last=False)
        return entry

    def draw(self, rng: np.random.Generator) -> SampleIndex:
        """A clip in proportion to its windows, a target window, a non-overlapping identity window."""
        windows = np.array([m.frame_count - SYNC_FRAMES + 1 for m in self.metas], dtype=np.float64)
        clip = int(rng.choice(len(windows), p=windows / windows.sum()))
        start = int(rng.integers(windows[clip]))
        far = [w for w in range(int(windows[clip])) if abs(w - start) >= SYNC_FRAMES]
        return SampleIndex(clip, start, int(rng.choice(far)))

    def batch(self, samples: Sequence[SampleIndex]) -> StabilizedBatch:
        targets, identities, mels, waves = [], [], [], []
        for sample in samples:
            faces, mel, audio = self._load(sample.clip)
            targets.append(faces[sample.start : sample.start + SYNC_FRAMES])
            identities.append(faces[sample.identity_start : sample.identity_start + SYNC_FRAMES])
            frames = list(range(sample.start, sample.start + SYNC_FRAMES))
            mels.append(torch.from_numpy(mel_windows(mel, frames, TRAINING_FPS)))
            if audio is not None:
                waves.append(torch.from_numpy(wave_windows(audio, frames, TRAINING_FPS)))
        return StabilizedBatch(
            torch.stack(targets),
            torch.stack(identities),
            torch.stack(mels),
            tuple(self.metas[s.clip].clip_id for s in samples),
            tuple(s.start for s in samples),
            torch.stack(waves) if waves else None,
        )
