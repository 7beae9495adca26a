"""Endless random training batches drawn from a sample source, and the fixed validation batch.

A source says how many clips it can draw from (`len`), draws one sample index with a generator (`draw`) and
turns a list of them into a model-ready batch (`batch`). Each process and DataLoader worker draws from its
own generator, seeded by (seed, rank, worker id), so processes and workers never repeat each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from lipsync.train.config import ConfigError

B = TypeVar("B")
B_co = TypeVar("B_co", covariant=True)


class SampleSource(Protocol[B_co]):
    def __len__(self) -> int: ...

    def draw(self, rng: np.random.Generator) -> Any: ...

    def batch(self, samples: Sequence[Any]) -> B_co: ...


class RandomBatches(IterableDataset[B], Generic[B]):
    """Endless batches of `batch_size` random samples (use with DataLoader(batch_size=None)). An empty
    source is a ConfigError: no clip has `min_frames` frames, and `fix` says what to do."""

    def __init__(
        self, source: SampleSource[B], batch_size: int, seed: int, rank: int, min_frames: int, fix: str
    ) -> None:
        super().__init__()
        if not len(source):
            raise ConfigError(f"no training clip has {min_frames} frames or more", fix)
        self.source, self.batch_size, self.seed, self.rank = source, batch_size, seed, rank

    def __iter__(self) -> Iterator[B]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.rank, info.id if info else 0])
        while True:
            yield self.source.batch([self.source.draw(rng) for _ in range(self.batch_size)])


def fixed_batch(source: SampleSource[B], count: int, seed: int) -> B:
    """The same `count` samples on every call: the validation batch."""
    rng = np.random.default_rng(seed)
    return source.batch([source.draw(rng) for _ in range(count)])
