"""A corpus learning check's YAML: the corpus split, how it is prepared, the stages, scoring and pass lines.

A recipe is in corpus mode when it has a `corpus` section. Relative paths are relative to the YAML file's
folder; every key is checked (an unknown key, a wrong type or a bad value is a ConfigError naming it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from lipsync.train.config import ConfigError, load_config
from lipsync.train.learning_check.config import PrepareSettings, StageEntry, check_stage_budget
from lipsync.train.learning_check.recipes import LandmarksStage, RendererStage, StabilizedStage, SyncNetStage
from lipsync.train.learning_check.stages import Stage

# The stages of corpus mode by name, each wrapping its trainer; a stage's `needs` (the stages whose output it
# reads) must come earlier in the recipe: the stabilized-sync G_S and G_L read AVSyncNet (its audio encoder
# gives F_A, and G_L's sync loss), G_L reads G_S (it closes the identity references); the renderer is
# exported with the transformer.
CORPUS_STAGES: dict[str, Callable[[], Stage]] = {
    "syncnet": lambda: SyncNetStage(
        "syncnet", ("wav2lip", "stable"), "Wav2Lip-style SyncNet (`train syncnet`)"
    ),
    "avsyncnet": lambda: SyncNetStage(
        "avsyncnet", ("avsyncnet",), "AVSyncNet (`train syncnet`, kind avsyncnet)"
    ),
    "silent": lambda: StabilizedStage(
        "silent", "silent", "avsyncnet", None, "stabilized-sync G_S, the silent-lip generator"
    ),
    "talking": lambda: StabilizedStage(
        "talking",
        "talking",
        "avsyncnet",
        "silent",
        "stabilized-sync G_L: L_ss with AVSyncNet, G_S references",
    ),
    "landmarks": lambda: LandmarksStage(
        "landmarks", "the landmark-prior audio-to-landmark transformer (`train landmarks`)"
    ),
    "renderer": lambda: RendererStage(
        "renderer", "landmarks", "landmark-prior M_a + M_r, exported with the transformer"
    ),
}
SPLITS = ("held_out", "person")  # held-out clips of the training persons; every clip of the held-out person
SYNCNET_METRICS = ("accuracy", "auc", "loss")
DUB_METRICS = (  # a generator's dubs (corpus_dubs.py)
    "r",
    "abs_r",
    "r_shuffled",
    "abs_r_shuffled",
    "r_copied",
    "abs_r_copied",
    "r_min",
    "r_max",
    "best_lag",
)
METRICS = {
    "syncnet": SYNCNET_METRICS,
    "avsyncnet": SYNCNET_METRICS,
    "silent": DUB_METRICS,
    "talking": DUB_METRICS,
    "landmarks": ("r", "abs_r", "r_shuffled", "abs_r_shuffled", "r_min", "r_max", "r_real"),
    "renderer": (*DUB_METRICS, "r_real_landmarks", "abs_r_real_landmarks"),
}


# One prepared clip per corpus clip (a synthesised sentence is at most about 6.5 s); small faces kept.
CORPUS_PREPARE = PrepareSettings(clip_seconds=12.0, min_face_size=0)


@dataclass(frozen=True)
class CorpusSettings:
    """Which corpus, and which of its clips are held out."""

    folder: Path | None = None  # OUT of `lipsync data synth` (or that layout); --corpus replaces it
    held_out_fraction: float = 0.15  # of each training person's clips, chosen by a hash of the clip's path
    held_out_clips: tuple[str, ...] = ()  # "person/clip_0003" (no suffix): held out instead of the fraction
    held_out_person: str | None = None  # every clip of this person held out; None: the last by name


@dataclass(frozen=True)
class PassLine:
    """One pass line: a stage's metric on a split, at least or at most a value."""

    stage: str = ""
    metric: str = ""
    split: str = "held_out"
    at_least: float | None = None
    at_most: float | None = None


@dataclass(frozen=True)
class CorpusScoring:
    """How the trained stages are scored on the held-out clips."""

    eval_pairs: int = 512  # SyncNet pairs per split (half in sync, half shifted)
    shuffle_piece_seconds: float = 0.2  # the landmark control's audio is shuffled in pieces this long
    seed: int = 41  # the shuffled audio's order
    max_clips: int | None = None  # clips scored per split (the first by name); None: all
    dub_clips: int = 4  # of those, the clips a generator dubs, spread over them (3-4 dubs each, each tracked)


