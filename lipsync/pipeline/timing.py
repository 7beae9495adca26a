"""Per-stage wall-clock accounting, so users (and `lipsync bench`) see where the time goes."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import torch


class Stage(str, Enum):
    DECODE = "decode"
    LANDMARKS = "landmarks"
    VAE_ENCODE = "vae encode"
    AUDIO_FEATURES = "audio features"
    UNET = "unet"
    VAE_DECODE = "vae decode"
    BLEND = "blend"
    ENCODE = "encode"


@dataclass
class StageTimes:
    """Seconds spent in each stage; GPU work is synchronised before the clock stops. The stages are the
    dubbing ones unless `seconds` starts from another enum's members (as `lipsync eval` does)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seconds: dict[Enum, float] = field(default_factory=lambda: dict.fromkeys(Stage, 0.0))

    @contextmanager
    def measure(self, stage: Enum) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def table(self, frames: int) -> str:
        """One line per stage: total seconds and milliseconds per output frame."""
        return stage_table({stage.value: secs for stage, secs in self.seconds.items()}, frames)


def stage_table(seconds: Mapping[str, float], frames: int) -> str:
    """One line per stage, then their sum: total seconds and milliseconds per frame."""
    per = max(frames, 1)
    total = sum(seconds.values())
    lines = [f"  {'stage':<15}{'total s':>10}{'ms/frame':>11}"]
    for stage, secs in seconds.items():
        lines.append(f"  {stage:<15}{secs:>10.2f}{1000 * secs / per:>11.1f}")
    lines.append(f"  {'all stages':<15}{total:>10.2f}{1000 * total / per:>11.1f}")
    return "\n".join(lines)
