"""Recipes: per family, the training stages of a learning check and which outputs dub and judge.

The judge, when a recipe has one, is a SyncNet trained on the same heads, used only to score the dubs (never
as a training loss). A family adds its recipe to RECIPES; the stage kinds here wrap the project's trainers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lipsync.train.config import (
    ConfigError,
    LandmarkTrainConfig,
    RendererTrainConfig,
    StabilizedTrainConfig,
    SyncNetTrainConfig,
    load_config,
)
from lipsync.train.learning_check.config import StageEntry
from lipsync.train.learning_check.stages import Stage, StageContext


class SyncNetStage(Stage):
    """`lipsync train syncnet`: a sync expert (AVSyncNet, or a SyncNet judge). Its output is the last
    weights: the held-out clip is one short clip, too few pairs to pick a "best" step by."""

    def __init__(self, name: str, kinds: tuple[str, ...], about: str) -> None:
        super().__init__(name, (), about)
        self.kinds = kinds

    def configure(self, entry: StageEntry, context: StageContext, where: str) -> SyncNetTrainConfig:
        assert entry.config is not None
        config = load_config(entry.config, SyncNetTrainConfig)
        if config.kind not in self.kinds:
            raise ConfigError(
                f"{where}: {entry.config} trains kind {config.kind}",
                f"stage {self.name} needs kind {' or '.join(self.kinds)}",
            )
        config = replace(
            config,
            output_dir=context.folder(self.name),
            data=context.data(config.data),
            max_seconds=context.max_seconds(entry, config.max_seconds, where),
            max_steps=entry.max_steps or config.max_steps,
        )
        from lipsync.train.syncnet_trainer import validate_syncnet_config

        validate_syncnet_config(config)
        return config

    def output(self, folder: Path) -> Path:
        from lipsync.train.syncnet_trainer import AVSYNC_LAST_CHECKPOINT, LAST_CHECKPOINT

        return folder / (AVSYNC_LAST_CHECKPOINT if "avsyncnet" in self.kinds else LAST_CHECKPOINT)

    def train(self, config: Any, progress: bool) -> dict[str, Any]:
        from lipsync.train.syncnet_trainer import train_syncnet

        result = train_syncnet(config, progress=progress)
        return {
            "steps": result.steps,
            "train_seconds": round(result.seconds, 1),
            "train_clips": result.train_clips,
            "val_clips": result.val_clips,
            "val_accuracy": result.val_accuracy,
            "val_auc": result.val_auc,
            "val_loss": result.val_loss,
            "checkpoint": str(result.checkpoint),
        }


class ExportStage(Stage):
    """A generator trainer's stage: its output is the run's export, a weights folder."""

    def output(self, folder: Path) -> Path:
        from lipsync.train.run_files import EXPORT_DIR

        return folder / EXPORT_DIR


class StabilizedStage(ExportStage):
    """`lipsync train stabilized`: G_S (stage silent) or G_L (stage talking); its output is the export."""

    def __init__(self, name: str, stage: str, avsyncnet: str, silent: str | None, about: str) -> None:
        super().__init__(name, (avsyncnet,) if silent is None else (avsyncnet, silent), about)
        self.stage, self.avsyncnet, self.silent = stage, avsyncnet, silent

    def configure(self, entry: StageEntry, context: StageContext, where: str) -> StabilizedTrainConfig:
        assert entry.config is not None
        config = load_config(entry.config, StabilizedTrainConfig)
        if config.stage != self.stage:
            raise ConfigError(
                f"{where}: {entry.config} trains stage {config.stage}",
                f"stage {self.name} needs stage {self.stage}",
            )
        config = replace(
            config,
            output_dir=context.folder(self.name),
            data=context.data(config.data),
            avsyncnet=context.outputs[self.avsyncnet],
            silent_generator=context.outputs[self.silent] if self.silent else None,
            max_seconds=context.max_seconds(entry, config.max_seconds, where),
            max_steps=entry.max_steps or config.max_steps,
        )
        from lipsync.train.stabilized_config import validate_stabilized_config

        validate_stabilized_config(config)
        return config

    def train(self, config: Any, progress: bool) -> dict[str, Any]:
        from lipsync.train.stabilized_trainer import train_stabilized

        result = train_stabilized(config, progress=progress)
        first = result.validation_l1[0] if result.validation_l1 else None
        last = result.validation_l1[-1] if result.validation_l1 else None
        return {
            "steps": result.steps,
            "samples_per_second": round(result.samples_per_second, 2),
            "held_out_l1_first": {"step": first[0], "l1": first[1]} if first else None,
            "held_out_l1_last": {"step": last[0], "l1": last[1]} if last else None,
            "export": str(result.export_dir),
        }


class LandmarksStage(ExportStage):
    """`lipsync train landmarks`: the landmark-prior family's audio-to-landmark transformer; its output is
    the export (a weights folder whose M_a and M_r are scaffolds)."""

    def __init__(self, name: str, about: str) -> None:
        super().__init__(name, (), about)

    def configure(self, entry: StageEntry, context: StageContext, where: str) -> LandmarkTrainConfig:
        assert entry.config is not None
        config = load_config(entry.config, LandmarkTrainConfig)
        config = replace(
            config,
            output_dir=context.folder(self.name),
            data=context.data(config.data),
            max_seconds=context.max_seconds(entry, config.max_seconds, where),
            max_steps=entry.max_steps or config.max_steps,
        )
        from lipsync.train.landmark_config import validate_landmark_config

        validate_landmark_config(config)
        return config

    def train(self, config: Any, progress: bool) -> dict[str, Any]:
        from lipsync.train.landmark_trainer import PIXELS, train_landmarks

        result = train_landmarks(config, progress=progress)
        held = [{"step": step, "l1": l1, "l1_px": l1 * PIXELS} for step, l1 in result.validation_l1]
        return {
            "steps": result.steps,
            "samples_per_second": round(result.samples_per_second, 2),
            "held_out_l1_first": held[0] if held else None,
            "held_out_l1_last": held[-1] if held else None,
            "export": str(result.export_dir),
        }


class RendererStage(ExportStage):
    """`lipsync train renderer`, stage joint: M_a and M_r, exported with the transformer of the stage
    `transformer`; its output is that export, the folder that dubs."""

    def __init__(self, name: str, transformer: str, about: str) -> None:
        super().__init__(name, (transformer,), about)
        self.transformer = transformer

    def configure(self, entry: StageEntry, context: StageContext, where: str) -> RendererTrainConfig:
        assert entry.config is not None
        config = load_config(entry.config, RendererTrainConfig)
        if config.stage != "joint":
            raise ConfigError(
                f"{where}: {entry.config} trains stage {config.stage}",
                f"stage {self.name} needs stage joint (M_a and M_r together)",
            )
        config = replace(
            config,
            output_dir=context.folder(self.name),
            data=context.data(config.data),
            landmark_transformer=context.outputs[self.transformer],
            max_seconds=context.max_seconds(entry, config.max_seconds, where),
            max_steps=entry.max_steps or config.max_steps,
        )
        from lipsync.train.renderer_config import validate_renderer_config

        validate_renderer_config(config)
        return config

    def train(self, config: Any, progress: bool) -> dict[str, Any]:
        from lipsync.train.renderer_trainer import train_renderer

        result = train_renderer(config, progress=progress)
        held = [
            {"step": int(v["step"]), "l1": v["validation/l1"], "psnr": v["validation/psnr"]}
            for v in result.validation
        ]
        return {
            "steps": result.steps,
            "samples_per_second": round(result.samples_per_second, 2),
            "held_out_l1_first": held[0] if held else None,
            "held_out_l1_last": held[-1] if held else None,
            "export": str(result.export_dir),
        }


RowKind = Literal["model", "shuffled audio", "copied mouth", "real landmarks"]


@dataclass(frozen=True)
class Row:
    """A dubbed row of the report: what makes its video (`run._score` knows each kind) and what it means.
    model: the dub stage's weights with the tail's audio; shuffled audio: the same fed the audio shuffled;
    copied mouth: no model; real landmarks: a landmark-prior export drawn from the tail's own landmarks."""

    name: str
    kind: RowKind
    meaning: str


