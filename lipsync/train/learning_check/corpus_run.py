"""A learning check on a controlled-sync corpus, with pass lines.

OUT/
  corpus-split.json   the split (`corpus_split.py`)
  sources/            links to the corpus clips: train/ (training persons), person/ (the held-out person)
  dataset/            the training persons' clips, prepared (`lipsync data prepare`); the held-out clips
                      are the trainers' own validation clips, never trained on
  dataset-person/     the held-out person's clips, prepared (never seen by a trainer)
  stages/NAME/        each stage's trainer output (`stages.py`: a rerun skips a finished stage)
  report.md, report.json

Each stage is scored on two splits: `held_out` (the training persons' held-out clips) and `person` (every
clip of the held-out person). A SyncNet (`syncnet`, `avsyncnet`): accuracy (threshold 0.5) and ROC AUC on a
fixed, balanced set of pairs, half in sync and half shifted at least negative_min_offset frames, with the
trainer's own evaluation code. The landmark transformer (`landmarks`): per clip, Pearson r at lag 0
between the lip gap of its predicted landmarks (`lip_sync_meter.lip_gap`, in the family's crop frame)
and the corpus's ground-truth opening (clip_NNNN.opening.npy), and the same with the clip's audio
shuffled in pieces; the mean over the clips (`r_real`: the prepared landmarks' own lip gap, no model, a
check of the alignment). Pass lines (the recipe's `pass_lines`) are judged on these.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.io.files import atomic_path
from lipsync.train.config import ConfigError
from lipsync.train.learning_check.config import StageEntry
from lipsync.train.learning_check.corpus_config import (
    CORPUS_STAGES,
    CorpusCheckConfig,
    CorpusScoring,
    PassLine,
    load_corpus_config,
)
from lipsync.train.learning_check.corpus_dubs import dub_split_scores, nan_mean
from lipsync.train.learning_check.corpus_split import (
    OPENING_SUFFIX,
    PERSON_SOURCES,
    SOURCES_DIR,
    TRAIN_SOURCES,
    CorpusSplit,
    clip_name,
    split_corpus,
    write_split,
)
from lipsync.train.learning_check.recipes import LandmarksStage, SyncNetStage
from lipsync.train.learning_check.stages import (
    STAGES_DIR,
    Stage,
    StageContext,
    StageRecord,
    run_stage,
)

DATASET_DIR, PERSON_DATASET_DIR = "dataset", "dataset-person"
DUBS_DIR = "dubs"  # OUT/dubs/STAGE/SPLIT/PERSON-CLIP: a generator's scored dubs
SPLIT, PREPARE = "split", "prepare"
REPORT_MD, REPORT_JSON = "report.md", "report.json"
LINE_MISSED_EXIT = 3  # trained and scored, but a pass line was missed
SPLIT_TITLES = {"held_out": "held-out clips", "person": "held-out person"}
LANDMARK_BATCH = 64  # frames per transformer pass when scoring

Say = Callable[[str], None]
Scores = dict[str, dict[str, dict[str, float]]]  # stage -> split -> metric -> value


@dataclass(frozen=True)
class LineResult:
    line: PassLine
    value: float | None

    @property
    def passed(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        if self.line.at_least is not None:
            return self.value >= self.line.at_least
        assert self.line.at_most is not None
        return self.value <= self.line.at_most

    @property
    def wanted(self) -> str:
        if self.line.at_least is not None:
            return f">= {self.line.at_least:g}"
        return f"<= {self.line.at_most:g}"

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.line.stage,
            "split": self.line.split,
            "metric": self.line.metric,
            "wanted": self.wanted,
            "value": self.value,
            "passed": self.passed,
        }


def judge_lines(lines: Sequence[PassLine], scores: Scores) -> list[LineResult]:
    """Each pass line against the scores (a missing or NaN value fails its line)."""
    return [
        LineResult(line, scores.get(line.stage, {}).get(line.split, {}).get(line.metric)) for line in lines
    ]


@dataclass(frozen=True)
class CorpusCheckResult:
    stages: list[StageRecord]
    scores: Scores
    lines: list[LineResult]
    markdown: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    report_md: Path | None = None
    report_json: Path | None = None

    @property
    def passed(self) -> bool:
        return all(line.passed for line in self.lines)


def _print(message: str) -> None:
    print(f"[learning-check] {message}", file=sys.stderr, flush=True)


def run_corpus_check(
    config_path: Path,
    out: Path,
    corpus: Path | None = None,
    held_out_person: str | None = None,
    force_stages: Sequence[str] = (),
    budget_scale: float = 1.0,
    progress: bool = True,
    say: Say = _print,
    command: str = "",
    score: bool = True,
) -> CorpusCheckResult:
    """Run (or resume) the corpus recipe `config_path` into `out`; see the module doc."""
    started = time.monotonic()
    source = str(config_path)
    config = load_corpus_config(Path(config_path), corpus, held_out_person)
    if not budget_scale > 0:
        raise ConfigError(
            f"--budget-scale is {budget_scale}", "give a positive factor (1 = the recipe's boxes)"
        )
    stages = [CORPUS_STAGES[entry.name]() for entry in config.stages]
    entries = {entry.name: entry for entry in config.stages}
    known = [SPLIT, PREPARE, *entries]
    unknown = [name for name in force_stages if name not in known]
    if unknown:
        raise ConfigError(
            f"--force-stage {', '.join(unknown)} is not a stage", f"use one of {', '.join(known)}"
        )
    out = Path(out)
    _configure(stages, entries, StageContext(out / DATASET_DIR, (), out / STAGES_DIR, budget_scale), source)

    redo = set(force_stages)
    if SPLIT in redo or PREPARE in redo:
        redo.update([PREPARE, *entries])
    records: list[StageRecord] = []
    split = _split(config, out, SPLIT in redo, say, records, source)
    val_clips = _prepare(config, out, split, PREPARE in redo, progress, say, records)
    context = StageContext(out / DATASET_DIR, val_clips, out / STAGES_DIR, budget_scale)
    configs = _configure(stages, entries, context, source)
    for stage in stages:
        records.append(
            run_stage(
                stage, configs[stage.name], context.folder(stage.name), stage.name in redo, progress, say
            )
        )

    if not score:
        say(f"training done in {time.monotonic() - started:.0f} s; not scored (run again without --no-score)")
        return CorpusCheckResult(records, {}, [])

    scoring_started = time.monotonic()
    scores: Scores = {}
    for stage in stages:
        say(f"scoring: {stage.name}")
        scores[stage.name] = score_stage(stage, configs[stage.name], context, out, split, config.scoring, say)
    records.append(
        StageRecord(
            "scoring", "ran", round(time.monotonic() - scoring_started, 2), {}, "score the held-out clips"
        )
    )
    lines = judge_lines(config.pass_lines, scores)
    total = time.monotonic() - started
    command = command or f"lipsync learning-check {config_path} --out {out}"
    data = {
        "command": command,
        "corpus": split.to_json(),
        "val_clips": list(val_clips),
        "stages": [record.to_json() for record in records],
        "scores": scores,
        "pass_lines": [line.to_json() for line in lines],
        "passed": all(line.passed for line in lines),
        "total_seconds": round(total, 1),
    }
    markdown = render_corpus_markdown(command, split, records, scores, lines, total)
    md_path, json_path = out / REPORT_MD, out / REPORT_JSON
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return CorpusCheckResult(records, scores, lines, markdown, data, md_path, json_path)


def _configure(
    stages: list[Stage], entries: dict[str, StageEntry], context: StageContext, source: str
) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for stage in stages:
        context.outputs[stage.name] = stage.output(context.folder(stage.name))
        configs[stage.name] = stage.configure(entries[stage.name], context, f"{source}: stage {stage.name}")
    return configs


def _split(
    config: CorpusCheckConfig, out: Path, redo: bool, say: Say, records: list[StageRecord], source: str
) -> CorpusSplit:
    started = time.monotonic()
    if redo:
        for folder in (SOURCES_DIR, DATASET_DIR, PERSON_DATASET_DIR):
            if (out / folder).exists():
                shutil.rmtree(out / folder)
        (out / "corpus-split.json").unlink(missing_ok=True)
    split = split_corpus(config.corpus, source)
    write_split(split, out)
    say(
        f"split: {len(split.train)} training clips, {len(split.held_out)} held out, person "
        f"{split.held_out_person} held out entirely ({len(split.person)} clips)"
    )
    summary = {
        "train": len(split.train),
        "held_out": len(split.held_out),
        "person": split.held_out_person,
        "person_clips": len(split.person),
    }
    records.append(StageRecord(SPLIT, "ran", round(time.monotonic() - started, 2), summary, split.rule))
    return split


def _prepare(
    config: CorpusCheckConfig,
    out: Path,
    split: CorpusSplit,
    redo: bool,
    progress: bool,
    say: Say,
    records: list[StageRecord],
) -> tuple[str, ...]:
    """Prepare both sides (resuming); the prepared ids of the held-out clips."""
    from lipsync.train.data.format import DatasetSettings, list_clips
    from lipsync.train.data.prepare import prepare_dataset
    from lipsync.train.unet_data import read_meta

    started = time.monotonic()
    settings = DatasetSettings(
        clip_seconds=config.prepare.clip_seconds,
        min_clip_seconds=config.prepare.min_clip_seconds,
        min_face_size=config.prepare.min_face_size,
    )
    summary: dict[str, Any] = {}
    ran = False
    for folder, dataset in ((TRAIN_SOURCES, DATASET_DIR), (PERSON_SOURCES, PERSON_DATASET_DIR)):
        if redo and (out / dataset).exists():
            shutil.rmtree(out / dataset)
        say(f"prepare: {folder} clips -> {dataset} (`lipsync data prepare`; resumes)")
        report = prepare_dataset(
            out / SOURCES_DIR / folder,
            out / dataset,
            settings,
            jobs=config.prepare.jobs,
            progress=progress,
            speaker_from="folder",
        )
        for line in report.format().splitlines():
            say(f"  {line}")
        if report.clips == 0:
            raise ConfigError(f"no clip of {folder} was prepared", "see the rejections above")
        ran = ran or report.sources_done > 0
        summary[dataset] = {
            "clips": report.clips,
            "frames": report.frames,
            "rejections": len(report.rejections),
        }
    held = set(split.held_out)
    val = tuple(
        sorted(
            read_meta(folder).clip_id
            for folder in list_clips(out / DATASET_DIR)
            if clip_name(read_meta(folder).source) in held
        )
    )
    if not val:
        raise ConfigError("no held-out clip was prepared", "see the rejections above; hold out more clips")
    about = "both sides of the split as datasets (`lipsync data prepare`)"
    status = "ran" if ran else "up to date"
    records.append(StageRecord(PREPARE, status, round(time.monotonic() - started, 2), summary, about))
    return val


def split_folders(context: StageContext, out: Path, max_clips: int | None = None) -> dict[str, list[Path]]:
    """The prepared clip folders of each scored split (the first `max_clips` by name, if given)."""
    from lipsync.train.data.format import list_clips

    val = set(context.val_clips)
    folders = {
        "held_out": sorted(f for f in list_clips(context.dataset) if f.name in val),
        "person": sorted(list_clips(out / PERSON_DATASET_DIR)),
    }
    return {name: clips[:max_clips] for name, clips in folders.items()}


def spread(clips: list[Path], count: int) -> list[Path]:
    """`count` of `clips` spread evenly over the list (sorted by person, so every person has a share)."""
    if len(clips) <= count:
        return clips
    return [clips[index * len(clips) // count] for index in range(count)]


def score_stage(
    stage: Stage,
    config: Any,
    context: StageContext,
    out: Path,
    split: CorpusSplit,
    scoring: CorpusScoring,
    say: Say = _print,
) -> dict[str, dict[str, float]]:
    folders = split_folders(context, out, scoring.max_clips)
    if isinstance(stage, SyncNetStage):
        return {
            name: syncnet_scores(config, context.outputs[stage.name], f, scoring)
            for name, f in folders.items()
        }
    if isinstance(stage, LandmarksStage):
        return landmark_split_scores(context.outputs[stage.name], folders, Path(split.corpus), scoring)
    dubbed = {name: spread(clips, scoring.dub_clips) for name, clips in folders.items()}
    work = out / DUBS_DIR / stage.name
    return dub_split_scores(context.outputs[stage.name], dubbed, Path(split.corpus), scoring, work, say)


def syncnet_scores(
    config: Any, checkpoint: Path, folders: list[Path], scoring: CorpusScoring
) -> dict[str, float]:
    """Accuracy, AUC and BCE of the trained SyncNet on a fixed balanced set of pairs of `folders`."""
    import torch

    from lipsync.models.syncnet import load_syncnet
    from lipsync.train.stabilized_avsync import avsync_faces, load_avsyncnet
    from lipsync.train.syncnet_data import SyncPairSource, eval_pairs
    from lipsync.train.syncnet_trainer import evaluate

    model: torch.nn.Module
    if config.kind == "avsyncnet":
        model, av_spec = load_avsyncnet(checkpoint)
        source = SyncPairSource(folders, av_spec, config.negative_min_offset, faces=avsync_faces(av_spec))
    else:
        model, spec = load_syncnet(checkpoint, kind=config.kind)
        source = SyncPairSource(folders, spec, config.negative_min_offset)
    pairs = eval_pairs(source, scoring.eval_pairs)
    if not pairs:
        return {"accuracy": math.nan, "auc": math.nan, "loss": math.nan, "pairs": 0, "clips": len(folders)}
    result = evaluate(model, source, pairs, config.batch_size, torch.device("cpu"))
    return {
        "accuracy": result.accuracy,
        "auc": result.auc,
        "loss": result.loss,
        "pairs": result.pairs,
        "clips": len(source.clips),
    }


def landmark_split_scores(
    export: Path, folders: dict[str, list[Path]], corpus: Path, scoring: CorpusScoring
) -> dict[str, dict[str, float]]:
    import torch

    from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator

    generator = LandmarkPriorGenerator.from_pretrained(export, torch.device("cpu"), torch.float32)
    scores = {}
    for name, clips in folders.items():
        readings = np.array([clip_lip_gap_r(generator, folder, corpus, scoring) for folder in clips])
        readings = readings.reshape(-1, 3)
        r, shuffled, real = readings[:, 0], readings[:, 1], readings[:, 2]
        scores[name] = {
            "r": nan_mean(r),
            "abs_r": abs(nan_mean(r)),
            "r_shuffled": nan_mean(shuffled),
            "abs_r_shuffled": abs(nan_mean(shuffled)),
            "r_min": float(np.nanmin(r)) if np.isfinite(r).any() else math.nan,
            "r_max": float(np.nanmax(r)) if np.isfinite(r).any() else math.nan,
            "r_real": nan_mean(real),
            "clips": int(np.isfinite(r).sum()),
        }
    return scores


def clip_lip_gap_r(
    generator: Any, folder: Path, corpus: Path, scoring: CorpusScoring
) -> tuple[float, float, float]:
    """r at lag 0 against the clip's opening: of the predicted lip gap with the clip's audio, with it
    shuffled, and of the prepared (tracked) landmarks' own lip gap (the alignment check, no model)."""
    from lipsync.config import AUDIO_SAMPLE_RATE, TRAINING_FPS
    from lipsync.eval.lip_sync_meter import lip_gap, load_opening, pearson
    from lipsync.models.landmark_prior.mel_windows import SequenceMelWindows
    from lipsync.train.data.format import read_clip
    from lipsync.train.landmark_prior_clips import read_family_clip
    from lipsync.train.learning_check.controls import shuffled_audio

    family = read_family_clip(folder)
    meta = family.meta
    opening = load_opening(corpus / f"{clip_name(meta.source)}{OPENING_SUFFIX}")
    target = np.full(meta.frame_count, np.nan)
    part = opening[meta.start_frame : meta.start_frame + meta.frame_count]
    target[: len(part)] = part
    audio = np.asarray(read_clip(folder, with_whisper=False).audio, np.float32)
    piece = max(1, round(scoring.shuffle_piece_seconds * AUDIO_SAMPLE_RATE))
    shuffled = SequenceMelWindows.offline(shuffled_audio(audio, piece, scoring.seed), Fraction(TRAINING_FPS))
    results = []
    for mels in (family.mels, shuffled):
        points = predicted_landmarks(generator, np.asarray(family.landmarks), mels)
        results.append(pearson(lip_gap(points.transpose(0, 2, 1)), target)[0])
    real = pearson(lip_gap(np.asarray(family.landmarks).transpose(0, 2, 1)), target)[0]
    return results[0], results[1], real


