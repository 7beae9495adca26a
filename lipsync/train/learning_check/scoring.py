"""Dub every tail (the recipe's rows: the trained model, its controls) and score it against the real tail.

Each video is scored by `lipsync eval` itself (lipsync.eval.run.evaluate) against the tail, with the tail's
own audio: mouth LMD, the lip-sync meter's r (the dub's lip gap against the real tail's, frame by frame),
the judge SyncNet's confidence and offset (when the recipe has a judge), PSNR/SSIM of the face crop, and
LSE when syncnet_v2 weights are given. The dubs are made with `silence: generate`, so
every frame of the tail shows a generated (or copied) mouth, pauses included: nothing of the real mouth is
kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipsync.eval.networks.weights import EvalWeightFiles
from lipsync.eval.report import EvalReport
from lipsync.io.audio import load_audio
from lipsync.train.learning_check.config import EvaluationSettings
from lipsync.train.learning_check.split import SplitClip, write_wav

REAL = "real"  # the tail itself: the last row of every clip
EVAL_DIR = "eval"
NO_WEIGHTS_DIR = "no-eval-weights"  # an empty folder: only the weight-free metrics and the judge run

# report key -> `lipsync eval` metric key
METRICS: dict[str, str] = {
    "lmd": "lmd",
    "lip_sync_r": "lip_sync_r",
    "judge_confidence": "own_sync_confidence",
    "judge_offset": "own_sync_offset",
    "psnr": "psnr",
    "ssim": "ssim",
    "lse_c": "lse_c",
    "lse_d": "lse_d",
}


@dataclass(frozen=True)
class Score:
    """One metric of one row of one clip: its value, or why there is none."""

    value: float | None
    samples: int = 0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        value = self.value if self.value is None or math.isfinite(self.value) else str(self.value)
        return {"value": value, "samples": self.samples, "note": self.note}


ClipScores = dict[str, dict[str, Score]]  # row -> metric -> score
Dub = Callable[[Path, Path, Path, int], None]  # (source video, audio, output video, frames)


@dataclass(frozen=True)
class DubbedRow:
    """A row whose video is a dub of the tail: by `dub`, fed the tail's audio (shuffled, or its own)."""

    name: str
    dub: Dub
    shuffled_audio: bool = False


def score_clip(
    clip: SplitClip,
    rows: Sequence[DubbedRow],
    judge: Path | None,
    settings: EvaluationSettings,
    out: Path,
    say: Callable[[str], None],
) -> ClipScores:
    """The rows of one tail, then the real tail; videos and `lipsync eval` reports under out/eval/CLIP.
    Without a judge SyncNet the judge's metrics have no value."""
    from lipsync.train.learning_check.controls import shuffled_audio

    folder = out / EVAL_DIR / clip.name
    folder.mkdir(parents=True, exist_ok=True)
    tail, tail_audio = Path(clip.tail), Path(clip.tail_audio)
    shuffled = tail_audio
    if any(row.shuffled_audio for row in rows):
        samples = load_audio(tail_audio).samples
        pieces = shuffled_audio(samples, settings.shuffle_piece_samples, settings.seed)
        shuffled = write_wav(folder / "shuffled-audio.wav", pieces)

    videos: dict[str, Path] = {}
    for row in rows:
        video = folder / f"{_file_name(row.name)}.mp4"
        say(f"  {clip.name}: dubbing '{row.name}'")
        row.dub(tail, shuffled if row.shuffled_audio else tail_audio, video, clip.tail_frames)
        videos[row.name] = video
    videos[REAL] = tail

    weights = EvalWeightFiles.in_folder(
        settings.eval_weights or out / EVAL_DIR / NO_WEIGHTS_DIR, syncnet=judge
    )
    scores: ClipScores = {}
    for name, video in videos.items():
        say(f"  {clip.name}: scoring '{name}'")
        report = _evaluate(video, tail, tail_audio, weights, settings, folder / _file_name(name))
        scores[name] = {key: _score(report, metric) for key, metric in METRICS.items()}
    return scores


def _file_name(row: str) -> str:
    return row.replace(" ", "-")


def _evaluate(
    video: Path, tail: Path, audio: Path, weights: EvalWeightFiles, settings: EvaluationSettings, out: Path
) -> EvalReport:
    from lipsync.eval.run import EvalOptions, evaluate

    options = EvalOptions(device=settings.device, batch_size=settings.batch_size, progress=False)
    return evaluate(video, out, reference=tail, audio=audio, weights=weights, options=options, force=True)


def _score(report: EvalReport, key: str) -> Score:
    try:
        metric = report.metric(key)
    except KeyError:
        return Score(None, note=f"`lipsync eval` has no {key}")
    if metric.status != "ok" or metric.value is None:
        return Score(None, note=metric.skipped_reason)
    return Score(metric.value, metric.samples, "untrained weights" if metric.untrained_weights else "")
