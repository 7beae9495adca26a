"""UNet training samples from a prepared dataset (MuseTalk paper §3.2-3.3).

See lipsync/models/musetalk/README.md, Training.

A sample is F = clip_frames consecutive target frames of one clip, one reference frame per target (chosen by
the sampling strategy), each target's whisper window exactly as inference gathers it, the SyncNet mel
window of the F frames, and the targets' landmarks in their 256 crops (for the mouth boxes).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lipsync.config import (
    FACE_SIZE,
    SAMPLES_PER_WHISPER_FRAME,
    TRAINING_FPS,
    WHISPER_HIDDEN_LAYERS,
    WHISPER_HIDDEN_SIZE,
    audio_tokens,
    audio_window_frames,
)
from lipsync.models.musetalk.audio_features import audio_window_start
from lipsync.train.config import ConfigError, DataConfig, UNetTrainConfig
from lipsync.train.data.format import (
    CLIP_FILE,
    WHISPER_FILE,
    ClipMeta,
    DatasetError,
    PreparedClip,
    list_clips,
    read_clip,
    read_json,
)
from lipsync.train.data.mel import mel_window
from lipsync.train.sampling import (
    crop_face,
    crops_to_images,
    draw_margin,
    face_transform,
    landmarks_in_face,
    min_legal_frames,
    sample_references,
)

log = logging.getLogger(__name__)

# The reference skips clips shorter than 10 x the frames per sample (its fallback window is +-5 x that).
REFERENCE_MIN_FRAMES_PER_SAMPLE_FRAME = 10
OPEN_CLIP_CACHE = 64  # clips kept memory-mapped (with their 256-crop landmarks) per worker
HASH_BYTES = 8  # of sha256(clip id), read as a fraction in [0, 1) for val_fraction


@dataclass
class UNetSample:
    """One training sample; F = clip_frames, T = audio_window, S = FACE_SIZE."""

    target: torch.Tensor  # (F, 3, S, S) float32 in [-1, 1]
    reference: torch.Tensor  # (F, 3, S, S) float32 in [-1, 1]: one reference frame per target
    audio: torch.Tensor  # (F, 10T, 384) float32 whisper tokens, time-major layer-minor, no PE
    mel: torch.Tensor  # (1, 80, ceil(16F/5)) float32 SyncNet log-mel of the F frames
    mouth_landmarks: torch.Tensor  # (F, 68, 2) float32 target landmarks in their S x S crops
    reference_frames: torch.Tensor  # (F,) int64 clip frame index of each reference
    clip_id: str
    start_frame: int


@dataclass
class UNetBatch:
    """A collated batch of UNetSample: every tensor gains a leading batch axis B."""

    target: torch.Tensor  # (B, F, 3, S, S)
    reference: torch.Tensor  # (B, F, 3, S, S)
    audio: torch.Tensor  # (B, F, 10T, 384)
    mel: torch.Tensor  # (B, 1, 80, ceil(16F/5))
    mouth_landmarks: torch.Tensor  # (B, F, 68, 2)
    reference_frames: torch.Tensor  # (B, F) int64
    clip_ids: tuple[str, ...]
    start_frames: torch.Tensor  # (B,) int64

    def to(self, device: torch.device | str, non_blocking: bool = False) -> UNetBatch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return UNetBatch(
            target=move(self.target),
            reference=move(self.reference),
            audio=move(self.audio),
            mel=move(self.mel),
            mouth_landmarks=move(self.mouth_landmarks),
            reference_frames=move(self.reference_frames),
            clip_ids=self.clip_ids,
            start_frames=move(self.start_frames),
        )

    def pin_memory(self) -> UNetBatch:
        """Called by DataLoader(pin_memory=True)."""
        return UNetBatch(
            target=self.target.pin_memory(),
            reference=self.reference.pin_memory(),
            audio=self.audio.pin_memory(),
            mel=self.mel.pin_memory(),
            mouth_landmarks=self.mouth_landmarks.pin_memory(),
            reference_frames=self.reference_frames.pin_memory(),
            clip_ids=self.clip_ids,
            start_frames=self.start_frames.pin_memory(),
        )


def collate_unet(samples: Sequence[UNetSample]) -> UNetBatch:
    """DataLoader collate_fn: stack samples into a UNetBatch."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return UNetBatch(
        target=torch.stack([s.target for s in samples]),
        reference=torch.stack([s.reference for s in samples]),
        audio=torch.stack([s.audio for s in samples]),
        mel=torch.stack([s.mel for s in samples]),
        mouth_landmarks=torch.stack([s.mouth_landmarks for s in samples]),
        reference_frames=torch.stack([s.reference_frames for s in samples]),
        clip_ids=tuple(s.clip_id for s in samples),
        start_frames=torch.tensor([s.start_frame for s in samples], dtype=torch.int64),
    )


