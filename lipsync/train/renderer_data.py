"""Training samples of the landmark-prior alignment and rendering models from a prepared dataset
(`lipsync data prepare`), framed and drawn exactly as the family's inference does.

**Clips** are the family's shared training clips (`landmark_prior_clips`): every frame cut with the
family's crop rule at the face size, its 68 landmarks normalised to the same box, in [0, 1], and per frame
the five IP_LAP mel windows, of which M_r reads the middle one, m_t.

**Samples** (one target frame t each):

* the target crop I_t; the trainer occludes its lower half (the generator's `occlude`);
* the 2k + 1 = 5 target sketches from the REAL landmarks of frames t − 2 … t + 2, reflected at the clip's
  ends as the generator reflects at a video's (`neighbour_frames`); at inference the transformer's lips
  replace the real ones, in training the renderer learns from the truth (IP_LAP does the same);
* references: max(N, lips) distinct frames drawn uniformly from the clip outside t − 2 … t + 2 (our rule:
  IP_LAP draws from the whole video, t included, which lets the mouth be copied from a reference); the
  image references are the first N with their full sketches, the lip references the first `lips` with their
  lip sketches: prefixes of one draw, as inference takes prefixes of one order. Paper §4.1: N = 3, 5 lips.
  A clip with too few other frames repeats some.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipsync.models.landmark_prior.generator import to_tensor
from lipsync.models.landmark_prior.landmark_sets import LIP_EDGES
from lipsync.models.landmark_prior.mel_windows import CENTRE
from lipsync.models.landmark_prior.references import neighbour_frames
from lipsync.models.landmark_prior.sketch import CONTEXT_FRAMES, STACK_FRAMES, draw_sketch, sketch_stack
from lipsync.train.data.format import ClipMeta
from lipsync.train.landmark_prior_clips import FamilyClips
from lipsync.train.unet_data import read_meta

log = logging.getLogger(__name__)

MIN_CLIP_FRAMES = 2 * STACK_FRAMES  # a target window and at least as many frames outside it
CPU = torch.device("cpu")


@dataclass
class RendererBatch:
    """B target frames; S = face size, N image references, L lip references. Images in [0, 1] (RGB)."""

    target: Tensor  # (B, 3, S, S)
    target_sketches: Tensor  # (B, 15, S, S): real landmarks of t − 2 … t + 2
    references: Tensor  # (B, N, 3, S, S)
    reference_sketches: Tensor  # (B, N, 3, S, S)
    lip_references: Tensor  # (B, L, 3, S, S)
    lip_sketches: Tensor  # (B, L, 3, S, S): the lip edges only
    mel: Tensor  # (B, 1, 80, 16): m_t
    clip_ids: tuple[str, ...]
    frames: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.target)

    def to(self, device: torch.device | str) -> RendererBatch:
        return RendererBatch(
            self.target.to(device),
            self.target_sketches.to(device),
            self.references.to(device),
            self.reference_sketches.to(device),
            self.lip_references.to(device),
            self.lip_sketches.to(device),
            self.mel.to(device),
            self.clip_ids,
            self.frames,
        )


@dataclass(frozen=True)
class SampleIndex:
    clip: int
    frame: int
    references: tuple[int, ...]  # image references are the first N, lip references the first L


class RendererClips:
    """The clips of one split (`FamilyClips`, with their faces) and the samples drawn from them."""

    def __init__(self, folders: Sequence[Path], face_size: int, references: int, lip_references: int) -> None:
        self.face_size = face_size
        self.references, self.lip_references = references, lip_references
        self.metas: list[ClipMeta] = []
        kept: list[Path] = []
        for folder in folders:
            meta = read_meta(folder)
            if meta.frame_count >= MIN_CLIP_FRAMES:
                self.metas.append(meta)
                kept.append(Path(folder))
            else:
                log.warning(
                    "clip %s has %d frames, fewer than %d: skipped",
                    meta.clip_id,
                    meta.frame_count,
                    MIN_CLIP_FRAMES,
                )
        self.clips = FamilyClips(kept, face_size)

    def __len__(self) -> int:
        return len(self.clips)

    def draw(self, rng: np.random.Generator) -> SampleIndex:
        """A clip in proportion to its frames, a target frame, references from outside its window."""
        counts = np.array([m.frame_count for m in self.metas], dtype=np.float64)
        clip = int(rng.choice(len(counts), p=counts / counts.sum()))
        frame = int(rng.integers(counts[clip]))
        others = [f for f in range(int(counts[clip])) if abs(f - frame) > CONTEXT_FRAMES]
        wanted = max(self.references, self.lip_references)
        chosen = rng.choice(others, size=wanted, replace=len(others) < wanted)
        return SampleIndex(clip, frame, tuple(int(f) for f in chosen))

    def batch(self, samples: Sequence[SampleIndex]) -> RendererBatch:
        size = self.face_size
        columns: list[list[np.ndarray]] = [[] for _ in range(7)]
        for sample in samples:
            clip = self.clips[sample.clip]
            faces = clip.faces
            assert faces is not None  # read with the face size
            window = neighbour_frames(sample.frame, np.ones(clip.frame_count, dtype=bool))
            images = list(sample.references[: self.references])
            lips = list(sample.references[: self.lip_references])
            parts = (
                faces[sample.frame],
                sketch_stack([clip.landmarks[f] for f in window], size),
                faces[images],
                np.stack([draw_sketch(clip.landmarks[f], size) for f in images]),
                faces[lips],
                np.stack([draw_sketch(clip.landmarks[f], size, LIP_EDGES) for f in lips]),
                clip.mels.windows([sample.frame])[0, CENTRE],
            )
            for column, part in zip(columns, parts, strict=True):
                column.append(part)
        target, sketches, refs, ref_sketches, lip_refs, lip_sketches, mels = (np.stack(c) for c in columns)
        return RendererBatch(
            to_tensor(target, CPU, torch.float32),
            torch.from_numpy(sketches),
            to_tensor(refs, CPU, torch.float32),
            torch.from_numpy(ref_sketches),
            to_tensor(lip_refs, CPU, torch.float32),
            torch.from_numpy(lip_sketches),
            torch.from_numpy(mels),
            tuple(self.metas[s.clip].clip_id for s in samples),
            tuple(s.frame for s in samples),
        )
