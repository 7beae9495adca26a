"""One learning check, top to bottom: split, prepare, the recipe's stages, scoring, report.

OUT/
  split/      heads/ (the training videos), tails/, audio/ (16 kHz WAVs), split.json
  dataset/    the heads prepared by `lipsync data prepare`
  stages/N/   each stage's trainer output, and learning-check.json once it finished
  eval/CLIP/  the dubbed tails, the shuffled audio, one `lipsync eval` report per row
  report.md, report.json
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipsync.train.config import ConfigError
from lipsync.train.learning_check.config import (
    EvaluationSettings,
    LearningCheckConfig,
    StageEntry,
    load_learning_check_config,
)
from lipsync.train.learning_check.recipes import Recipe, check_stage_entries, recipe_for
from lipsync.train.learning_check.report import (
    REAL_MEANING,
    ScoreTable,
    render_markdown,
    report_json,
    write_reports,
)
from lipsync.train.learning_check.scoring import REAL, DubbedRow, score_clip
from lipsync.train.learning_check.split import SplitClip, cut_frame, read_split, split_clips
from lipsync.train.learning_check.stages import (
    STAGES_DIR,
    StageContext,
    StageRecord,
    dependents,
    run_stage,
)

if TYPE_CHECKING:
    from lipsync.models.generator import Generator
    from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator

SPLIT_DIR = "split"
DATASET_DIR = "dataset"
SPLIT, PREPARE = "split", "prepare"  # the two steps before the recipe's stages (also --force-stage names)


@dataclass(frozen=True)
class LearningCheckResult:
    stages: list[StageRecord]  # split, prepare, the recipe's stages (and scoring, when scored)
    report_md: Path | None = None  # None with score=False
    report_json: Path | None = None
    markdown: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _print(message: str) -> None:
    print(f"[learning-check] {message}", file=sys.stderr, flush=True)


def run_learning_check(
    config_path: Path,
    out: Path,
    force_stages: Sequence[str] = (),
    budget_scale: float = 1.0,
    progress: bool = True,
    say: Callable[[str], None] = _print,
    command: str = "",
    score: bool = True,
) -> LearningCheckResult:
    """Run (or resume) the check `config_path` describes into `out`; see the module doc. With
    score=False it stops after the training stages (a later run scores)."""
    started = time.monotonic()
    source = str(config_path)
    config = load_learning_check_config(Path(config_path))
    recipe = recipe_for(config.family, source)
    entries = check_stage_entries(recipe, config.stages, source)
    if not budget_scale > 0:
        raise ConfigError(
            f"--budget-scale is {budget_scale}", "give a positive factor (1 = the config's boxes)"
        )
    known = [SPLIT, PREPARE, *(stage.name for stage in recipe.stages)]
    unknown = [name for name in force_stages if name not in known]
    if unknown:
        raise ConfigError(
            f"--force-stage {', '.join(unknown)} is not a stage", f"use one of {', '.join(known)}"
        )
    out = Path(out)
    context = StageContext(out / DATASET_DIR, (), out / STAGES_DIR, budget_scale)
    _configure(recipe, entries, context, source)  # every stage config checked before anything runs

    redo = set(force_stages)
    if SPLIT in redo:
        redo.add(PREPARE)
    if PREPARE in redo:
        redo.update(stage.name for stage in recipe.stages)
    redo.update(dependents(recipe.stages, redo))

    records: list[StageRecord] = []
    clips = _split(config, out / SPLIT_DIR, SPLIT in redo, say, records, source)
    val_clips = _prepare(config, out, clips, PREPARE in redo, progress, say, records)
    context = StageContext(out / DATASET_DIR, val_clips, out / STAGES_DIR, budget_scale)
    configs = _configure(recipe, entries, context, source)
    for stage in recipe.stages:
        folder = context.folder(stage.name)
        records.append(run_stage(stage, configs[stage.name], folder, stage.name in redo, progress, say))
    if not score:
        say(f"training done in {time.monotonic() - started:.0f} s; not scored (run again without --no-score)")
        return LearningCheckResult(records)

    scoring_started = time.monotonic()
    tables, notes = _score(recipe, config, context, clips, out, say)
    records.append(
        StageRecord(
            "scoring", "ran", round(time.monotonic() - scoring_started, 2), {}, "dub and score the tails"
        )
    )
    notes = [
        f"Heads (training) are frames 0..k-1 of each clip, tails (held out) frames k..N-1, "
        f"k = floor({config.head_fraction} x N + 1/2) (round half up).",
        "Trainers' own held-out clip(s), removed from their training data: "
        + (", ".join(val_clips) if val_clips else "none (the generators validate on a training clip)"),
        *recipe.notes,
        *notes,
    ]
    total = time.monotonic() - started
    command = command or f"lipsync learning-check {config_path} --out {out}"
    markdown = render_markdown(config.family, command, clips, records, tables, notes, total)
    data = report_json(config.family, command, clips, records, tables, notes, total)
    md_path, json_path = write_reports(out, markdown, data)
    return LearningCheckResult(records, md_path, json_path, markdown, data)


def _configure(
    recipe: Recipe, entries: dict[str, StageEntry], context: StageContext, source: str
) -> dict[str, Any]:
    """Every stage's trainer config, its paths inside the run; the planned outputs go into `context`."""
    configs: dict[str, Any] = {}
    for stage in recipe.stages:
        context.outputs[stage.name] = stage.output(context.folder(stage.name))
        configs[stage.name] = stage.configure(entries[stage.name], context, f"{source}: stage {stage.name}")
    return configs


