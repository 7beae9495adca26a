"""Encoder outputs of reference images, kept between calls, keyed by the images' content.

Some generators encode images that do not depend on the audio: stabilized-sync's G_L encodes each source
frame's identity and pose references, landmark-prior's M_a and M_r encode the video's reference faces and
lips. A live avatar shows the same images again and again, and a dub shows the same reference set for every
frame, so encoding each once and keeping the result leaves only the audio-dependent work per output frame.
Entries are keyed by a digest of the images, so the cache can never serve features of other pixels
(another avatar, another video), and it is bounded by bytes, least recently used first out. An entry is a
list of tensors with a leading dimension of 1 (one row of the batch `encode` returns).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

DEFAULT_BUDGET_BYTES = 384 * 2**20  # G_L: ~330 source frames at 96 px, ~200 at 128 px (fp32)
DIGEST_BYTES = 16


def frame_key(*images: np.ndarray) -> bytes:
    """A digest of the images (or any arrays) one entry is encoded from."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for image in images:
        digest.update(np.ascontiguousarray(image).data)
    return digest.digest()


def entry_bytes(entry: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry)


class EncoderCache:
    """Encoder outputs (lists of (1, ...) tensors, one list per key), at most `budget_bytes` of them."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, list[Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def encoded(self, keys: list[bytes], encode: Callable[[list[int]], list[Tensor]]) -> list[Tensor]:
        """The batch's encoder outputs, level by level, for `keys`; `encode(rows)` computes those of the
        given rows of the batch (as one batch) for the keys not kept. Thread-safe: sessions
        sharing a generator may call it at once (the encoding itself runs outside the lock)."""
        with self._lock:
            kept = {key: self._entries[key] for key in keys if key in self._entries}
            for key in kept:
                self._entries.move_to_end(key)
        missing = [row for row, key in enumerate(keys) if key not in kept]
        fresh: dict[bytes, list[Tensor]] = {}
        if missing:
            levels = encode(missing)
            for index, row in enumerate(missing):
                fresh[keys[row]] = [level[index : index + 1].clone() for level in levels]
        with self._lock:
            self.misses += len(missing)
            self.hits += len(keys) - len(missing)
            for key, entry in fresh.items():
                self._keep(key, entry)
        entries = [kept[key] if key in kept else fresh[key] for key in keys]
        if len(entries) == 1:
            return list(entries[0])  # the kept tensors themselves (no copy): callers only read them
        return [torch.cat(level, dim=0) for level in zip(*entries, strict=True)]

    def fill(self, keys: list[bytes], encode: Callable[[list[int]], list[Tensor]]) -> bool:
        """Encode and keep the entries of `keys` not kept yet, unless that would push out others (the
        budget is full); returns whether every entry of `keys` is now kept."""
        with self._lock:
            missing = [row for row, key in enumerate(keys) if key not in self._entries]
        if not missing:
            return True
        levels = encode(missing)
        with self._lock:
            for index, row in enumerate(missing):
                entry = [level[index : index + 1].clone() for level in levels]
                if self.bytes + entry_bytes(entry) > self.budget_bytes:
                    return False
                self._keep(keys[row], entry)
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def _keep(self, key: bytes, entry: list[Tensor]) -> None:
        size = entry_bytes(entry)
        if size > self.budget_bytes or key in self._entries:
            return
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.budget_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(old)
