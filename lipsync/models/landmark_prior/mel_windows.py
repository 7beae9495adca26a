"""The audio conditioning of the landmark-prior family: per output frame t, the (1, 80, 16) mel windows of
the T = 5 frames t − 2 … t + 2 the landmark transformer reads (the middle one is also M_r's m_t).

IP_LAP centres each frame's window: frame f reads 16 columns from ⌊80·(f − 2)/fps⌋ (IP_LAP:
int(80·(f − 2)/25)), which is the project's window (`lipsync.models.stabilized_sync.mel`) of frame f − 2.
So frame t's five windows are the project's windows of frames t − 4 … t, and the latest audio it reads is
exactly what the stabilized-sync family's frame t reads: the future frames of the sequence add no latency.
Frame t is ready as soon as `MelWindows` says its own window is: once 200·⌊80·t/fps⌋ + 3400 samples have
arrived, 0.2125 s of audio from the frame's start. Windows of frames before 0 start before the audio: their
missing columns are digital silence (our choice; IP_LAP's inference starts at frame 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from lipsync.models.landmark_prior.sketch import CONTEXT_FRAMES, STACK_FRAMES
from lipsync.models.stabilized_sync.mel import (
    MEL_BANDS,
    MEL_CHANNELS,
    MEL_COLUMNS_PER_SECOND,
    MEL_WINDOW_STEPS,
    SILENCE_VALUE,
)
from lipsync.models.stabilized_sync.mel_stream import MelWindows

CENTRE_SHIFT = 2  # IP_LAP's window of frame f is the project's window of frame f − 2
FIRST_OFFSET = -CONTEXT_FRAMES - CENTRE_SHIFT  # frame t's first window is the project's of frame t − 4
CENTRE = CONTEXT_FRAMES  # row of frame t itself among its five windows


class SequenceMelWindows:
    """Per output frame, its five mel windows, (5, 1, 80, 16) (a StreamingAudio; also the offline form)."""

    def __init__(self, fps: Fraction) -> None:
        self.fps = Fraction(fps)
        self.mels = MelWindows(self.fps)

    @classmethod
    def offline(cls, samples: np.ndarray, fps: Fraction) -> SequenceMelWindows:
        windows = cls(fps)
        windows.append(samples)
        windows.finish()
        return windows

    @property
    def samples_received(self) -> int:
        return self.mels.samples_received

    @property
    def finished(self) -> bool:
        return self.mels.finished

    def append(self, samples: np.ndarray) -> None:
        self.mels.append(samples)

    def finish(self) -> None:
        self.mels.finish()

    def ready_frames(self, start: int = 0) -> int:
        """Frame t reads the project's windows of frames up to t: it is ready when that one is."""
        return self.mels.ready_frames(start)

    def forget_before(self, frame_index: int) -> None:
        """Keep the windows of the four frames before `frame_index`: its sequence starts there."""
        self.mels.forget_before(max(0, frame_index + FIRST_OFFSET))

    def samples(self, start: int, stop: int) -> np.ndarray:
        return self.mels.samples(start, stop)

    def windows(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(N, 5, 1, 80, 16) float32: the windows of frames t − 2 … t + 2 for each frame t."""
        frames = [t + FIRST_OFFSET + step for t in frame_indices for step in range(STACK_FRAMES)]
        held = sorted({max(0, frame) for frame in frames})
        table = dict(zip(held, self.mels.windows(held), strict=True))
        out = np.stack([self._window(frame, table) for frame in frames]) if frames else np.zeros(0)
        return out.reshape(len(frame_indices), STACK_FRAMES, MEL_CHANNELS, MEL_BANDS, MEL_WINDOW_STEPS)

    def _window(self, frame: int, table: dict[int, np.ndarray]) -> np.ndarray:
        if frame >= 0:
            return table[frame]
        missing = -math.floor(Fraction(MEL_COLUMNS_PER_SECOND * frame) / self.fps)  # columns before 0
        window = np.full_like(table[0], SILENCE_VALUE)
        if missing < MEL_WINDOW_STEPS:
            window[..., missing:] = table[0][..., : MEL_WINDOW_STEPS - missing]
        return window
