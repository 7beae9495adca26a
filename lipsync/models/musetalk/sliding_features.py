"""Streaming-compatible audio features: whisper frames in fixed blocks, each from its own encoder pass.

Block k holds whisper frames [k*B, (k+1)*B). It is encoded from the audio that ends L frames after the block
(the lookahead) and starts at most 30 s earlier, zero-padded at the end to whisper's 30 s input like the
reference pads a short file. A block depends only on the audio timeline, never on how the audio arrived,
so a stream fed in chunks of any size yields exactly the tokens an offline run over the same audio does.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    SAMPLES_PER_WHISPER_FRAME,
    SLIDING_BLOCK_FRAMES,
    SLIDING_LOOKAHEAD_FRAMES,
    WHISPER_SEGMENT_FRAMES,
    audio_window_frames,
)
from lipsync.io.audio import frame_count_for_audio
from lipsync.models.musetalk.audio_features import (
    BlockedAudioFeatures,
    audio_window_start,
    encode_whisper_segment,
)

if TYPE_CHECKING:
    from lipsync.models.musetalk.networks import MuseTalkModels


class SlidingAudioFeatures(BlockedAudioFeatures):
    """Audio appended in chunks; tokens for a video frame as soon as the audio that fixes them has arrived."""

    def __init__(
        self,
        models: MuseTalkModels,
        fps: Fraction,
        block_frames: int = SLIDING_BLOCK_FRAMES,
        lookahead_frames: int = SLIDING_LOOKAHEAD_FRAMES,
    ) -> None:
        if block_frames < 1 or lookahead_frames < 0:
            raise ValueError(f"bad block/lookahead frames: {block_frames}, {lookahead_frames}")
        if block_frames + lookahead_frames > WHISPER_SEGMENT_FRAMES:
            raise ValueError(f"block + lookahead must fit in whisper's {WHISPER_SEGMENT_FRAMES} frames")
        super().__init__(models, fps)
        self.block_frames = block_frames
        self.lookahead_frames = lookahead_frames
        self._chunks: list[np.ndarray] = []
        self._kept_from = 0  # sample index of the first sample still held
        self._received = 0  # samples appended so far
        self._finished = False

    @classmethod
    def offline(
        cls,
        models: MuseTalkModels,
        samples: np.ndarray,
        fps: Fraction,
        block_frames: int = SLIDING_BLOCK_FRAMES,
        lookahead_frames: int = SLIDING_LOOKAHEAD_FRAMES,
    ) -> SlidingAudioFeatures:
        """All the audio at once: the offline twin of a stream over the same samples."""
        features = cls(models, fps, block_frames, lookahead_frames)
        features.append(samples)
        features.finish()
        return features

    @property
    def samples_received(self) -> int:
        return self._received

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def valid_frames(self) -> int | None:
        return self._received // SAMPLES_PER_WHISPER_FRAME if self._finished else None

    def append(self, samples: np.ndarray) -> None:
        """Add mono 16 kHz float32 samples, any number."""
        if self._finished:
            raise RuntimeError("the audio was finished; start a new SlidingAudioFeatures for new audio")
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (N,), got shape {samples.shape}")
        if len(samples):
            self._chunks.append(np.ascontiguousarray(samples, dtype=np.float32))
            self._received += len(samples)

    def finish(self) -> None:
        """No more audio: blocks past the end are encoded with zeros, as an offline run would."""
        self._finished = True

    def frame_count(self) -> int:
        """Video frames the audio so far covers (all of them once finished): floor(seconds * fps)."""
        return frame_count_for_audio(Fraction(self._received, AUDIO_SAMPLE_RATE), self._fps)

    def ready_frames(self, start: int = 0) -> int:
        """How many video frames, counting from 0, can be computed now (checked upwards from `start`)."""
        total = self.frame_count()
        if self._finished:
            return total
        ready = start
        while ready < total and self._block_ready(self._last_block(ready)):
            ready += 1
        return ready

    def forget_before(self, frame_index: int) -> None:
        """Drop audio that no frame from `frame_index` on needs (streams call this as frames go out)."""
        first_block = max(0, self._window_first(frame_index)) // self.block_frames
        keep_from = self._window_start(first_block) * SAMPLES_PER_WHISPER_FRAME
        if keep_from <= self._kept_from:
            return
        held = self._held()[keep_from - self._kept_from :]
        self._chunks = [held] if len(held) else []
        self._kept_from = keep_from

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Held samples [start, stop) (clipped to what was received); forget_before decides what is held."""
        if start < self._kept_from:
            raise RuntimeError(f"audio from sample {start} was forgotten (held from {self._kept_from})")
        return self._held()[start - self._kept_from : max(start, stop) - self._kept_from]

    # --- internals --------------------------------------------------------------------------------

    def _last_block(self, frame_index: int) -> int:
        width = audio_window_frames(self._models.audio_window)
        last_whisper_frame = self._window_first(frame_index) + width - 1
        return max(0, last_whisper_frame) // self.block_frames

    def _window_first(self, frame_index: int) -> int:
        return audio_window_start(frame_index, self._fps, self._models.audio_window)

    def _window_end(self, block: int) -> int:
        return (block + 1) * self.block_frames + self.lookahead_frames

    def _window_start(self, block: int) -> int:
        return max(0, self._window_end(block) - WHISPER_SEGMENT_FRAMES)

    def _block_ready(self, block: int) -> bool:
        return self._finished or self._received >= self._window_end(block) * SAMPLES_PER_WHISPER_FRAME

    def _held(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.empty(0, dtype=np.float32)

    def _compute_block(self, index: int) -> torch.Tensor:
        if not self._block_ready(index):
            raise RuntimeError(f"audio block {index} is not complete yet; ask ready_frames() first")
        first = self._window_start(index)
        samples = self.samples(
            first * SAMPLES_PER_WHISPER_FRAME, self._window_end(index) * SAMPLES_PER_WHISPER_FRAME
        )
        hidden = encode_whisper_segment(self._models, samples)
        offset = index * self.block_frames - first
        return hidden[offset : offset + self.block_frames].clone()