@dataclass(frozen=True)
class CorpusCheckConfig:
    """`lipsync learning-check RECIPE --out DIR [--corpus DIR]` on a controlled-sync corpus."""

    corpus: CorpusSettings = CorpusSettings()
    prepare: PrepareSettings = CORPUS_PREPARE
    stages: tuple[StageEntry, ...] = ()
    pass_lines: tuple[PassLine, ...] = ()
    scoring: CorpusScoring = CorpusScoring()


def is_corpus_recipe(path: Path) -> bool:
    """Whether the YAML at `path` is a corpus recipe (it has a `corpus` section)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # the loader that follows says what is wrong
    return isinstance(data, dict) and "corpus" in data


def load_corpus_config(
    path: Path, corpus: Path | None = None, held_out_person: str | None = None
) -> CorpusCheckConfig:
    """Read and check a corpus recipe; `corpus` and `held_out_person` (the command line's) replace the
    recipe's."""
    config = load_config(Path(path), CorpusCheckConfig)
    settings = config.corpus
    if corpus is not None:
        settings = replace(settings, folder=Path(corpus))
    if held_out_person is not None:
        settings = replace(settings, held_out_person=held_out_person)
    config = replace(config, corpus=settings)
    check_corpus_config(config, str(path))
    return config


def check_corpus_config(config: CorpusCheckConfig, source: str = "config") -> None:
    """Checks that need no training (the corpus's persons and clips are checked by the split)."""
    corpus = config.corpus
    if corpus.folder is None:
        raise ConfigError(
            f"{source}: corpus.folder is not set", "give --corpus DIR (a `lipsync data synth` OUT)"
        )
    if not corpus.folder.is_dir():
        raise ConfigError(f"{source}: the corpus {corpus.folder} is not a folder", "give --corpus DIR")
    if not 0 < corpus.held_out_fraction < 1:
        raise ConfigError(
            f"{source}: corpus.held_out_fraction is {corpus.held_out_fraction}",
            "give a fraction between 0 and 1 (e.g. 0.15)",
        )
    if not config.stages:
        raise ConfigError(f"{source}: stages is empty", f"give one or more of {', '.join(CORPUS_STAGES)}")
    seen: set[str] = set()
    for index, entry in enumerate(config.stages):
        where = f"{source}: stages[{index}]"
        if entry.name not in CORPUS_STAGES:
            raise ConfigError(f"{where}.name is {entry.name!r}", f"use one of {', '.join(CORPUS_STAGES)}")
        if entry.name in seen:
            raise ConfigError(f"{where}.name {entry.name!r} is given twice", "give each stage once")
        missing = [need for need in CORPUS_STAGES[entry.name]().needs if need not in seen]
        if missing:
            raise ConfigError(
                f"{where}: stage {entry.name} reads the output of {', '.join(missing)}, not before it",
                f"give the stages {', '.join(missing)} earlier in the recipe",
            )
        seen.add(entry.name)
        if entry.config is None or not entry.config.is_file():
            raise ConfigError(f"{where}.config {entry.config} does not exist", "give the trainer's YAML")
        check_stage_budget(entry, where)
    for index, line in enumerate(config.pass_lines):
        check_pass_line(line, seen, f"{source}: pass_lines[{index}]")
    scoring = config.scoring
    if scoring.eval_pairs < 2:
        raise ConfigError(f"{source}: scoring.eval_pairs is {scoring.eval_pairs}", "give 2 or more")
    if scoring.max_clips is not None and scoring.max_clips < 1:
        raise ConfigError(
            f"{source}: scoring.max_clips is {scoring.max_clips}", "give 1 or more, or leave it out"
        )
    if scoring.dub_clips < 1:
        raise ConfigError(f"{source}: scoring.dub_clips is {scoring.dub_clips}", "give 1 or more")
    if not scoring.shuffle_piece_seconds > 0:
        raise ConfigError(
            f"{source}: scoring.shuffle_piece_seconds is {scoring.shuffle_piece_seconds}",
            "give a positive length",
        )


def check_pass_line(line: PassLine, stages: set[str], where: str) -> None:
    if line.stage not in stages:
        raise ConfigError(
            f"{where}.stage is {line.stage!r}", f"name a stage of the recipe: {', '.join(sorted(stages))}"
        )
    if line.metric not in METRICS[line.stage]:
        raise ConfigError(
            f"{where}.metric is {line.metric!r}", f"stage {line.stage} gives {', '.join(METRICS[line.stage])}"
        )
    if line.split not in SPLITS:
        raise ConfigError(f"{where}.split is {line.split!r}", f"use one of {', '.join(SPLITS)}")
    if (line.at_least is None) == (line.at_most is None):
        raise ConfigError(
            f"{where} has {'both' if line.at_least is not None else 'neither'} at_least and at_most",
            "give exactly one",
        )