STABILIZED_ROWS = (
    Row("trained", "model", "the trained model dubs the tail with the tail's own audio"),
    Row(
        "shuffled audio",
        "shuffled audio",
        "the same model fed the tail's audio in shuffled pieces (scored with the real audio)",
    ),
    Row(
        "copied mouth",
        "copied mouth",
        "no model: each frame gets the lower face of a random, distant frame of the same tail",
    ),
)


@dataclass(frozen=True)
class Recipe:
    """A family's learning check: stages in order, the stage whose output dubs, the judge's stage, the rows
    of the dubbed tails (the real tail is always the last), and whether the landmark table is scored."""

    family: str
    stages: tuple[Stage, ...]
    dub_stage: str  # its output is a weights folder `lipsync dub --weights` loads
    judge_stage: str | None  # its output is a SyncNet checkpoint (`lipsync eval --syncnet`); None: no judge
    notes: tuple[str, ...] = ()  # what the report should say about the recipe
    rows: tuple[Row, ...] = STABILIZED_ROWS
    landmark_table: bool = False  # the dub weights' transformer against a mean mouth (`landmarks.py`)

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


STABILIZED_SYNC = Recipe(
    family="stabilized-sync",
    stages=(
        SyncNetStage("avsyncnet", ("avsyncnet",), "AVSyncNet sync expert (its audio encoder gives F_A)"),
        StabilizedStage("silent", "silent", "avsyncnet", None, "G_S, the silent-lip generator"),
        StabilizedStage(
            "talking",
            "talking",
            "avsyncnet",
            "silent",
            "G_L: L_ss with AVSyncNet, adaptive triplet, G_S refs",
        ),
        SyncNetStage("judge", ("wav2lip", "stable"), "the judge: a SyncNet used only for scoring"),
    ),
    dub_stage="talking",
    judge_stage="judge",
    notes=(
        "G_L dubs with its export (G_S closes the identity references' lips, as at inference).",
        "The judge is trained on the same heads as the generators and never used as a loss.",
    ),
)