def _split(
    config: LearningCheckConfig,
    folder: Path,
    redo: bool,
    say: Callable[[str], None],
    records: list[StageRecord],
    source: str,
) -> list[SplitClip]:
    about = f"cut each clip at {config.head_fraction:g} of its frames"
    done = None if redo else read_split(folder)
    if done is not None:
        clips, seconds = done
        wanted = [
            (str(path), cut_frame(clip.frames, config.head_fraction))
            for path, clip in zip(config.clips, clips, strict=False)
        ]
        if len(clips) != len(config.clips) or [(c.source, c.cut) for c in clips] != wanted:
            raise ConfigError(
                f"{folder} holds a split of other clips or another head_fraction than {source} asks for",
                "give a new --out, or --force-stage split to redo everything",
            )
        say(f"split: done earlier ({len(clips)} clips), skipped")
        records.append(StageRecord(SPLIT, "skipped (done earlier)", seconds, {"clips": len(clips)}, about))
        return clips
    if folder.exists():
        shutil.rmtree(folder)
    say(f"split: {about}")
    started = time.monotonic()
    clips = split_clips(list(config.clips), folder, config.head_fraction)
    for clip in clips:
        say(f"  {clip.name}: {clip.frames} frames -> head {clip.head_frames} + tail {clip.tail_frames}")
    seconds = round(time.monotonic() - started, 2)
    records.append(StageRecord(SPLIT, "ran", seconds, {"clips": len(clips)}, about))
    return clips


def _prepare(
    config: LearningCheckConfig,
    out: Path,
    clips: list[SplitClip],
    redo: bool,
    progress: bool,
    say: Callable[[str], None],
    records: list[StageRecord],
) -> tuple[str, ...]:
    from lipsync.train.data.format import DatasetSettings
    from lipsync.train.data.prepare import prepare_dataset

    started = time.monotonic()
    dataset = out / DATASET_DIR
    if redo and dataset.exists():
        shutil.rmtree(dataset)
    say("prepare: the heads as a training dataset (`lipsync data prepare`; resumes)")
    settings = DatasetSettings(
        clip_seconds=config.prepare.clip_seconds,
        min_clip_seconds=config.prepare.min_clip_seconds,
        min_face_size=config.prepare.min_face_size,
    )
    heads = Path(clips[0].head).parent
    report = prepare_dataset(heads, dataset, settings, jobs=config.prepare.jobs, progress=progress)
    for line in report.format().splitlines():
        say(f"  {line}")
    if report.clips == 0:
        raise ConfigError("no training clip was prepared from the heads", "see the rejections above")
    status = "ran" if report.sources_done else "up to date"
    summary = {"clips": report.clips, "frames": report.frames, "rejections": len(report.rejections)}
    about = "the heads as a dataset (`lipsync data prepare`)"
    records.append(StageRecord(PREPARE, status, round(time.monotonic() - started, 2), summary, about))
    return trainer_validation_clips(dataset, config.validation_clips)


def trainer_validation_clips(dataset: Path, count: int) -> tuple[str, ...]:
    """The last clip of each of the `count` speakers with the most clips (at least two, so every speaker
    keeps training data; ties by name): what the trainers hold out for their own validation."""
    from lipsync.train.data.format import list_clips
    from lipsync.train.unet_data import read_meta

    by_speaker: dict[str, list[str]] = {}
    for folder in list_clips(dataset):
        meta = read_meta(folder)
        by_speaker.setdefault(meta.speaker, []).append(meta.clip_id)
    candidates = sorted(
        (s for s, ids in by_speaker.items() if len(ids) >= 2), key=lambda s: (-len(by_speaker[s]), s)
    )
    return tuple(sorted(by_speaker[speaker])[-1] for speaker in candidates[:count])


