"""Training samples of the landmark-prior family's audio-to-landmark transformer, from a prepared dataset.

A sample (IP_LAP's, `train_landmarks_generator.py`): T = 5 consecutive frames s … s + 4 of one clip,
s ∈ [2, N − 7] (IP_LAP's range: the first window starts on audio, the last ends before the clip's end);
their five mel windows; their pose landmarks; N_l = 15 reference landmark sets from frames of the same clip
drawn at random without replacement from outside the five (IP_LAP); target: the five frames' content
landmarks (lower jaw, then lips). The clip is drawn uniformly (IP_LAP draws a random video per item).

Everything is what the generator reads at inference (`landmark_prior_clips`): landmarks normalised to each
frame's family crop by the generator's own normalisation, mel windows from the family's `SequenceMelWindows`
(frame t = s + 2's five windows are those of s … s + 4), references in pose-then-content order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS, POSE_POINTS, REFERENCE_ORDER
from lipsync.models.landmark_prior.landmark_transformer import REFERENCE_SETS, SEQUENCE_FRAMES
from lipsync.models.landmark_prior.mel_windows import CENTRE
from lipsync.train.landmark_prior_clips import FamilyClips
from lipsync.train.unet_data import read_meta

log = logging.getLogger(__name__)

EDGE_FRAMES = 2  # IP_LAP: windows start at frame 2 or later and end 2 frames before the clip's end
MIN_CLIP_FRAMES = 25  # IP_LAP skips shorter videos (it needs 2 + 5 + 2 frames and 15 references besides)


@dataclass
class LandmarkBatch:
    """B samples of T = 5 frames; landmarks in [0, 1] across each frame's crop."""

    mels: Tensor  # (B, 5, 1, 80, 16)
    pose: Tensor  # (B, 5, 2, 37)
    references: Tensor  # (B, 15, 2, 68), pose then content points (`REFERENCE_ORDER`)
    target: Tensor  # (B, 5, 2, 31): lower jaw, then lips

    def __len__(self) -> int:
        return len(self.target)

    def to(self, device: torch.device | str) -> LandmarkBatch:
        return LandmarkBatch(
            self.mels.to(device), self.pose.to(device), self.references.to(device), self.target.to(device)
        )


@dataclass(frozen=True)
class LandmarkSample:
    clip: int
    start: int  # first of the five frames
    references: tuple[int, ...]  # the N_l reference frames


def usable_clips(folders: Sequence[Path]) -> list[Path]:
    """The clips long enough for a sample (IP_LAP's 25 frames); shorter ones are skipped with a warning."""
    usable = []
    for folder in folders:
        meta = read_meta(folder)
        if meta.frame_count >= MIN_CLIP_FRAMES:
            usable.append(Path(folder))
        else:
            count, least = meta.frame_count, MIN_CLIP_FRAMES
            log.warning("clip %s has %d frames, fewer than %d: skipped", meta.clip_id, count, least)
    return usable


class LandmarkSamples:
    """Draws samples from a split's clips and assembles batches of them."""

    def __init__(self, clips: FamilyClips) -> None:
        self.clips = clips
        self.frame_counts = [read_meta(folder).frame_count for folder in clips.folders]
        short = [f for f, n in zip(clips.folders, self.frame_counts, strict=True) if n < MIN_CLIP_FRAMES]
        if short:
            raise ValueError(f"{short[0]} has fewer than {MIN_CLIP_FRAMES} frames (use `usable_clips`)")

    def __len__(self) -> int:
        return len(self.clips)

    def draw(self, rng: np.random.Generator) -> LandmarkSample:
        clip = int(rng.integers(len(self.frame_counts)))
        frames = self.frame_counts[clip]
        start = int(rng.integers(EDGE_FRAMES, frames - SEQUENCE_FRAMES - EDGE_FRAMES + 1))
        outside = [f for f in range(frames) if not start <= f < start + SEQUENCE_FRAMES]
        references = rng.choice(outside, REFERENCE_SETS, replace=False)
        return LandmarkSample(clip, start, tuple(int(f) for f in references))

    def batch(self, samples: Sequence[LandmarkSample]) -> LandmarkBatch:
        mels, windows, references = [], [], []
        for sample in samples:
            clip = self.clips[sample.clip]
            mels.append(clip.mels.windows([sample.start + CENTRE])[0])
            windows.append(clip.landmarks[sample.start : sample.start + SEQUENCE_FRAMES])
            references.append(clip.landmarks[list(sample.references)][..., REFERENCE_ORDER])
        landmarks = torch.from_numpy(np.stack(windows))
        return LandmarkBatch(
            torch.from_numpy(np.stack(mels)),
            landmarks[..., POSE_POINTS].contiguous(),
            torch.from_numpy(np.stack(references)),
            landmarks[..., CONTENT_POINTS].contiguous(),
        )