def predicted_landmarks(generator: Any, landmarks: np.ndarray, mels: Any) -> np.ndarray:
    """(N, 2, 68): `landmarks` (crop-normalised, NaN without a face) with the lower jaw and lips the
    transformer predicts from `mels`, as the generator feeds it (the frames' mel windows, the pose of
    s - 2 .. s + 2, the inference rule's references). One pass predicts the five frames s - 2 .. s + 2 (the
    sequence it is trained on), so every fifth frame is a centre; NaN where no frame was predicted."""
    import torch

    from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS, POSE_POINTS, REFERENCE_ORDER
    from lipsync.models.landmark_prior.references import neighbour_frames, spread_frames
    from lipsync.models.landmark_prior.sketch import CONTEXT_FRAMES, STACK_FRAMES

    transformer, references = generator.models.transformer, generator.config.landmark_references
    count = len(landmarks)
    has_face = ~np.isnan(landmarks[:, 0, 0])
    out = np.full(landmarks.shape, np.nan)
    if not has_face.any():
        return out
    out[has_face] = landmarks[has_face]
    chosen = spread_frames(has_face, np.nan_to_num(landmarks.transpose(0, 2, 1)), references)
    ends = range(CONTEXT_FRAMES, count + CONTEXT_FRAMES, STACK_FRAMES)
    centres = [c for c in sorted({min(c, count - 1) for c in ends}) if has_face[c]]
    parameter = next(transformer.parameters())

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(parameter.device, parameter.dtype)

    sets = tensor(landmarks[chosen][..., REFERENCE_ORDER])
    done = np.zeros(count, bool)
    with torch.no_grad():
        for start in range(0, len(centres), LANDMARK_BATCH):
            chunk = centres[start : start + LANDMARK_BATCH]
            poses = np.stack([landmarks[neighbour_frames(c, has_face)] for c in chunk])[..., POSE_POINTS]
            content = transformer(
                tensor(mels.windows(chunk)), tensor(poses), sets.expand(len(chunk), *sets.shape)
            )
            content = content.float().cpu().numpy()  # (n, 5, 2, 31): frames c - 2 .. c + 2
            for row, centre in enumerate(chunk):
                for step in range(STACK_FRAMES):
                    frame = centre - CONTEXT_FRAMES + step
                    if 0 <= frame < count and has_face[frame] and not done[frame]:
                        out[frame][:, CONTENT_POINTS] = content[row, step]
                        done[frame] = True
    out[has_face & ~done] = np.nan
    return out


