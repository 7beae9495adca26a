"""Training stages: what a recipe is made of, and how a run skips, redoes and times them.

A stage trains into its own folder, OUT/stages/NAME. When it finishes, a marker (learning-check.json: wall
time, the trainer's summary) is written there; a rerun skips a stage whose marker and output exist. A stage
stopped before its marker resumes from the trainer's own checkpoint on the next run (with a fresh time box).
Redoing a stage (`--force-stage`) removes its folder, and redoes every stage that uses its output.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync.errors import LipsyncError
from lipsync.io.files import atomic_path
from lipsync.train.config import ConfigError, DataConfig
from lipsync.train.learning_check.config import StageEntry

STAGES_DIR = "stages"
MARKER_FILE = "learning-check.json"
ERROR_LOG = "learning-check-error.log"

Say = Callable[[str], None]


class StageFailed(LipsyncError):
    """A stage stopped with an error (exit code 1; a bad config is 2)."""

    exit_code = 1


@dataclass(frozen=True)
class StageContext:
    """Where a stage reads and writes."""

    dataset: Path  # the prepared heads
    val_clips: tuple[str, ...]  # clip ids the trainers hold out for their own validation
    stages_dir: Path  # OUT/stages
    budget_scale: float  # every time box is multiplied by this
    outputs: dict[str, Path] = field(default_factory=dict)  # stage name -> its output (filled as planned)

    def folder(self, name: str) -> Path:
        return self.stages_dir / name

    def data(self, data: DataConfig) -> DataConfig:
        """A trainer's data section on the prepared heads, holding out exactly `val_clips`."""
        return DataConfig(
            root=self.dataset,
            val_clips=self.val_clips,
            val_speakers=(),
            val_fraction=0.0,
            min_face_size=data.min_face_size,
            min_clip_frames=data.min_clip_frames,
            num_workers=data.num_workers,
        )

    def max_seconds(self, entry: StageEntry, configured: float | None, where: str) -> float:
        seconds = entry.max_seconds if entry.max_seconds is not None else configured
        if seconds is None:
            raise ConfigError(
                f"{where}: stage {entry.name} has no time box",
                f"give stages[...].max_seconds for {entry.name} (or max_seconds in its trainer config)",
            )
        return seconds * self.budget_scale


class Stage(ABC):
    """One training run of a recipe."""

    def __init__(self, name: str, needs: tuple[str, ...], about: str) -> None:
        self.name = name
        self.needs = needs  # stages whose output this one reads
        self.about = about  # one line for the report

    @abstractmethod
    def configure(self, entry: StageEntry, context: StageContext, where: str) -> Any:
        """The trainer config: the entry's file, its paths pointed inside the run, checked (ConfigError)."""

    @abstractmethod
    def output(self, folder: Path) -> Path:
        """The file or folder later stages (or the dub, or the judge) read."""

    @abstractmethod
    def train(self, config: Any, progress: bool) -> dict[str, Any]:
        """Run the trainer; a JSON-able summary (steps, held-out figures)."""


@dataclass
class StageRecord:
    """How a stage went in this run (or in the run that did it)."""

    name: str
    status: str  # "ran" | "skipped (done earlier)"
    seconds: float  # wall time of the run that did it
    summary: dict[str, Any]
    about: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "summary": self.summary,
            "about": self.about,
        }


def read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER_FILE
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def write_marker(folder: Path, seconds: float, summary: dict[str, Any]) -> None:
    data = {
        "seconds": round(seconds, 2),
        "summary": summary,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_path(folder / MARKER_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def dependents(stages: Iterable[Stage], names: Iterable[str]) -> list[str]:
    """`names` and every stage that reads, directly or not, the output of one of them (in stage order)."""
    chosen = set(names)
    ordered = list(stages)
    changed = True
    while changed:
        changed = False
        for stage in ordered:
            if stage.name not in chosen and chosen & set(stage.needs):
                chosen.add(stage.name)
                changed = True
    return [stage.name for stage in ordered if stage.name in chosen]


def run_stage(stage: Stage, config: Any, folder: Path, redo: bool, progress: bool, say: Say) -> StageRecord:
    """Skip a finished stage (unless `redo`), else train it and mark it finished; StageFailed on an error."""
    marker = read_marker(folder)
    if redo and folder.exists():
        shutil.rmtree(folder)
        marker = None
    if marker is not None and stage.output(folder).exists():
        say(f"stage {stage.name}: done earlier ({marker.get('seconds', 0):.0f} s), skipped")
        return StageRecord(
            stage.name,
            "skipped (done earlier)",
            float(marker.get("seconds", 0)),
            marker["summary"],
            stage.about,
        )
    say(f"stage {stage.name}: {stage.about}; time box {getattr(config, 'max_seconds', 0) or 0:.0f} s")
    started = time.monotonic()
    try:
        summary = stage.train(config, progress)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
        raise StageFailed(
            f"stage {stage.name} failed: {exc}",
            f"see {folder / ERROR_LOG}; fix the cause and run again (finished stages are kept)",
        ) from exc
    seconds = time.monotonic() - started
    if not stage.output(folder).exists():
        raise StageFailed(
            f"stage {stage.name} finished without writing {stage.output(folder)}",
            "report this as a bug (the trainer's output layout changed?)",
        )
    write_marker(folder, seconds, summary)
    say(f"stage {stage.name}: done in {seconds:.0f} s")
    return StageRecord(stage.name, "ran", round(seconds, 2), summary, stage.about)
