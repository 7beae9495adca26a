"""Frames recorded once and compared later within a tolerance that holds across CPUs and thread counts.

Float kernels round differently on another CPU class (AVX2, AVX-512, AMX), with another thread count or in
another torch build, so a digest of float output recorded on one machine fails on the next although nothing
changed. A reference keeps a few frames, cropped to the pixels the model draws, and the comparison allows
that rounding (every pixel within MAX_LEVEL_DIFF levels, the mean within MAX_MEAN_DIFF) but not a real
change: tests/test_generator_interface.py shows that one weight moved by 0.01, the crop box moved by one
pixel, or the audio window moved by one frame each fail it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Seen between AVX-512 with 2 threads, AVX-512 with 1 thread and AVX2 (tiny MuseTalk, 7 crops of 197x248):
# at most 2 levels on a pixel (a few dozen pixels), a mean of at most 0.01 levels.
MAX_LEVEL_DIFF = 3
MAX_MEAN_DIFF = 0.05


@dataclass(frozen=True)
class StoredFrames:
    """Some frames of one pipeline's output: their indices and their crops to the reference's box."""

    indices: tuple[int, ...]
    crops: np.ndarray  # (len(indices), y2 - y1, x2 - x1, 3) uint8


@dataclass(frozen=True)
class Reference:
    box: tuple[int, int, int, int]  # y1, y2, x1, x2 in frame pixels: where the model draws
    outputs: Mapping[str, StoredFrames]

    def crop(self, frame: np.ndarray) -> np.ndarray:
        y1, y2, x1, x2 = self.box
        return frame[y1:y2, x1:x2]

    def mismatch(self, name: str, frames: Sequence[np.ndarray]) -> str | None:
        """Why `frames` (a pipeline's output from frame 0 on) differ from the stored ones beyond rounding, or
        None. Only stored frames within `frames` are compared; there must be at least one."""
        stored = self.outputs[name]
        pairs = [(i, crop) for i, crop in zip(stored.indices, stored.crops, strict=True) if i < len(frames)]
        if not pairs:
            return f"{name}: none of the stored frames {stored.indices} is among the {len(frames)} given"
        diff = np.concatenate(
            [
                np.abs(self.crop(frames[i]).astype(np.int16) - crop.astype(np.int16)).ravel()
                for i, crop in pairs
            ]
        )
        worst, mean = int(diff.max()), float(diff.mean())
        if worst > MAX_LEVEL_DIFF or mean > MAX_MEAN_DIFF:
            return (
                f"{name}: frames {[i for i, _ in pairs]} differ from the reference by up to {worst} levels, "
                f"{mean:.3f} on average (rounding allows {MAX_LEVEL_DIFF} and {MAX_MEAN_DIFF})"
            )
        return None


def load_reference(path: Path) -> Reference:
    with np.load(path) as data:
        names = sorted({key.split(".")[0] for key in data.files if key != "box"})
        outputs = {
            name: StoredFrames(tuple(int(i) for i in data[f"{name}.indices"]), data[f"{name}.crops"])
            for name in names
        }
        y1, y2, x1, x2 = (int(v) for v in data["box"])
    return Reference((y1, y2, x1, x2), outputs)


def save_reference(
    path: Path,
    box: tuple[int, int, int, int],
    outputs: Mapping[str, tuple[Sequence[int], Sequence[np.ndarray]]],
) -> None:
    """Store the frames at the given indices of each named output (full frames in, crops to `box` out)."""
    y1, y2, x1, x2 = box
    arrays: dict[str, np.ndarray] = {"box": np.array(box, dtype=np.int32)}
    for name, (indices, frames) in outputs.items():
        arrays[f"{name}.indices"] = np.array(indices, dtype=np.int32)
        arrays[f"{name}.crops"] = np.stack([frames[i][y1:y2, x1:x2] for i in indices]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