# --------------------------------------------------------------------------------------------------
# Audio windows


def whisper_valid_frames(clip: PreparedClip) -> int:
    """Whisper frames backed by the clip's audio (as inference: later frames count as zeros)."""
    if clip.whisper is None:
        return 0
    return min(len(clip.whisper), len(clip.audio) // SAMPLES_PER_WHISPER_FRAME)


def audio_windows(
    whisper: np.ndarray,
    frames: Sequence[int] | np.ndarray,
    audio_window: int,
    valid_frames: int | None = None,
) -> np.ndarray:
    """(F, 10T, 384) float32: each frame's 2T whisper frames from audio_window_start(f, 25, T), flattened
    time-major, layer-minor; whisper frames before 0 or from `valid_frames` on are zeros."""
    valid = len(whisper) if valid_frames is None else min(valid_frames, len(whisper))
    width = audio_window_frames(audio_window)
    fps = Fraction(TRAINING_FPS)
    starts = np.array([audio_window_start(int(f), fps, audio_window) for f in frames], dtype=np.int64)
    index = starts[:, None] + np.arange(width)  # (F, 2T)
    inside = (index >= 0) & (index < valid)
    out = np.zeros((len(starts), width, WHISPER_HIDDEN_LAYERS, WHISPER_HIDDEN_SIZE), dtype=np.float32)
    if inside.any():
        lo, hi = int(index[inside].min()), int(index[inside].max()) + 1
        block = np.asarray(whisper[lo:hi], dtype=np.float32)  # one contiguous read of the memmap
        out[inside] = block[index[inside] - lo]
    return out.reshape(len(starts), audio_tokens(audio_window), WHISPER_HIDDEN_SIZE)


# --------------------------------------------------------------------------------------------------
# Splits


def stable_fraction(clip_id: str) -> float:
    """A fixed number in [0, 1) for a clip id (same on every run and machine, unlike hash())."""
    digest = hashlib.sha256(clip_id.encode("utf-8")).digest()[:HASH_BYTES]
    return int.from_bytes(digest, "big") / float(1 << (8 * HASH_BYTES))


def read_meta(folder: Path) -> ClipMeta:
    return ClipMeta(**read_json(Path(folder) / CLIP_FILE))


def split_clips(root: Path, data_config: DataConfig) -> tuple[list[Path], list[Path]]:
    """(train, val) clip folders: val = listed clip ids, every clip of listed speakers, and the clips whose
    stable_fraction(clip id) is below val_fraction. A listed id or speaker the dataset lacks is an error
    (a typo would otherwise validate on nothing)."""
    val_clips, val_speakers = set(data_config.val_clips), set(data_config.val_speakers)
    train: list[Path] = []
    val: list[Path] = []
    seen_ids: set[str] = set()
    seen_speakers: set[str] = set()
    for folder in list_clips(root):
        meta = read_meta(folder)
        seen_ids.add(meta.clip_id)
        seen_speakers.add(meta.speaker)
        held_out = (
            meta.clip_id in val_clips
            or meta.speaker in val_speakers
            or stable_fraction(meta.clip_id) < data_config.val_fraction
        )
        (val if held_out else train).append(folder)
    unknown = sorted(val_clips - seen_ids) + sorted(val_speakers - seen_speakers)
    if unknown:
        raise ConfigError(
            f"data.val_clips / data.val_speakers name {', '.join(unknown)}, not in {root}",
            "use clip ids (folder names under clips/) and speaker labels of the prepared dataset",
        )
    return train, val


# --------------------------------------------------------------------------------------------------
# Dataset


def default_min_frames(config: UNetTrainConfig) -> int:
    """Shortest usable clip: the reference's 10 x clip_frames, and enough for a legal reference."""
    return max(
        REFERENCE_MIN_FRAMES_PER_SAMPLE_FRAME * config.clip_frames,
        min_legal_frames(config.sampling, config.clip_frames),
        config.clip_frames,
    )


@dataclass
class _OpenClip:
    clip: PreparedClip
    landmarks256: np.ndarray  # (N, 68, 2) in each frame's face-box crop
    valid_whisper: int


class UNetTrainDataset(Dataset[UNetSample]):
    """`length` random samples; item i depends only on (seed, i), so runs, resumes and workers agree.

    Clips are drawn with weight = number of possible start frames. Clips that are too short (see
    default_min_frames, or `min_frames` if given), have no whisper.npy, or a face smaller than
    data.min_face_size are skipped when the dataset is built, with a logged count.
    """

    def __init__(
        self,
        clips: Sequence[Path],
        config: UNetTrainConfig,
        length: int,
        seed: int,
        min_frames: int | None = None,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.config = config
        self.length = length
        self.seed = seed
        self.frames_per_sample = config.clip_frames
        floor = default_min_frames(config) if min_frames is None else min_frames
        self.min_frames = max(
            floor, min_legal_frames(config.sampling, config.clip_frames), config.clip_frames
        )

        skipped: Counter[str] = Counter()
        self.folders: list[Path] = []
        self.metas: list[ClipMeta] = []
        for folder in map(Path, clips):
            meta = read_meta(folder)
            if meta.frame_count < self.min_frames:
                skipped[f"shorter than {self.min_frames} frames"] += 1
            elif not (folder / WHISPER_FILE).is_file():
                skipped[f"no {WHISPER_FILE}"] += 1
            elif meta.face_size < config.data.min_face_size:
                skipped[f"face smaller than {config.data.min_face_size} px"] += 1
            else:
                self.folders.append(folder)
                self.metas.append(meta)
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
        log.info(
            "UNet dataset: %d of %d clips used%s",
            len(self.folders),
            len(clips),
            f"; skipped {detail}" if detail else "",
        )
        if not self.folders:
            raise DatasetError(
                f"none of the {len(clips)} clips can make UNet samples"
                + (f" (skipped {detail})" if detail else ""),
                "prepare longer clips with whisper features (`lipsync data prepare`), or lower "
                "data.min_face_size / clip_frames",
            )
        starts = np.array([m.frame_count - self.frames_per_sample + 1 for m in self.metas], dtype=np.float64)
        self._cumulative = np.cumsum(starts) / starts.sum()
        self._open: OrderedDict[int, _OpenClip] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for worker processes without the memory maps: each worker opens clips lazily."""
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _clip(self, number: int) -> _OpenClip:
        opened = self._open.get(number)
        if opened is None:
            clip = read_clip(self.folders[number])
            landmarks256 = landmarks_in_face(np.asarray(clip.landmarks), np.asarray(clip.face_boxes))
            opened = _OpenClip(clip, landmarks256, whisper_valid_frames(clip))
            self._open[number] = opened
            if len(self._open) > OPEN_CLIP_CACHE:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(number)
        return opened

    def __getitem__(self, index: int) -> UNetSample:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} of a dataset of {self.length}")
        rng = np.random.default_rng([self.seed, index])
        number = min(
            int(np.searchsorted(self._cumulative, rng.random(), side="right")), len(self.folders) - 1
        )
        return self.sample(number, rng)

    def sample(self, number: int, rng: np.random.Generator, start: int | None = None) -> UNetSample:
        """The sample of clip `number` (index into self.folders) starting at `start` (random if None)."""
        opened = self._clip(number)
        clip, count = opened.clip, self.frames_per_sample
        if start is None:
            start = int(rng.integers(0, clip.frame_count - count + 1))
        targets = np.arange(start, start + count)
        references = sample_references(opened.landmarks256, targets, self.config.sampling, count, rng)
        target_margin = draw_margin(self.config.margin, rng)  # one margin for all targets of a sample
        reference_margins = [draw_margin(self.config.margin, rng) for _ in references]  # one each

        frames, boxes = clip.frames, np.asarray(clip.face_boxes, dtype=np.float32)
        target_images = np.stack([crop_face(frames[t], boxes[t], target_margin) for t in targets])
        reference_images = np.stack(
            [crop_face(frames[r], boxes[r], m) for r, m in zip(references, reference_margins, strict=True)]
        )
        landmarks = np.stack(
            [face_transform(boxes[t], target_margin, FACE_SIZE).points(clip.landmarks[t]) for t in targets]
        )
        if clip.whisper is None:
            raise DatasetError(f"{clip.root} lost its {WHISPER_FILE}", "compute the whisper features again")
        audio = audio_windows(clip.whisper, targets, self.config.audio_window, opened.valid_whisper)
        mel = mel_window(np.asarray(clip.mel), start, count)
        return UNetSample(
            target=crops_to_images(target_images),
            reference=crops_to_images(reference_images),
            audio=torch.from_numpy(audio),
            mel=torch.from_numpy(mel)[None],
            mouth_landmarks=torch.from_numpy(landmarks),
            reference_frames=torch.from_numpy(references),
            clip_id=clip.meta.clip_id,
            start_frame=start,
        )


def validation_batch(
    clips: Sequence[Path],
    config: UNetTrainConfig,
    count: int,
    seed: int = 0,
    min_frames: int | None = None,
) -> UNetBatch:
    """`count` fixed samples (the same for a given seed) for validation losses and image strips."""
    dataset = UNetTrainDataset(clips, config, length=count, seed=seed, min_frames=min_frames)
    return collate_unet([dataset[i] for i in range(count)])
