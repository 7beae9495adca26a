"""The files of a training run that every accelerate trainer keeps alike, under its output folder:

checkpoints/step-00001000/   accelerate's state and trainer.json (the step and the config)
export/                      the weights folder `dub` loads
validation/step-00001000.png validation strips
logs/                        TensorBoard
metrics.jsonl                every logged value, one JSON object per line (no TensorBoard needed)
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer.json"
EXPORT_DIR = "export"
VALIDATION_DIR = "validation"
LOGS_DIR = "logs"
METRICS_FILE = "metrics.jsonl"

T = TypeVar("T")


def make_accelerator(
    output_dir: Path, mixed_precision: str, seed: int, gradient_accumulation_steps: int = 1
) -> Accelerator:
    """The Accelerator of a run writing under `output_dir` (TensorBoard logs in logs/), with every
    process's random generators seeded from `seed`."""
    out = Path(output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / LOGS_DIR)),
    )
    set_seed(seed, device_specific=True)
    return accelerator


def forget_accelerate_state() -> None:
    """accelerate keeps its settings process-wide; forget them (not the distributed setup) so a later run
    in this process (tests, notebooks, the learning check) may choose another mixed precision."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


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


class LoopSettings(Protocol):
    """The fields of a trainer config the step loop reads."""

    @property
    def output_dir(self) -> Path: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def max_steps(self) -> int: ...
    @property
    def max_seconds(self) -> float | None: ...
    @property
    def log_every(self) -> int: ...
    @property
    def validate_every(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...


class LoopTrainer(Protocol):
    """What the step loop drives: a trainer at `step` (resumed at `start_step`) over `loader`."""

    step: int

    @property
    def accelerator(self) -> Accelerator: ...
    @property
    def start_step(self) -> int: ...
    @property
    def progress(self) -> bool: ...
    @property
    def loader(self) -> Iterable[Any]: ...

    def train_step(self, batch: Any) -> dict[str, float]: ...

    def save_checkpoint(self) -> Path: ...


def train_loop(
    trainer: LoopTrainer,
    config: LoopSettings,
    description: str,
    shown: tuple[str, str],
    validate: Callable[[], None],
) -> tuple[float, float]:
    """The step loop of the accelerate trainers, until max_steps or max_seconds: a validation first (on a
    fresh run, or a resumed one between validations), then per step the trainer's `train_step`, logged
    every log_every steps (with samples per second; `shown` = (label, log key) for the progress bar),
    validated and checkpointed on their periods and at the end. A run stopped by max_seconds validates
    and checkpoints where it stopped. Returns (seconds, samples per second)."""
    accelerator = trainer.accelerator
    if trainer.step < config.max_steps and (trainer.step == 0 or trainer.step % config.validate_every):
        validate()
    bar = tqdm(
        total=config.max_steps,
        initial=trainer.step,
        desc=description,
        unit="step",
        disable=not (trainer.progress and accelerator.is_main_process),
    )
    samples, started = 0, time.perf_counter()
    batches = endless(trainer.loader)
    while trainer.step < config.max_steps:
        if out_of_time(accelerator, time.perf_counter() - started, config.max_seconds):
            if trainer.step > trainer.start_step and trainer.step % config.validate_every:
                validate()
            if trainer.step > trainer.start_step and trainer.step % config.checkpoint_every:
                trainer.save_checkpoint()
            break
        logs = trainer.train_step(next(batches))
        samples += config.batch_size * accelerator.num_processes
        trainer.step += 1
        bar.update(1)
        last = trainer.step == config.max_steps
        if trainer.step % config.log_every == 0 or last:
            logs["samples_per_second"] = samples / (time.perf_counter() - started)
            log_values(accelerator, config.output_dir, trainer.step, logs)
            label, key = shown
            bar.set_postfix({label: f"{logs[key]:.4f}"})
        if trainer.step % config.validate_every == 0 or last:
            validate()
        if trainer.step % config.checkpoint_every == 0 or last:
            trainer.save_checkpoint()
    bar.close()
    seconds = time.perf_counter() - started
    accelerator.end_training()
    return seconds, samples / seconds if seconds > 0 else math.nan
