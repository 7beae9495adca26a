"""The per-batch core shared by dubbing, prepared avatars and live streams.

Output frames come in batches; each frame has a source frame and a mouth strength (0 keeps the source mouth:
no face, or silence). The frames with a positive strength get a new lower face: reference latents → one UNet
pass with their audio tokens → VAE decode → paste back with the blend mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from lipsync.face.blend import paste_face
from lipsync.face.crop import CropBox
from lipsync.models.audio_features import BlockedAudioFeatures
from lipsync.models.loading import MuseTalkModels
from lipsync.models.unet import predict_latents
from lipsync.models.vae import decode_latents
from lipsync.pipeline.timing import Stage, StageTimes

T = TypeVar("T")


class FacePrep(Protocol):
    """What rendering needs to know about each source frame: where the face is, and its latents."""

    def box(self, source: int) -> CropBox | None: ...

    def mask(self, source: int) -> np.ndarray: ...

    def latents(self, sources: list[int], frames: list[np.ndarray], times: StageTimes) -> torch.Tensor:
        """(B, 8, 32, 32) masked + reference latents for these source frames, on the models' device."""
        ...


@dataclass
class RenderBatch:
    """Consecutive output frames [first, first + len(frames))."""

    first: int
    sources: list[int]
    frames: list[np.ndarray]
    strengths: np.ndarray  # (B,) float32 in [0, 1]; must be 0 where the source frame has no face

    @property
    def active(self) -> list[int]:
        """Rows that get a generated mouth."""
        return [row for row, strength in enumerate(self.strengths) if strength > 0]

    @property
    def active_indices(self) -> list[int]:
        return [self.first + row for row in self.active]


@torch.inference_mode()
def generate_mouths(
    models: MuseTalkModels, prep: FacePrep, batch: RenderBatch, tokens: torch.Tensor, times: StageTimes
) -> np.ndarray:
    """New 256x256 faces (A, 256, 256, 3) for the batch's active rows, given their audio tokens."""
    active = batch.active
    if not active:
        return np.empty((0,), dtype=np.uint8)
    sources = [batch.sources[row] for row in active]
    latents = prep.latents(sources, [batch.frames[row] for row in active], times)
    with times.measure(Stage.UNET):
        predicted = predict_latents(models, latents, tokens)
    with times.measure(Stage.VAE_DECODE):
        return decode_latents(models, predicted)


def compose(prep: FacePrep, batch: RenderBatch, faces: np.ndarray, times: StageTimes) -> list[np.ndarray]:
    """The batch's output frames: generated faces pasted into their source frames, the rest unchanged."""
    with times.measure(Stage.BLEND):
        out = list(batch.frames)
        for face, row in zip(faces, batch.active, strict=True):
            source = batch.sources[row]
            box = prep.box(source)
            assert box is not None, "a row with a positive strength must have a face"
            out[row] = paste_face(out[row], face, box, prep.mask(source), float(batch.strengths[row]))
        return out


def render_frames(
    models: MuseTalkModels,
    prep: FacePrep,
    frames: Iterable[tuple[int, np.ndarray]],
    features: BlockedAudioFeatures,
    strengths: np.ndarray,
    batch_size: int,
    times: StageTimes,
    bar: tqdm | None = None,
) -> Iterator[np.ndarray]:
    """Output frames in order, from (source index, frame) pairs; one UNet call per batch of output frames."""
    first = 0
    for pairs in batched(frames, batch_size):
        batch = RenderBatch(
            first=first,
            sources=[source for source, _ in pairs],
            frames=[frame for _, frame in pairs],
            strengths=strengths[first : first + len(pairs)],
        )
        faces = np.empty((0,), dtype=np.uint8)
        if batch.active:  # (an empty request would also empty the features' block cache)
            with times.measure(Stage.AUDIO_FEATURES):
                tokens = features.windows(batch.active_indices)
            faces = generate_mouths(models, prep, batch, tokens, times)
        yield from compose(prep, batch, faces, times)
        first += len(pairs)
        if bar is not None:
            bar.update(len(pairs))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def timed(items: Iterable[T], times: StageTimes, stage: Stage) -> Iterator[T]:
    """Yield from `items`, charging the time spent producing each item to `stage`."""
    iterator = iter(items)
    while True:
        with times.measure(stage):
            item = next(iterator, None)
        if item is None:
            return
        yield item
