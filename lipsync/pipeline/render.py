"""The per-batch core shared by dubbing, prepared avatars and live streams, for any generator.

Output frames come in batches; each frame has a source frame and a mouth strength (0 keeps the source mouth:
no face, or silence). The frames with a positive strength get a new face: their prepared arrays (computed
now from the crop, or read from an avatar) and their audio conditioning go through the generator, and the
faces it returns are pasted back with its blend mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from lipsync.face.blend import paste_face
from lipsync.face.crop import CropBox, crop_face
from lipsync.face.track import FaceTrack
from lipsync.models.generator import AudioConditioning, FaceBatch, GenerationRequest, Generator
from lipsync.timing import Stage, StageTimes, pipeline_times

ProgressCallback = Callable[[float], None]  # the fraction done, 0.0 .. 1.0
FACE_PASS_SHARE = 0.5  # progress share of the face pass; generating (or storing) takes the rest

T = TypeVar("T")


class FacePrep(Protocol):
    """What rendering needs to know about each source frame: where the face is, and its prepared arrays."""

    @property
    def references(self) -> dict[str, np.ndarray]:
        """The generator's reference arrays (shared by every output frame)."""
        ...

    def box(self, source: int) -> CropBox | None: ...

    def mask(self, source: int) -> np.ndarray: ...

    def prepared(
        self, sources: list[int], frames: list[np.ndarray], times: StageTimes
    ) -> dict[str, np.ndarray]:
        """The generator's per-frame arrays for these source frames (one row each)."""
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


def generator_times(generator: Generator) -> StageTimes:
    """Stage times for a run of `generator`, its own stages in their place."""
    return pipeline_times(generator.prepare_stages, generator.generate_stages, generator.device)


def face_batch(
    generator: Generator, track: FaceTrack, sources: list[int], frames: list[np.ndarray]
) -> FaceBatch:
    """The generator's square crops of these frames, with their landmarks in crop pixels."""
    size = generator.face_size
    crops, points = [], []
    for source, frame in zip(sources, frames, strict=True):
        box = track.box(source)
        assert box is not None, "only frames with a face are cropped"
        crops.append(crop_face(frame, box, size))
        scale = np.array([size / box.width, size / box.height], dtype=np.float32)
        points.append((track.points[source] - np.array([box.x1, box.y1], dtype=np.float32)) * scale)
    return FaceBatch(np.stack(crops), np.stack(points).astype(np.float32), list(sources))


def reference_arrays(
    generator: Generator,
    track: FaceTrack,
    read_frame: Callable[[int], np.ndarray],
    times: StageTimes,
) -> dict[str, np.ndarray]:
    """The generator's reference arrays: from the whole track, and from the source frames it picks."""
    arrays = generator.track_references(track)
    has_face = track.boxes[:, 0] >= 0
    picked = [int(i) for i in generator.reference_frames(has_face, track.points) if has_face[int(i)]]
    if not picked:
        return arrays
    frames = [read_frame(i) for i in picked]
    return {**arrays, **generator.prepare_references(face_batch(generator, track, picked, frames), times)}


@torch.inference_mode()
def generate_mouths(
    generator: Generator, prep: FacePrep, batch: RenderBatch, conditioning: Any, times: StageTimes
) -> np.ndarray:
    """New faces (A, S, S, 3) for the batch's active rows, given their audio conditioning."""
    active = batch.active
    if not active:
        return np.empty((0,), dtype=np.uint8)
    sources = [batch.sources[row] for row in active]
    prepared = prep.prepared(sources, [batch.frames[row] for row in active], times)
    request = GenerationRequest(prepared, prep.references, conditioning, sources)
    return generator.generate(request, times)


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
    generator: Generator,
    prep: FacePrep,
    frames: Iterable[tuple[int, np.ndarray]],
    audio: AudioConditioning,
    strengths: np.ndarray,
    batch_size: int,
    times: StageTimes,
    bar: tqdm | None = None,
) -> Iterator[np.ndarray]:
    """Output frames in order, from (source index, frame) pairs; one generator call per batch of frames."""
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
                conditioning = audio.windows(batch.active_indices)
            faces = generate_mouths(generator, prep, batch, conditioning, times)
        yield from compose(prep, batch, faces, times)
        first += len(pairs)
        if bar is not None:
            bar.update(len(pairs))


def step_aligned(batch_size: int, step_frames: int) -> int:
    """The batch size rounded up to whole generation steps."""
    return -(-batch_size // step_frames) * step_frames


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
