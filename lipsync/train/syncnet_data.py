"""SyncNet training pairs from a prepared dataset.

A pair is F consecutive face frames of a clip and a SyncNet mel window of F frames (the mel: see
lipsync/models/musetalk/README.md, SyncNet mel):
* positive (label 1): the mel window of the same frames;
* negative (label 0): the same faces with the mel window of the same clip starting at least
  `negative_min_offset` frames away (so only the timing is wrong: same voice, same recording).

Faces are cut from the stored crops exactly as for the UNet (the face box resized to 256 x 256,
`lipsync.train.sampling.crop_face`), scaled to [-1, 1] and passed through `prepare_faces` (resize to the
SyncNet's image size, lower half), so a batch holds model-ready input.

A clip's faces are cached (LRU by bytes, `cache_bytes`) in the smaller of two forms that give the same
batch: the uint8 crops, turned into model input when a batch is built (AVSyncNet's 96 px crops: 27 KB a
frame instead of 301 KB of float lower halves at 224), or the float32 lower halves themselves (a
Wav2Lip-style SyncNet at 96 px: 55 KB instead of 196 KB of 256 px crops).

For the stabilized-sync family's AVSyncNet (`kind: avsyncnet`), faces are cut with that family's crop rule
instead (`lipsync.train.stabilized_data.family_crops` at the generator's face size, then resized to 224
and halved), passed in as `faces`. Its negatives are audio from a non-overlapping part of the same clip
(the paper): `negative_min_offset` >= 5 frames, which the trainer checks, makes the two 16-column windows
disjoint.

Batches are single-identity by default (MuseTalk paper §4.4: every sample of a batch, positives and
negatives, comes from ONE speaker, so the net cannot score identity instead of timing), or mixed.
Every batch has as many positives as negatives (one more positive when the size is odd).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lipsync.models.syncnet import lower_half
from lipsync.train.config import ConfigError, DataConfig, SyncNetTrainConfig
from lipsync.train.data.format import ClipMeta, DatasetError, PreparedClip, read_clip
from lipsync.train.data.mel import mel_window
from lipsync.train.sampling import crop_face, crops_to_images
from lipsync.train.unet_data import read_meta, split_clips

log = logging.getLogger(__name__)

POSITIVE = 1.0
NEGATIVE = 0.0
DEFAULT_EVAL_SEED = 1234  # held-out pairs are the same on every evaluation and every run


class PairShape(Protocol):
    """What a pair source needs of a network's spec (SyncNetSpec, AVSyncSpec)."""

    @property
    def frames(self) -> int: ...

    @property
    def image_size(self) -> int: ...


FacePreparer = Callable[[PreparedClip], np.ndarray]  # a clip -> (N, H, W, 3) uint8 face crops
CachedFaces = np.ndarray | torch.Tensor  # (N, H, W, 3) uint8 crops, or (N, 3, S/2, S) float32 model input


@dataclass
class SyncBatch:
    """B pairs: model-ready faces and mel windows, with labels (1 in sync, 0 shifted)."""

    faces: torch.Tensor  # (B, 3F, S/2, S) float32 in [-1, 1]: lower halves, frame-major channels
    mels: torch.Tensor  # (B, 1, 80, ceil(16F/5)) float32
    labels: torch.Tensor  # (B,) float32
    speakers: tuple[str, ...]  # per sample
    clip_ids: tuple[str, ...]  # per sample
    face_starts: torch.Tensor  # (B,) int64 first face frame
    audio_starts: torch.Tensor  # (B,) int64 first frame of the mel window

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def speaker(self) -> str | None:
        """The one speaker of a single-identity batch; None for a mixed batch."""
        return self.speakers[0] if len(set(self.speakers)) == 1 else None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SyncBatch:
        return SyncBatch(
            self.faces.to(device, non_blocking=non_blocking),
            self.mels.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.speakers,
            self.clip_ids,
            self.face_starts,
            self.audio_starts,
        )


@dataclass(frozen=True)
class PairIndex:
    """Where one pair comes from."""

    clip: int  # index into SyncPairSource.clips
    face_start: int
    audio_start: int

    @property
    def label(self) -> float:
        return POSITIVE if self.face_start == self.audio_start else NEGATIVE


@dataclass(frozen=True)
class SyncClip:
    folder: Path
    meta: ClipMeta

    @property
    def clip_id(self) -> str:
        return self.meta.clip_id

    @property
    def speaker(self) -> str:
        return self.meta.speaker


@dataclass(frozen=True)
class SyncSplit:
    """Clip folders for training and for held-out evaluation."""

    train: tuple[Path, ...]
    val: tuple[Path, ...]


