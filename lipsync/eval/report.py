"""The evaluation report: every figure with its definition, written as report.json; and `--compare`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lipsync.errors import InputError
from lipsync.eval.definitions import BETTER_ARROWS, BETTER_WORDS, Better, MetricSpec
from lipsync.timing import stage_table

REPORT_FORMAT = 1
REPORT_FILE = "report.json"
HTML_FILE = "report.html"

Status = Literal["ok", "skipped"]


@dataclass(frozen=True)
class Metric:
    """One figure, or the reason it was not computed (then `value` is None: never a made-up number)."""

    key: str  # stable identifier, e.g. "lse_d"
    name: str  # as papers print it, e.g. "LSE-D"
    definition: str
    better: Better
    status: Status
    value: float | None = None
    unit: str = ""
    samples: int = 0  # frames, windows or frame pairs behind the figure
    untrained_weights: bool = False  # computed with randomly initialised (scaffold) weights
    skipped_reason: str = ""
    needs: str = ""  # the file or input that would let it run
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The value as a table cell."""
        if self.status != "ok" or self.value is None:
            return "skipped"
        text = f"{self.value:.4g}" if math.isfinite(self.value) else str(self.value)
        return text + (" (untrained)" if self.untrained_weights else "")


def computed(
    spec: MetricSpec, value: float, samples: int, untrained_weights: bool = False, **extra: float | int | str
) -> Metric:
    return Metric(
        spec.key,
        spec.name,
        spec.definition,
        spec.better,
        "ok",
        float(value),
        spec.unit,
        samples,
        untrained_weights,
        extra=extra,
    )


def skipped(spec: MetricSpec, reason: str, needs: str = "") -> Metric:
    return Metric(
        spec.key,
        spec.name,
        spec.definition,
        spec.better,
        "skipped",
        unit=spec.unit,
        skipped_reason=reason,
        needs=needs,
    )


@dataclass(frozen=True)
class InputSummary:
    """One input file as the evaluation read it (at EVAL_FPS)."""

    role: str  # "generated", "reference" or "audio"
    path: str
    frames: int = 0
    seconds: float = 0.0
    faces_found: int = 0
    width: int = 0
    height: int = 0


@dataclass
class PerFrame:
    """Curves for the HTML page, one value per frame at `fps` (None where undefined)."""

    fps: int
    audio_envelope: list[float | None] = field(default_factory=list)  # RMS per frame, 0..1
    mouth_opening_generated: list[float | None] = field(default_factory=list)
    mouth_opening_reference: list[float | None] = field(default_factory=list)
    sync_confidence_v2: list[float | None] = field(default_factory=list)  # syncnet_v2 framewise
    sync_confidence_own: list[float | None] = field(default_factory=list)  # our SyncNet, per window
    psnr: list[float | None] = field(default_factory=list)
    ssim: list[float | None] = field(default_factory=list)
    csim: list[float | None] = field(default_factory=list)
    lpips: list[float | None] = field(default_factory=list)  # per face-crop pair, as csim


@dataclass
class EvalReport:
    inputs: list[InputSummary]
    metrics: list[Metric]
    per_frame: PerFrame
    notes: list[str] = field(default_factory=list)
    lipsync_version: str = ""
    created: str = ""
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    format: int = REPORT_FORMAT

    def metric(self, key: str) -> Metric:
        for metric in self.metrics:
            if metric.key == key:
                return metric
        raise KeyError(key)

    @property
    def untrained(self) -> bool:
        return any(m.untrained_weights for m in self.metrics)

    def to_json(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def write(self, path: Path) -> Path:
        """The report as JSON in `path` (REPORT_FILE in the report folder, or a temporary name for it)."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    def timing_table(self) -> str:
        """Seconds and milliseconds per generated frame for each stage."""
        frames = next((i.frames for i in self.inputs if i.role == "generated"), 0)
        return stage_table(self.stage_seconds, frames)

    def summary(self) -> str:
        width = max(len(m.name) for m in self.metrics)
        lines = []
        for m in self.metrics:
            if m.status == "ok":
                lines.append(
                    f"  {m.name:<{width}}  {m.shown} {m.unit}".rstrip() + f"  ({BETTER_WORDS[m.better]})"
                )
            else:
                lines.append(f"  {m.name:<{width}}  skipped: {m.skipped_reason}")
        return "\n".join(lines)


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: they become null (a metric's definition says when that happens)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --- lipsync eval --compare ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparedRun:
    label: str
    values: dict[str, str]  # metric key -> cell text
    untrained: bool


def read_report(path: Path) -> dict[str, Any]:
    fix = "give report.json files written by `lipsync eval`"
    if not path.is_file():
        raise InputError(f"{path} does not exist", fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", fix) from exc
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        raise InputError(f"{path} is not a lipsync evaluation report (no metrics list)", fix)
    if data.get("format") != REPORT_FORMAT:
        raise InputError(f"{path} has report format {data.get('format')!r}, not {REPORT_FORMAT}", fix)
    return data


def _run_label(path: Path, data: dict[str, Any]) -> str:
    generated = next((i["path"] for i in data.get("inputs", []) if i.get("role") == "generated"), "")
    return f"{path.parent.name or path.stem}: {Path(generated).name}" if generated else str(path)


def _cell(entry: dict[str, Any]) -> str:
    value = entry.get("value")
    if entry.get("status") != "ok":
        return "skipped"
    if value is None:
        return "n/a"  # a non-finite figure (e.g. PSNR of identical crops)
    return f"{value:.4g}" + ("*" if entry.get("untrained_weights") else "")


def compare_reports(paths: list[Path]) -> str:
    """A plain-text table: one row per metric, one column per report; * marks untrained weights."""
    if len(paths) < 1:
        raise InputError("--compare needs at least one report.json", "give the reports to compare")
    runs: list[ComparedRun] = []
    names: dict[str, tuple[str, str]] = {}  # key -> (name, better), in first-seen order
    for path in paths:
        data = read_report(path)
        values: dict[str, str] = {}
        for entry in data["metrics"]:
            names.setdefault(entry["key"], (entry["name"], entry.get("better", "")))
            values[entry["key"]] = _cell(entry)
        runs.append(
            ComparedRun(
                _run_label(path, data), values, any(e.get("untrained_weights") for e in data["metrics"])
            )
        )
    header = ["metric", *[f"[{i + 1}]" for i in range(len(runs))]]
    rows = [header]
    for key, (name, better) in names.items():
        arrow = f" {BETTER_ARROWS[better]}" if better in BETTER_ARROWS else ""
        rows.append([name + arrow, *[run.values.get(key, "-") for run in runs]])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(f"[{i + 1}] {run.label}" for i, run in enumerate(runs))
    if any(run.untrained for run in runs):
        lines.append("* computed with UNTRAINED (randomly initialised) weights: not a measure of quality")
    return "\n".join(lines)