def _format(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def render_corpus_markdown(
    command: str,
    split: CorpusSplit,
    records: list[StageRecord],
    scores: Scores,
    lines: list[LineResult],
    total: float,
) -> str:
    verdict = "PASS" if all(line.passed for line in lines) else "FAIL"
    out = [
        "# Learning check on a controlled-sync corpus",
        "",
        f"`{command}`",
        "",
        f"Corpus {split.corpus}: persons {', '.join(split.persons)}. {len(split.train)} training clips; "
        f"{len(split.held_out)} held out ({split.rule}); person {split.held_out_person} held out entirely "
        f"({len(split.person)} clips).",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | steps | what |",
        "|---|---|---:|---:|---|",
    ]
    for record in records:
        steps = record.summary.get("steps", "")
        out.append(f"| {record.name} | {record.status} | {record.seconds:.0f} | {steps} | {record.about} |")
    out += ["", "## Scores", "", "| stage | split | metric | value |", "|---|---|---|---:|"]
    for stage, splits in scores.items():
        for name, metrics in splits.items():
            for metric, value in metrics.items():
                shown = str(int(value)) if metric in ("pairs", "clips") else _format(value)
                out.append(f"| {stage} | {SPLIT_TITLES[name]} | {metric} | {shown} |")
    out += ["", f"## Pass lines: {verdict}", ""]
    if lines:
        out += ["| stage | split | metric | line | value | verdict |", "|---|---|---|---|---:|---|"]
        for line in lines:
            where = f"| {line.line.stage} | {SPLIT_TITLES[line.line.split]} | {line.line.metric} |"
            verdict_text = "PASS" if line.passed else "FAIL"
            out.append(f"{where} {line.wanted} | {_format(line.value)} | {verdict_text} |")
    else:
        out.append("No pass lines in this recipe.")
    out += [
        "",
        "The held-out person's figures are reported without a line unless the recipe gives one.",
        f"Total {total:.0f} s.",
        "",
    ]
    return "\n".join(out)
