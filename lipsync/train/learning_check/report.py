"""report.md and report.json: the stages with their wall times, then one or more tables of row x metric
(the dubbed tails; a family may add its own, e.g. landmark errors), mean over the tails and per clip.
Numbers are reported as measured: an untrained or briefly trained model's included."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync.io.files import atomic_path
from lipsync.train.learning_check.scoring import ClipScores, Score
from lipsync.train.learning_check.split import SplitClip
from lipsync.train.learning_check.stages import StageRecord

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    digits: int
    optional: bool = False  # shown only when some clip has a value


COLUMNS = (
    Column("lmd", "mouth LMD ↓", 4),
    Column("lip_sync_r", "lip-sync r ↑", 3),  # the dub's lip gap against the real tail's (lip_sync_meter)
    Column("judge_confidence", "judge sync conf. ↑", 3, optional=True),  # without a judge: no value
    Column("judge_offset", "judge offset →0", 1, optional=True),
    Column("psnr", "PSNR face ↑", 2),
    Column("ssim", "SSIM face ↑", 3),
    Column("lse_c", "LSE-C ↑", 3, optional=True),
    Column("lse_d", "LSE-D ↓", 3, optional=True),
)

REAL_MEANING = "the tail itself (the ceiling for sync; LMD 0, lip-sync r 1 and PSNR inf by definition)"


@dataclass(frozen=True)
class ScoreTable:
    """One table of the report: rows (in order, with what each means) x columns, per clip."""

    title: str  # the markdown section, e.g. "Held-out tails"
    rows: dict[str, str]  # row -> what it means
    per_clip: dict[str, ClipScores]  # clip -> row -> metric -> score
    columns: tuple[Column, ...] = COLUMNS
    extra: dict[str, Any] = field(default_factory=dict)  # more JSON (e.g. the baseline it used)


def mean_scores(
    per_clip: dict[str, ClipScores], rows: list[str] | None = None, columns: tuple[Column, ...] = COLUMNS
) -> dict[str, dict[str, Score]]:
    """Row -> metric -> mean over the clips that have a value (samples = how many clips)."""
    rows = rows if rows is not None else list(next(iter(per_clip.values()), {}))
    means: dict[str, dict[str, Score]] = {}
    for row in rows:
        means[row] = {}
        for column in columns:
            values = [s[row][column.key].value for s in per_clip.values()]
            present = [v for v in values if v is not None]
            if not present:
                means[row][column.key] = Score(None, 0, "no clip has a value")
                continue
            note = "" if len(present) == len(values) else f"mean of {len(present)} of {len(values)} clips"
            means[row][column.key] = Score(sum(present) / len(present), len(present), note)
    return means


def _shown_columns(table: ScoreTable) -> list[Column]:
    def any_value(key: str) -> bool:
        return any(s[row][key].value is not None for s in table.per_clip.values() for row in table.rows)

    return [c for c in table.columns if not c.optional or any_value(c.key)]


def _cell(score: Score, digits: int) -> str:
    if score.value is None:
        return "—"
    if not math.isfinite(score.value):
        return str(score.value)
    return f"{score.value:.{digits}f}" + ("*" if score.note else "")


def _table(rows: dict[str, dict[str, Score]], columns: list[Column], first: str = "row") -> list[str]:
    lines = [
        "| " + " | ".join([first, *(c.title for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, scores in rows.items():
        lines.append("| " + " | ".join([name, *(_cell(scores[c.key], c.digits) for c in columns)]) + " |")
    return lines


def _stage_lines(stages: list[StageRecord]) -> list[str]:
    lines = [
        "| stage | what | status | wall s | steps | result (trainers: their held-out clip) |",
        "|---|---|---|---|---|---|",
    ]
    for record in stages:
        summary = record.summary
        held = ""
        if summary.get("val_accuracy") is not None:
            held = (
                f"accuracy {summary['val_accuracy']:.3f}, BCE {summary.get('val_loss') or float('nan'):.3f}"
            )
        elif summary.get("held_out_l1_last"):
            first, last = summary["held_out_l1_first"], summary["held_out_l1_last"]
            held = f"L1 {first['l1']:.4f} (step {first['step']}) → {last['l1']:.4f} (step {last['step']})"
            if "psnr" in first and "psnr" in last:
                held += f", PSNR {first['psnr']:.2f} → {last['psnr']:.2f} dB"
        steps = summary.get("steps", "")
        if record.name in ("split", "prepare"):
            held = f"{summary.get('clips', '')} clips"
        lines.append(
            f"| {record.name} | {record.about} | {record.status} | {record.seconds:.0f} | {steps} | {held} |"
        )
    return lines


def render_markdown(
    family: str,
    command: str,
    clips: list[SplitClip],
    stages: list[StageRecord],
    tables: list[ScoreTable],
    notes: list[str],
    total_seconds: float,
) -> str:
    lines = [
        f"# Learning check: {family}",
        "",
        f"`{command}`",
        "",
        f"Wall time: {sum(r.seconds for r in stages):.0f} s over all stages (those done by earlier runs "
        f"included); this run {total_seconds:.0f} s.",
        "",
        "## Stages",
        "",
        *_stage_lines(stages),
        "",
    ]
    for table in tables:
        lines += [
            f"## {table.title}: mean over {len(table.per_clip)} clips",
            "",
            *_table(mean_scores(table.per_clip, list(table.rows), table.columns), _shown_columns(table)),
            "",
            "Rows:",
            "",
            *(f"- **{row}**: {meaning}" for row, meaning in table.rows.items()),
            "",
        ]
    lines += [
        "`*` a value with a note (a mean over fewer clips, or untrained metric weights): see report.json.",
        "",
        "## Per clip",
        "",
    ]
    for clip in clips:
        lines += [
            f"### {clip.name} ({clip.frames} frames at {float(_fps(clip.fps)):.2f} fps; tail = frames "
            f"{clip.cut}..{clip.frames - 1}, {clip.tail_frames} frames)",
            "",
        ]
        for table in tables:
            lines += [*_table(table.per_clip[clip.name], _shown_columns(table)), ""]
    lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


def _fps(text: str) -> float:
    from fractions import Fraction

    return float(Fraction(text))


def report_json(
    family: str,
    command: str,
    clips: list[SplitClip],
    stages: list[StageRecord],
    tables: list[ScoreTable],
    notes: list[str],
    total_seconds: float,
) -> dict[str, Any]:
    """The first table (the dubbed tails) at the top level (rows, metrics, mean, per_clip); the others
    under `tables`, by title."""

    def scores(rows: dict[str, dict[str, Score]]) -> dict[str, Any]:
        return {
            row: {key: score.to_json() for key, score in metrics.items()} for row, metrics in rows.items()
        }

    def table_json(table: ScoreTable) -> dict[str, Any]:
        return {
            "rows": table.rows,
            "metrics": {c.key: c.title for c in table.columns},
            "mean": scores(mean_scores(table.per_clip, list(table.rows), table.columns)),
            "per_clip": {name: scores(rows) for name, rows in table.per_clip.items()},
            **table.extra,
        }

    return {
        "family": family,
        "command": command,
        "this_run_seconds": round(total_seconds, 1),
        "all_stages_seconds": round(sum(record.seconds for record in stages), 1),
        "stages": [record.to_json() for record in stages],
        "clips": [clip.to_json() for clip in clips],
        **table_json(tables[0]),
        "tables": {table.title: table_json(table) for table in tables[1:]},
        "notes": notes,
    }


def write_reports(out: Path, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    with atomic_path(out / REPORT_MD) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(out / REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return out / REPORT_MD, out / REPORT_JSON
