"""The generator interface: what a lip-sync family implements so that every pipeline can drive it.

Dubbing, prepared avatars, live streams, the server and the benchmarks only talk to a `Generator`. One
output frame is made in four steps, and a family decides each one:

1. **Where the face is.** Landmarks come from the shared face tracker; the family turns them into a crop
   box (`crop_box`) and a paste-back mask (`blend_mask`), and reads a square crop of `face_size` px.
2. **What does not depend on speech.** `prepare` turns a batch of crops into per-frame arrays (`frame_arrays`
   says their shapes: MuseTalk's reference latents; a pixel-space family's masked and reference crops, or
   landmark sketches). `reference_frames` picks source frames whose prepared arrays every output frame
   reads (several identity references), and `prepare_references` makes them; `track_references` makes
   arrays from the whole face track (every frame's landmarks, no pixels) for a family whose frames read
   their neighbours' landmarks. Avatars store all of them.
3. **What the audio says.** `offline_audio` and `streaming_audio` make an `AudioConditioning`: per output
   frame, whatever the family conditions on (whisper tokens, a mel window, predicted landmarks). The stream
   form takes audio in chunks and says how many frames are ready (`ready_frames`): a family that needs audio
   from the future (a window centred on the frame, a landmark sequence predicted ahead) simply reports
   frames as ready later, which is its latency.
4. **The new face.** `generate` turns prepared arrays and conditioning into faces of `face_size` px that
   the pipeline pastes back with the family's mask.

A family whose step spans several consecutive frames sets `step_frames`: streams then start their batches
at multiples of it, and offline batch sizes are rounded up to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from lipsync.config import AudioFeatureMode, FaceSettings, StreamSettings
from lipsync.face.crop import CropBox
from lipsync.face.landmarks import FaceLandmarks
from lipsync.face.mask import lower_face_mask
from lipsync.face.track import FaceTrack, landmark_box
from lipsync.timing import StageTimes


@dataclass(frozen=True)
class ArraySpec:
    """Shape (without the frame axis) and numpy dtype of one per-frame array a family prepares."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class FaceBatch:
    """Square face crops of `face_size` px, with their landmarks in crop pixels."""

    crops: np.ndarray  # (B, S, S, 3) uint8 RGB
    points: np.ndarray  # (B, 68, 2) float32, in crop pixel coordinates
    sources: list[int]  # source frame of each row


@dataclass(frozen=True)
class GenerationRequest:
    """Everything `generate` reads for a batch of output frames (only the rows that get a new mouth)."""

    prepared: dict[str, np.ndarray]  # per-frame arrays of `frame_arrays`, one row per output frame
    references: dict[str, np.ndarray]  # arrays of `prepare_references`, shared by every row
    conditioning: Any  # what the family's AudioConditioning.windows returned for these frames
    sources: list[int] = field(default_factory=list)  # source frame of each row


class AudioConditioning(Protocol):
    """Per output frame, what the generator conditions on. Frames are asked for in increasing order."""

    def windows(self, frame_indices: Sequence[int]) -> Any:
        """The conditioning of these output frames, in the form the family's `generate` takes."""
        ...