LANDMARK_PRIOR = Recipe(
    family="landmark-prior",
    stages=(
        LandmarksStage("landmarks", "the audio-to-landmark transformer (L1 + velocity)"),
        RendererStage("renderer", "landmarks", "M_a + M_r, stage joint, on real landmark sketches"),
    ),
    dub_stage="renderer",
    judge_stage=None,
    rows=(
        Row(
            "predicted landmarks",
            "model",
            "the trained family dubs the tail with its own audio: the transformer's landmarks drive the "
            "renderer (a normal `dub`)",
        ),
        Row(
            "real landmarks",
            "real landmarks",
            "the same renderer driven by the tail's own tracked landmarks instead (the renderer alone)",
        ),
        STABILIZED_ROWS[1],
        STABILIZED_ROWS[2],
    ),
    landmark_table=True,
    notes=(
        "The renderer's export dubs, with the landmarks stage's transformer copied in.",
        "No judge SyncNet is trained for this family: the sync columns are left out.",
    ),
)

RECIPES: dict[str, Recipe] = {recipe.family: recipe for recipe in (STABILIZED_SYNC, LANDMARK_PRIOR)}


def recipe_for(family: str, source: str = "config") -> Recipe:
    if family not in RECIPES:
        raise ConfigError(
            f"{source}: family {family!r} has no learning-check recipe",
            f"use one of {', '.join(sorted(RECIPES))}",
        )
    return RECIPES[family]


def check_stage_entries(
    recipe: Recipe, entries: tuple[StageEntry, ...], source: str
) -> dict[str, StageEntry]:
    """The entry of every recipe stage; ConfigError naming an unknown, repeated or missing one."""
    found: dict[str, StageEntry] = {}
    known = [stage.name for stage in recipe.stages]
    for index, entry in enumerate(entries):
        if entry.name not in known:
            raise ConfigError(
                f"{source}: stages[{index}].name {entry.name!r} is not a stage of the {recipe.family} recipe",
                f"use the stage names {', '.join(known)}",
            )
        if entry.name in found:
            raise ConfigError(f"{source}: stages[{index}].name {entry.name!r} is given twice", "give it once")
        found[entry.name] = entry
    missing = [name for name in known if name not in found]
    if missing:
        raise ConfigError(
            f"{source}: stages lacks {', '.join(missing)}",
            f"give one entry (name, config, max_seconds) per stage: {', '.join(known)}",
        )
    return found