def split_sync_clips(data: DataConfig) -> SyncSplit:
    """Train / held-out clips per DataConfig (the UNet's split: val_clips, val_speakers, val_fraction by a
    stable hash of the clip id), dropping clips whose source face is under min_face_size."""
    train, val = split_clips(data.root, data)
    metas = {folder: read_meta(folder) for folder in (*train, *val)}

    def usable(folders: list[Path]) -> tuple[Path, ...]:
        return tuple(f for f in folders if metas[f].face_size >= data.min_face_size)

    split = SyncSplit(usable(train), usable(val))
    if not split.train:
        raise ConfigError(
            f"no training clips in {data.root} (of {len(metas)}, {len(val)} held out, "
            f"min_face_size {data.min_face_size})",
            "prepare more data, hold out fewer clips or lower data.min_face_size",
        )
    return split


def cut_clip_faces(clip: PreparedClip) -> np.ndarray:
    """(N, 256, 256, 3) uint8: every frame's face box at 256 x 256."""
    return np.stack([crop_face(clip.frames[i], clip.face_boxes[i]) for i in range(clip.frame_count)])


def face_input(crops: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 crops -> (N, 3, S/2, S) float32 in [-1, 1]: resized to S, lower half."""
    return lower_half(crops_to_images(crops), image_size)


def input_frame_bytes(image_size: int) -> int:
    """Bytes of one frame of model input: 3 x S/2 x S float32."""
    return 3 * (image_size - image_size // 2) * image_size * 4


def entry_bytes(faces: CachedFaces, mel: np.ndarray) -> int:
    size = faces.nbytes if isinstance(faces, np.ndarray) else faces.numel() * faces.element_size()
    return size + mel.nbytes


class SyncPairSource:
    """The clips of one split and the pairs they allow; prepared faces are cached (LRU by bytes: at most
    `cache_bytes`, or the one clip in use when that alone is larger)."""

    def __init__(
        self,
        folders: Sequence[Path],
        spec: PairShape,
        negative_min_offset: int,
        cache_bytes: int = SyncNetTrainConfig.face_cache_bytes,
        faces: FacePreparer | None = None,
    ) -> None:
        """`faces` cuts a clip's uint8 face crops (default: `cut_clip_faces`)."""
        if negative_min_offset < 1:
            raise ConfigError(
                f"negative_min_offset is {negative_min_offset}", "a negative needs audio at least 1 frame off"
            )
        self.spec = spec
        self.faces = faces
        self.negative_min_offset = negative_min_offset
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, tuple[CachedFaces, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        self.hits = 0  # clip loads served from the cache, in this process
        self.misses = 0
        clips: list[SyncClip] = []
        too_short: list[str] = []
        for folder in folders:
            meta = read_meta(folder)
            # A negative needs two window starts at least negative_min_offset apart.
            if meta.frame_count - spec.frames < negative_min_offset:
                too_short.append(meta.clip_id)
            else:
                clips.append(SyncClip(Path(folder), meta))
        if too_short:
            log.warning(
                "%d clip(s) too short for %d-frame pairs with negatives %d frames off: %s",
                len(too_short),
                spec.frames,
                negative_min_offset,
                ", ".join(too_short[:5]),
            )
        self.clips = clips
        self.speakers: dict[str, list[int]] = {}
        for number, clip in enumerate(clips):
            self.speakers.setdefault(clip.speaker, []).append(number)

    def __len__(self) -> int:
        return len(self.clips)

    def starts(self, clip: int) -> int:
        """Window starts of a clip: 0 .. frame_count - F."""
        return self.clips[clip].meta.frame_count - self.spec.frames + 1

    def windows(self, clips: Sequence[int]) -> int:
        return sum(self.starts(c) for c in clips)

    def __getstate__(self) -> dict[str, object]:  # DataLoader workers start with an empty cache
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_cached_bytes"] = 0
        state["hits"] = state["misses"] = 0
        return state

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    @property
    def hit_rate(self) -> float | None:
        loads = self.hits + self.misses
        return self.hits / loads if loads else None

    def _load(self, clip: int) -> tuple[CachedFaces, np.ndarray]:
        if clip in self._cache:
            self.hits += 1
            self._cache.move_to_end(clip)
            return self._cache[clip]
        self.misses += 1
        prepared = read_clip(self.clips[clip].folder, with_whisper=False)
        if len(prepared.face_boxes) != prepared.frame_count:
            raise DatasetError(f"{prepared.root}: face_boxes and frames differ in length", "prepare it again")
        crops = self.faces(prepared) if self.faces is not None else cut_clip_faces(prepared)
        faces: CachedFaces = crops
        if crops[0].nbytes > input_frame_bytes(self.spec.image_size):
            faces = face_input(crops, self.spec.image_size)
        entry = (faces, np.asarray(prepared.mel, dtype=np.float32))
        self._cache[clip] = entry
        self._cached_bytes += entry_bytes(*entry)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= entry_bytes(*evicted)
        return entry

    # --- drawing pairs -------------------------------------------------------------------------------

    def draw(self, rng: np.random.Generator, clip: int, positive: bool) -> PairIndex:
        starts = self.starts(clip)
        while True:
            face = int(rng.integers(starts))
            if positive:
                return PairIndex(clip, face, face)
            far = np.concatenate(
                [
                    np.arange(0, max(0, face - self.negative_min_offset + 1)),
                    np.arange(face + self.negative_min_offset, starts),
                ]
            )
            if len(far):
                return PairIndex(clip, face, int(rng.choice(far)))

    def draw_clip(self, rng: np.random.Generator, clips: Sequence[int]) -> int:
        """A clip of `clips`, in proportion to its window count (every window equally likely)."""
        weights = np.array([self.starts(c) for c in clips], dtype=np.float64)
        return int(clips[int(rng.choice(len(clips), p=weights / weights.sum()))])

    def draw_speaker(self, rng: np.random.Generator) -> str:
        """A speaker in proportion to their window count."""
        names = sorted(self.speakers)
        weights = np.array([self.windows(self.speakers[n]) for n in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]

    def draw_batch(self, rng: np.random.Generator, size: int, single_identity: bool) -> list[PairIndex]:
        if not self.clips:
            raise DatasetError("no clips to draw SyncNet pairs from", "prepare longer clips")
        pool = self.speakers[self.draw_speaker(rng)] if single_identity else list(range(len(self.clips)))
        positives = (size + 1) // 2
        return [self.draw(rng, self.draw_clip(rng, pool), i < positives) for i in range(size)]

    # --- tensors -------------------------------------------------------------------------------------

    def _window(self, index: PairIndex) -> tuple[CachedFaces, torch.Tensor]:
        """The F cached face frames and the (1, 80, T) mel of one pair."""
        faces, mel = self._load(index.clip)
        frames = self.spec.frames
        audio = mel_window(mel, index.audio_start, frames)
        return faces[index.face_start : index.face_start + frames], torch.from_numpy(audio).unsqueeze(0)

    def _faces(self, windows: Sequence[CachedFaces]) -> torch.Tensor:
        """(B, 3F, S/2, S) model input of B windows of F cached frames."""
        size = self.spec.image_size
        crops = [w for w in windows if isinstance(w, np.ndarray)]
        if len(crops) == len(windows):  # one resize for the whole batch
            halves = face_input(np.concatenate(crops), size)
        else:
            halves = torch.cat([face_input(w, size) if isinstance(w, np.ndarray) else w for w in windows])
        return halves.reshape(len(windows), -1, *halves.shape[-2:])

    def pair(self, index: PairIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """(3F, S/2, S) faces and (1, 80, T) mel of one pair."""
        window, mel = self._window(index)
        return self._faces([window])[0], mel

    def batch(self, pairs: Sequence[PairIndex]) -> SyncBatch:
        windows = [self._window(p) for p in pairs]
        return SyncBatch(
            faces=self._faces([w[0] for w in windows]),
            mels=torch.stack([w[1] for w in windows]),
            labels=torch.tensor([p.label for p in pairs], dtype=torch.float32),
            speakers=tuple(self.clips[p.clip].speaker for p in pairs),
            clip_ids=tuple(self.clips[p.clip].clip_id for p in pairs),
            face_starts=torch.tensor([p.face_start for p in pairs], dtype=torch.int64),
            audio_starts=torch.tensor([p.audio_start for p in pairs], dtype=torch.int64),
        )


class SyncPairStream(IterableDataset[SyncBatch]):
    """An endless stream of training batches (use with DataLoader(batch_size=None)).

    Each process and each DataLoader worker draws from its own generator: seed, `rank`, worker id.
    """

    def __init__(
        self,
        source: SyncPairSource,
        batch_size: int,
        single_identity: bool,
        seed: int,
        rank: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ConfigError(f"batch_size is {batch_size}", "use at least 2 (a positive and a negative)")
        self.source = source
        self.batch_size = batch_size
        self.single_identity = single_identity
        self.seed = seed
        self.rank = rank

    def __iter__(self) -> Iterator[SyncBatch]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.rank, info.id if info else 0])
        while True:
            yield self.source.batch(self.source.draw_batch(rng, self.batch_size, self.single_identity))


def eval_pairs(source: SyncPairSource, pairs: int, seed: int = DEFAULT_EVAL_SEED) -> list[PairIndex]:
    """A fixed, balanced set of held-out pairs (alternately in sync and shifted) over all of `source`'s
    clips; build their tensors with `source.batch` a chunk at a time."""
    if not source.clips or pairs < 2:
        return []
    rng = np.random.default_rng(seed)
    everything = list(range(len(source.clips)))
    return [source.draw(rng, source.draw_clip(rng, everything), i % 2 == 0) for i in range(pairs)]


def identity_collate(batch: Any) -> Any:
    """DataLoader collate for a stream that yields whole SyncBatch objects."""
    return batch