class StreamingAudio(AudioConditioning, Protocol):
    """Conditioning over audio that arrives in chunks. Frames of a stream equal frames of the offline form
    over the same audio (`offline_audio(..., mode="sliding")`), whatever the chunking."""

    @property
    def samples_received(self) -> int: ...

    @property
    def finished(self) -> bool: ...

    def append(self, samples: np.ndarray) -> None:
        """Add mono 16 kHz float32 samples, any number."""

    def finish(self) -> None:
        """No more audio will come: every frame the audio covers becomes ready."""

    def ready_frames(self, start: int = 0) -> int:
        """How many output frames, counting from 0, can be conditioned now (checked upwards from `start`)."""
        ...

    def forget_before(self, frame_index: int) -> None:
        """Frames before this one will not be asked for again: their audio may be dropped."""

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Held samples [start, stop) (what a frame shows); only audio not yet forgotten is held."""
        ...


@dataclass(frozen=True)
class GeneratorInfo:
    """What was loaded, from where, and how it runs."""

    family: str
    version: str | None
    weights: Path | None
    device: torch.device
    dtype: torch.dtype
    untrained: bool


class Generator(ABC):
    """A loaded lip-sync model family, ready for inference. See the module docstring for the four steps."""

    family: ClassVar[str]
    face_size: int  # side of the square crop `prepare` reads and `generate` returns (per class or instance)
    step_frames: ClassVar[int] = 1  # consecutive output frames one generation step spans
    prepare_stages: ClassVar[tuple[Enum, ...]] = ()  # timing stages `prepare` charges, in order
    generate_stages: ClassVar[tuple[Enum, ...]] = ()  # timing stages `generate` charges, in order

    def __init__(self, info: GeneratorInfo) -> None:
        self.info = info

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def dtype(self) -> torch.dtype:
        return self.info.dtype

    @property
    def untrained(self) -> bool:
        return self.info.untrained

    # --- 1. where the face is -------------------------------------------------------------------

    def crop_box(
        self, points: np.ndarray, frame_width: int, frame_height: int, settings: FaceSettings
    ) -> CropBox | None:
        """The crop box of one frame's 68 landmarks (None if degenerate). Default: MuseTalk's rule."""
        return landmark_box(points, frame_width, frame_height, settings)

    def blend_mask(self, landmarks: FaceLandmarks, box: CropBox) -> np.ndarray:
        """Float32 alpha (box.height, box.width): which pixels the new face replaces. Default: lower face."""
        return lower_face_mask(landmarks, box)

    # --- 2. what does not depend on speech -------------------------------------------------------

    @abstractmethod
    def frame_arrays(self) -> dict[str, ArraySpec]:
        """The per-frame arrays `prepare` returns (an avatar stores one .npy file for each)."""

    @abstractmethod
    def prepare(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        """Per-frame arrays for a batch of crops: {name: (B, *spec.shape)} for every `frame_arrays` name."""

    def reference_frames(self, has_face: np.ndarray, points: np.ndarray) -> list[int]:
        """Source frames every output frame reads as references (none by default).
        `has_face` (N,) bool and `points` (N, 68, 2) are the whole face track."""
        return []

    def prepare_references(self, faces: FaceBatch, times: StageTimes) -> dict[str, np.ndarray]:
        """Arrays made once from the crops of `reference_frames` (none by default)."""
        return {}

    def track_references(self, track: FaceTrack) -> dict[str, np.ndarray]:
        """Arrays made once from the whole face track, boxes and landmarks of every frame (none by default);
        stored and handed to `generate` with the other references."""
        return {}

    def recipe(self) -> dict[str, Any]:
        """What prepared arrays depend on besides the face options (weights, dtype): a change rebuilds."""
        return {"family": self.family, "dtype": str(self.dtype).removeprefix("torch.")}

    # --- 3. what the audio says ------------------------------------------------------------------

    @abstractmethod
    def offline_audio(self, samples: np.ndarray, fps: Fraction, mode: AudioFeatureMode) -> AudioConditioning:
        """Conditioning over a whole speech track (mono 16 kHz float32). `sliding` must equal a stream."""

    @abstractmethod
    def streaming_audio(self, fps: Fraction, settings: StreamSettings) -> StreamingAudio:
        """Conditioning over audio that arrives in chunks."""

    # --- 4. the new face -------------------------------------------------------------------------

    @abstractmethod
    def generate(self, request: GenerationRequest, times: StageTimes) -> np.ndarray:
        """(A, face_size, face_size, 3) uint8 RGB faces, one per row of the request."""

    def prime(  # noqa: B027 - optional hook: most families need none
        self,
        frame_arrays: Mapping[str, np.ndarray],
        sources: Sequence[int],
        references: Mapping[str, np.ndarray],
    ) -> None:
        """A live session opens on an avatar whose `frame_arrays` and `references` are these: work that
        does not depend on speech (per source frame, for frames `sources`, or per reference set) may be
        done now, and kept. Default: nothing."""

    def warm_up(self, batch_size: int) -> None:  # noqa: B027 - optional hook: most families need none
        """Run every network once on a full batch, so first-call costs stay out of timings."""
