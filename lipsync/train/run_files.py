"""The files of a training run that every accelerate trainer keeps alike, under its output folder:

checkpoints/step-00001000/   accelerate's state and trainer.json (the step and the config)
export/                      the weights folder `dub` loads
validation/step-00001000.png validation strips
logs/                        TensorBoard
metrics.jsonl                every logged value, one JSON object per line (no TensorBoard needed)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer.json"
EXPORT_DIR = "export"
VALIDATION_DIR = "validation"
LOGS_DIR = "logs"
METRICS_FILE = "metrics.jsonl"

T = TypeVar("T")


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def resume(accelerator: Accelerator, output_dir: Path) -> int:
    """Load the newest complete checkpoint (one with its trainer.json); the step it reached, else 0."""
    done = sorted(
        p for p in checkpoints_dir(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()
    )
    if not done:
        return 0
    latest = done[-1]
    accelerator.load_state(str(latest))
    step = int(json.loads((latest / STATE_FILE).read_text(encoding="utf-8"))["step"])
    accelerator.print(f"resuming from {latest} (step {step})")
    return step


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, config: Any, keep: int) -> Path:
    """Save accelerate's state at `step` with trainer.json (the step and `config`, a plain dict), and keep
    only the newest `keep` checkpoints."""
    path = checkpoints_dir(output_dir) / f"{CHECKPOINT_PREFIX}{step:08d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state = {"step": step, "config": config}
        (path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        done = sorted(checkpoints_dir(output_dir).glob(f"{CHECKPOINT_PREFIX}*"))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def validation_strip_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / VALIDATION_DIR / f"{CHECKPOINT_PREFIX}{step:08d}.png"


def log_values(accelerator: Accelerator, output_dir: Path, step: int, values: dict[str, float]) -> None:
    """To the trackers (TensorBoard) and, from the main process, a line of metrics.jsonl."""
    accelerator.log(values, step=step)
    if accelerator.is_main_process:
        with open(Path(output_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def endless(loader: Iterable[T]) -> Iterator[T]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def out_of_time(accelerator: Accelerator, seconds: float, max_seconds: float | None) -> bool:
    """Whether a run limited to `max_seconds` of wall time should stop; every process agrees (any one
    over the limit stops them all), so none waits forever on the others."""
    if max_seconds is None:
        return False
    over = torch.tensor(float(seconds >= max_seconds), device=accelerator.device)
    if accelerator.num_processes > 1:
        over = accelerator.reduce(over, reduction="sum")
    return float(over) > 0
