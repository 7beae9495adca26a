"""Embed overlapping windows of consecutive frames from a stream, holding few frames at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor


class SlidingWindowEmbedder:
    """Frames go in one at a time; window t is frames t .. t+F-1.

    Whenever batch_size + F - 1 frames are buffered, the batch_size windows starting at the first of
    them are embedded by `embed` (given a (windows, F, *frame shape) tensor, returning (windows, D)) and
    the frames no later window needs are dropped.
    """

    def __init__(self, frames_per_window: int, batch_size: int, embed: Callable[[Tensor], Tensor]) -> None:
        if frames_per_window < 1 or batch_size < 1:
            raise ValueError(
                f"need frames_per_window and batch_size >= 1, got {frames_per_window}, {batch_size}"
            )
        self.frames_per_window = frames_per_window
        self.batch_size = batch_size
        self.frames_added = 0
        self._embed_windows = embed
        self._frames: deque[Tensor] = deque()
        self._embeddings: list[Tensor] = []
        self._embedded = 0  # windows embedded so far

    @property
    def frames_held(self) -> int:
        """Frames buffered now (at most batch_size + F - 1)."""
        return len(self._frames)

    def add(self, frame: Tensor) -> None:
        self._frames.append(frame)
        self.frames_added += 1
        if len(self._frames) >= self.batch_size + self.frames_per_window - 1:
            self._embed(self.batch_size)

    def _embed(self, windows: int) -> None:
        span = self.frames_per_window
        frames = torch.stack(list(self._frames)[: windows + span - 1])
        batch = torch.stack([frames[t : t + span] for t in range(windows)])
        with torch.inference_mode():
            self._embeddings.append(self._embed_windows(batch).float().cpu())
        self._embedded += windows
        for _ in range(windows):
            self._frames.popleft()

    def finish(self, count: int) -> Tensor | None:
        """(count, D) embeddings of windows 0 .. count-1 (None if count is 0); needs count + F - 1 frames."""
        needed = count + self.frames_per_window - 1
        if count < 0 or needed > self.frames_added:
            raise ValueError(f"{count} windows need {needed} frames, {self.frames_added} were added")
        if count > self._embedded:
            self._embed(count - self._embedded)
        return torch.cat(self._embeddings)[:count] if self._embeddings and count else None
