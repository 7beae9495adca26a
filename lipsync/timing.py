"""Per-stage wall-clock accounting, so users (and `lipsync bench`) see where the time goes."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import torch


class Stage(str, Enum):
    """The stages every pipeline has; a generator adds its own (see `pipeline_times`)."""

    DECODE = "decode"
    LANDMARKS = "landmarks"
    AUDIO_FEATURES = "audio features"
    BLEND = "blend"
    ENCODE = "encode"


@dataclass
class StageTimes:
    """Seconds spent in each stage; GPU work is synchronised before the clock stops. `seconds` starts with
    the stages in the order the table shows them; a stage measured that is not there is added at the end."""

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
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def table(self, frames: int) -> str:
        """One line per stage: total seconds and milliseconds per output frame."""
        return stage_table({stage.value: secs for stage, secs in self.seconds.items()}, frames)


def pipeline_times(
    prepare_stages: Sequence[Enum], generate_stages: Sequence[Enum], device: torch.device | None = None
) -> StageTimes:
    """Times for a pipeline run, stages in the order frames pass them: decode, landmarks, the generator's
    prepare stages, audio features, its generate stages, blend, encode."""
    order = [Stage.DECODE, Stage.LANDMARKS, *prepare_stages, Stage.AUDIO_FEATURES, *generate_stages]
    order += [Stage.BLEND, Stage.ENCODE]
    return StageTimes(device or torch.device("cpu"), dict.fromkeys(order, 0.0))


def stage_table(seconds: Mapping[str, float], frames: int) -> str:
    """One line per stage, then their sum: total seconds and milliseconds per frame."""
    per = max(frames, 1)
    total = sum(seconds.values())
    lines = [f"  {'stage':<15}{'total s':>10}{'ms/frame':>11}"]
    for stage, secs in seconds.items():
        lines.append(f"  {stage:<15}{secs:>10.2f}{1000 * secs / per:>11.1f}")
    lines.append(f"  {'all stages':<15}{total:>10.2f}{1000 * total / per:>11.1f}")
    return "\n".join(lines)