def _score(
    recipe: Recipe,
    config: LearningCheckConfig,
    context: StageContext,
    clips: list[SplitClip],
    out: Path,
    say: Callable[[str], None],
) -> tuple[list[ScoreTable], list[str]]:
    from lipsync.config import DubSettings, RuntimeSettings
    from lipsync.pipeline.dub import DubPipeline
    from lipsync.train.learning_check.controls import CopiedMouthGenerator, RealLandmarkGenerator

    evaluation = config.evaluation
    weights = context.outputs[recipe.dub_stage]
    judge = context.outputs[recipe.judge_stage] if recipe.judge_stage else None
    say(f"scoring: dubbing the tails with {weights}" + (f", judged by {judge}" if judge else ""))
    settings = DubSettings(
        silence="generate",
        runtime=RuntimeSettings(device=evaluation.device, dtype="fp32", batch_size=evaluation.batch_size),
    )
    trained = DubPipeline.from_pretrained(weights, settings=settings)
    copied = CopiedMouthGenerator(trained.generator, evaluation.seed, evaluation.copy_min_distance)
    pipelines = {"model": trained, "shuffled audio": trained, "copied mouth": DubPipeline(copied, settings)}
    if any(row.kind == "real landmarks" for row in recipe.rows) or recipe.landmark_table:
        family = _landmark_prior(trained.generator, weights)
        pipelines["real landmarks"] = DubPipeline(RealLandmarkGenerator(family), settings)

    def dubber(pipeline: DubPipeline) -> Callable[[Path, Path, Path, int], None]:
        def dub(video: Path, audio: Path, output: Path, frames: int) -> None:
            pipeline(video, audio, output, progress=False, max_frames=frames)

        return dub

    rows = [
        DubbedRow(row.name, dubber(pipelines[row.kind]), row.kind == "shuffled audio") for row in recipe.rows
    ]
    sync = (
        "judge = the judge SyncNet's mean clamp(cos, 0, 1) and best offset; "
        if judge
        else "no judge SyncNet (no sync columns); "
    )
    notes = [
        "Dubs: silence generate (every tail frame gets a new mouth), fp32, the tail itself as the source.",
        f"Shuffled audio: {evaluation.shuffle_piece_seconds:g} s pieces, seed {evaluation.seed}; copied "
        f"mouth: donor frames >= {evaluation.copy_min_distance} frames away, seed {evaluation.seed}.",
        "Metrics are `lipsync eval`'s, each video against the real tail with the tail's own audio "
        f"(docs/evaluation.md): LMD = mouth points 48-67 over the inter-ocular distance; {sync}"
        "PSNR/SSIM on the 256 px face crop.",
    ]
    if trained.generator.untrained:
        notes.append("WARNING: the dubbing weights are marked UNTRAINED.")

    dubbed = {clip.name: score_clip(clip, rows, judge, evaluation, out, say) for clip in clips}
    meanings = {row.name: row.meaning for row in recipe.rows} | {REAL: REAL_MEANING}
    tables = [ScoreTable("Held-out tails", meanings, dubbed)]
    if recipe.landmark_table:
        landmark_prior = _landmark_prior(trained.generator, weights)
        tables.append(_landmark_table(landmark_prior, context, clips, evaluation, out, say))
        notes.append(
            "Landmark L1: the mean absolute coordinate error of the 31 lower-jaw and lip points over every "
            "tail frame with a face, crop-normalised (x 128 for px); the mean mouth is the mean over every "
            "frame of the prepared heads (OUT/eval/mean-mouth.json), never a tail frame."
        )
    return tables, notes


def _landmark_prior(generator: Generator, weights: Path) -> LandmarkPriorGenerator:
    from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator

    if not isinstance(generator, LandmarkPriorGenerator):
        raise ConfigError(
            f"{weights} holds a {generator.family} model, not landmark-prior",
            "the real-landmark row and the landmark table need the landmark-prior family",
        )
    return generator


def _landmark_table(
    generator: LandmarkPriorGenerator,
    context: StageContext,
    clips: list[SplitClip],
    evaluation: EvaluationSettings,
    out: Path,
    say: Callable[[str], None],
) -> ScoreTable:
    from lipsync.train.learning_check.landmarks import (
        COLUMNS,
        MEAN_MOUTH_FILE,
        ROWS,
        head_mean_mouth,
        landmark_scores,
        write_mean_mouth,
    )
    from lipsync.train.learning_check.scoring import EVAL_DIR

    mean, frames = head_mean_mouth(context.dataset)
    path = write_mean_mouth(out / EVAL_DIR / MEAN_MOUTH_FILE, mean, frames)
    per_clip = {}
    for clip in clips:
        say(f"  {clip.name}: landmark errors")
        per_clip[clip.name] = landmark_scores(
            generator,
            Path(clip.tail),
            clip.tail_frames,
            mean,
            evaluation.shuffle_piece_samples,
            evaluation.seed,
        )
    extra = {"mean_mouth": str(path), "mean_mouth_frames": sum(frames.values())}
    return ScoreTable("Held-out tails: lower-jaw and lip landmarks", ROWS, per_clip, COLUMNS, extra)
