"""The audio conditioning of the stabilized-sync family: per output frame, its (1, 80, 16) mel window.

Audio may arrive in chunks (a live stream) or all at once (a dub): the windows are the same either way.
A mel column j is the STFT frame centred on sample j·200 (zeros before the start and after the end), so
it is final once samples up to j·200 + 400 have arrived; frame t reads columns ⌊80·t / fps⌋ … +16, i.e.
0.2 s of audio from the frame's own time plus 25 ms: that is the family's audio latency. When the audio
ends, the last windows are moved back to end at the last column, as Wav2Lip's inference does.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.io.audio import frame_count_for_audio, frame_start_sample
from lipsync.models.stabilized_sync.mel import (
    MEL_BANDS,
    MEL_CHANNELS,
    MEL_HOP,
    MEL_N_FFT,
    MEL_WINDOW_STEPS,
    PRE_EMPHASIS,
    SILENCE_VALUE,
    mel_window_start,
)
from lipsync.train.data.mel import log_mel_columns, mel_column_count

HALF_FFT = MEL_N_FFT // 2  # samples on each side of a column's centre


class MelWindows:
    """Per output frame, the mel window G_L and G_S read (a StreamingAudio; also the offline form)."""

    def __init__(self, fps: Fraction) -> None:
        self.fps = Fraction(fps)
        self._raw = np.zeros(0, np.float32)  # samples from `_offset` on
        self._emphasised = np.zeros(0, np.float64)  # their pre-emphasis, y[n] = x[n] − 0.97 x[n−1]
        self._offset = 0  # index of the first held sample
        self._previous = 0.0  # the last sample received (pre-emphasis of the next chunk's first)
        self._received = 0
        self._finished = False
        self._columns: dict[int, np.ndarray] = {}  # computed mel columns, by index

    @classmethod
    def offline(cls, samples: np.ndarray, fps: Fraction) -> MelWindows:
        windows = cls(fps)
        windows.append(samples)
        windows.finish()
        return windows

    @property
    def samples_received(self) -> int:
        return self._received

    @property
    def finished(self) -> bool:
        return self._finished

    def append(self, samples: np.ndarray) -> None:
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        if chunk.size == 0:
            return
        if self._finished:
            raise RuntimeError("audio appended after finish()")
        wide = chunk.astype(np.float64)
        before = np.concatenate([[self._previous], wide[:-1]])
        self._raw = np.concatenate([self._raw, chunk])
        self._emphasised = np.concatenate([self._emphasised, wide - PRE_EMPHASIS * before])
        self._previous = float(wide[-1])
        self._received += chunk.size

    def finish(self) -> None:
        self._finished = True

    def _final_columns(self) -> int:
        """Columns that will not change any more: all of them once the audio has ended."""
        if self._finished:
            return mel_column_count(self._received)
        return max(0, (self._received - HALF_FFT) // MEL_HOP + 1)

    def ready_frames(self, start: int = 0) -> int:
        total = frame_count_for_audio(Fraction(self._received, AUDIO_SAMPLE_RATE), self.fps)
        if self._finished:
            return max(start, total)
        final = self._final_columns()
        ready = start
        while ready < total and mel_window_start(ready, self.fps) + MEL_WINDOW_STEPS <= final:
            ready += 1
        return ready

    def forget_before(self, frame_index: int) -> None:
        """Drop audio no window from `frame_index` on can read (a window may move back at most 16 columns
        when the audio ends) and no frame from there on shows."""
        first_column = max(0, mel_window_start(frame_index, self.fps) - MEL_WINDOW_STEPS)
        keep_from = min(first_column * MEL_HOP - HALF_FFT, frame_start_sample(frame_index, self.fps))
        drop = max(0, keep_from - self._offset)
        if drop:
            self._raw = self._raw[drop:]
            self._emphasised = self._emphasised[drop:]
            self._offset += drop
        self._columns = {j: c for j, c in self._columns.items() if j >= first_column}

    def samples(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(start, self._offset), min(stop, self._received)
        return self._raw[start - self._offset : max(start, stop) - self._offset].copy()

    def windows(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(N, 1, 80, 16) float32 mel windows of these frames."""
        out = np.full(
            (len(frame_indices), MEL_CHANNELS, MEL_BANDS, MEL_WINDOW_STEPS), SILENCE_VALUE, dtype=np.float32
        )
        last = mel_column_count(self._received) if self._finished else None
        starts = []
        for frame in frame_indices:
            start = mel_window_start(frame, self.fps)
            if last is not None:
                start = min(start, max(0, last - MEL_WINDOW_STEPS))
            starts.append(start)
        needed = sorted({j for s in starts for j in range(s, s + MEL_WINDOW_STEPS)} - set(self._columns))
        available = mel_column_count(self._received) if self._finished else self._final_columns()
        self._compute([j for j in needed if j < available])
        for row, start in enumerate(starts):
            for step in range(MEL_WINDOW_STEPS):
                column = self._columns.get(start + step)
                if column is not None:
                    out[row, 0, :, step] = column
        return out

    def _compute(self, columns: list[int]) -> None:
        if not columns:
            return
        frames = np.zeros((len(columns), MEL_N_FFT), dtype=np.float64)
        for row, j in enumerate(columns):
            first = j * MEL_HOP - HALF_FFT  # sample index of the frame's first value
            lo, hi = max(first, self._offset), min(first + MEL_N_FFT, self._received)
            if hi > lo:
                frames[row, lo - first : hi - first] = self._emphasised[lo - self._offset : hi - self._offset]
        for j, column in zip(columns, log_mel_columns(frames).T, strict=True):
            self._columns[j] = column
