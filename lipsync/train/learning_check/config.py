"""The learning check's YAML: which clips, how they are cut and prepared, the stages' time boxes, scoring.

Relative paths are relative to the YAML file's folder. Every key is checked: an unknown key, a wrong type
or a bad value is a ConfigError naming it.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.train.config import ConfigError, load_config

DeviceName = Literal["auto", "cpu", "cuda"]
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class PrepareSettings:
    """How the heads become a training dataset (`lipsync data prepare` options)."""

    clip_seconds: float = 2.0  # heads are cut into clips of at most this long (4-6.4 s heads: 2-4 clips)
    min_clip_seconds: float = 1.0
    min_face_size: int = 64  # px in the source video
    jobs: int | None = None  # worker processes; None: min(4, CPU cores)


@dataclass(frozen=True)
class StageEntry:
    """One training stage of the recipe: its trainer config and its time box."""

    name: str = ""  # a stage of the family's recipe
    config: Path | None = None  # the trainer's YAML (`lipsync train ... --config`)
    max_seconds: float | None = None  # wall-time box; None: the trainer config's own max_seconds
    max_steps: int | None = None  # overrides the trainer config's max_steps (short test runs)


@dataclass(frozen=True)
class EvaluationSettings:
    """How the tails are dubbed and scored."""

    seed: int = 41  # the shuffled audio's order and the copied mouths' frames
    shuffle_piece_seconds: float = 0.2  # the tail's audio is cut into pieces this long, then shuffled
    copy_min_distance: int = 5  # frames: a copied mouth comes from a frame at least this far away
    batch_size: int = 8  # frames per generator pass when dubbing
    device: DeviceName = "auto"
    eval_weights: Path | None = None  # `lipsync eval` weights folder (syncnet_v2 for LSE); None: none

    @property
    def shuffle_piece_samples(self) -> int:
        """The shuffled audio's piece length in samples at the project's audio rate."""
        return max(1, round(self.shuffle_piece_seconds * AUDIO_SAMPLE_RATE))


@dataclass(frozen=True)
class LearningCheckConfig:
    """`lipsync learning-check CONFIG --out DIR`."""

    family: str = ""  # whose recipe trains (lipsync.train.learning_check.recipes)
    clips: tuple[Path, ...] = ()  # talking-face videos with audio; shell patterns (talk_*.mp4) allowed
    head_fraction: float = 0.8  # the head (training) is the first round(fraction x frames) frames
    validation_clips: int = 1  # prepared clips the trainers hold out for their own validation
    prepare: PrepareSettings = PrepareSettings()
    stages: tuple[StageEntry, ...] = ()
    evaluation: EvaluationSettings = EvaluationSettings()


def load_learning_check_config(path: Path) -> LearningCheckConfig:
    """Read and check a learning-check YAML; clip patterns are expanded (sorted)."""
    config = load_config(Path(path), LearningCheckConfig)
    source = str(path)
    config = replace(config, clips=_expanded(config.clips, source))
    check_config(config, source)
    return config


def _expanded(clips: tuple[Path, ...], source: str) -> tuple[Path, ...]:
    found: list[Path] = []
    for index, clip in enumerate(clips):
        if GLOB_CHARACTERS & set(str(clip)):
            matches = sorted(Path(p) for p in glob.glob(str(clip)))
            if not matches:
                raise ConfigError(
                    f"{source}: clips[{index}] ({clip}) matches no file", "give existing videos or patterns"
                )
            found.extend(matches)
        else:
            found.append(clip)
    return tuple(found)


def check_config(config: LearningCheckConfig, source: str = "config") -> None:
    """Checks that need no training: values, and that every clip exists once."""
    if not config.family:
        raise ConfigError(
            f"{source}: family is missing", "name the model family, e.g. family: stabilized-sync"
        )
    if not config.clips:
        raise ConfigError(f"{source}: clips is empty", "list the talking-face videos (paths or patterns)")
    stems: dict[str, int] = {}
    for index, clip in enumerate(config.clips):
        if not clip.is_file():
            raise ConfigError(
                f"{source}: clips[{index}] {clip} does not exist", "give an existing video file"
            )
        if clip.stem in stems:
            raise ConfigError(
                f"{source}: clips[{index}] {clip} has the same name as clips[{stems[clip.stem]}]",
                "give videos with different file names (the name labels the clip in the report)",
            )
        stems[clip.stem] = index
    if not 0 < config.head_fraction < 1:
        raise ConfigError(
            f"{source}: head_fraction is {config.head_fraction}", "give a fraction between 0 and 1 (e.g. 0.8)"
        )
    if config.validation_clips < 0:
        raise ConfigError(f"{source}: validation_clips is {config.validation_clips}", "give 0 or more")
    _check_prepare(config.prepare, source)
    _check_evaluation(config.evaluation, source)
    for index, entry in enumerate(config.stages):
        where = f"{source}: stages[{index}]"
        if entry.config is None:
            raise ConfigError(f"{where}.config is missing", "give the trainer's YAML for this stage")
        if not entry.config.is_file():
            raise ConfigError(f"{where}.config {entry.config} does not exist", "give an existing YAML file")
        check_stage_budget(entry, where)


def check_stage_budget(entry: StageEntry, where: str) -> None:
    """A stage's time box and step cap, when given, are positive."""
    if entry.max_seconds is not None and not (entry.max_seconds > 0 and math.isfinite(entry.max_seconds)):
        raise ConfigError(f"{where}.max_seconds is {entry.max_seconds}", "give a positive number of seconds")
    if entry.max_steps is not None and entry.max_steps < 1:
        raise ConfigError(f"{where}.max_steps is {entry.max_steps}", "give 1 or more, or leave it out")


def _check_prepare(prepare: PrepareSettings, source: str) -> None:
    if not 0 < prepare.min_clip_seconds <= prepare.clip_seconds:
        raise ConfigError(
            f"{source}: prepare.clip_seconds {prepare.clip_seconds} / prepare.min_clip_seconds "
            f"{prepare.min_clip_seconds}",
            "give 0 < prepare.min_clip_seconds <= prepare.clip_seconds",
        )
    if prepare.min_face_size < 1:
        raise ConfigError(f"{source}: prepare.min_face_size is {prepare.min_face_size}", "give 1 px or more")
    if prepare.jobs is not None and prepare.jobs < 1:
        raise ConfigError(f"{source}: prepare.jobs is {prepare.jobs}", "give 1 or more, or leave it out")


def _check_evaluation(evaluation: EvaluationSettings, source: str) -> None:
    if not evaluation.shuffle_piece_seconds > 0:
        raise ConfigError(
            f"{source}: evaluation.shuffle_piece_seconds is {evaluation.shuffle_piece_seconds}",
            "give a positive length (0.2 s: the span of one mel window)",
        )
    if evaluation.copy_min_distance < 1:
        raise ConfigError(
            f"{source}: evaluation.copy_min_distance is {evaluation.copy_min_distance}",
            "give 1 frame or more",
        )
    if evaluation.batch_size < 1:
        raise ConfigError(f"{source}: evaluation.batch_size is {evaluation.batch_size}", "give 1 or more")
