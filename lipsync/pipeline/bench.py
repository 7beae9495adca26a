"""`lipsync bench`: where the time goes, per stage, for given weights, device, dtype and batch size."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lipsync.config import DubSettings
from lipsync.models.device import dtype_label
from lipsync.pipeline.dub import DubPipeline


def run_benchmark(weights: Path, settings: DubSettings, source: Path, audio: Path, frames: int) -> str:
    """Dub the first `frames` frames (after a warm-up batch) and report ms/frame per stage and fps."""
    pipeline = DubPipeline.from_pretrained(weights, settings=settings)
    pipeline.warm_up()
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as scratch:
        summary = pipeline(source, audio, Path(scratch) / "bench.mp4", progress=False, max_frames=frames)
    info = pipeline.generator.info
    stage_fps = summary.frames / max(summary.times.total, 1e-9)
    wall_fps = summary.frames / max(summary.wall_seconds, 1e-9)
    model = " ".join(filter(None, (info.family, info.version)))
    header = [
        f"lipsync bench: {source.name} + {audio.name}, {summary.frames} frames",
        f"  weights {weights} ({model}{', UNTRAINED' if info.untrained else ''}), "
        f"device {info.device}, dtype {dtype_label(info.dtype)}, "
        f"batch size {settings.runtime.batch_size}",
    ]
    footer = [
        f"  total: {stage_fps:.2f} frames/s over all stages "
        f"({wall_fps:.2f} frames/s wall clock, model loading excluded)",
    ]
    return "\n".join([*header, summary.times.table(summary.frames), *footer])
