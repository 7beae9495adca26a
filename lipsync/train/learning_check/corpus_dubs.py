"""A generator on a controlled-sync corpus: dub scored clips, read the lip gap of what it drew.

Per scored clip, the corpus clip itself is the source video and the stage's export dubs it (`lipsync dub`,
`silence: generate`, so every frame shows a generated mouth) in these rows:

* `model`: with the clip's own speech;
* `shuffled`: with that speech shuffled in pieces. Scored against the clip's true opening, a model that
  follows the audio falls to about 0; one that copies the mouth of the source it is shown stays high;
* `copied`: no model, every frame gets the lower face of a random distant frame (`controls.py`): what
  a real but unsynchronised mouth scores, the meter's floor;
* `real_landmarks` (landmark-prior only): the renderer driven by the frames' tracked landmarks instead of
  the transformer's (the renderer alone).

Each dub's face is tracked as `lipsync eval` tracks it; the lip gap (`lip_sync_meter.lip_gap`) is
correlated with the clip's `opening.npy` (Pearson r at lag 0, and the best lag within ±5 frames). A
split's figure is the mean over its clips. The dubs stay under OUT/dubs/STAGE/SPLIT/ to be looked at.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsync.train.learning_check.corpus_config import CorpusScoring

if TYPE_CHECKING:
    from lipsync.pipeline.dub import DubPipeline

REAL_LANDMARKS = "real_landmarks"
COPY_MIN_DISTANCE = 10  # frames between a frame and its donor: 0.4 s, beyond one syllable's opening


@dataclass(frozen=True)
class ClipReading:
    """One dubbed row of one clip: r at lag 0 with the opening, the best lag and its r."""

    r: float
    best_lag: float
    best_r: float


def dub_split_scores(
    export: Path,
    folders: dict[str, list[Path]],
    corpus: Path,
    scoring: CorpusScoring,
    out: Path,
    say: Callable[[str], None],
) -> dict[str, dict[str, float]]:
    """Per split: the mean r of each row (`r`, `r_shuffled`, `r_copied`, `r_real_landmarks`), their
    absolute values, the model row's spread and best lag, and the number of clips behind them."""
    from lipsync.config import DubSettings, RuntimeSettings
    from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
    from lipsync.pipeline.dub import DubPipeline
    from lipsync.train.learning_check.controls import CopiedMouthGenerator, RealLandmarkGenerator

    settings = DubSettings(
        silence="generate", runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=8)
    )
    trained = DubPipeline.from_pretrained(export, settings=settings)
    copied = CopiedMouthGenerator(trained.generator, scoring.seed, COPY_MIN_DISTANCE)
    pipelines = {"model": trained, "shuffled": trained, "copied": DubPipeline(copied, settings)}
    if isinstance(trained.generator, LandmarkPriorGenerator):
        pipelines[REAL_LANDMARKS] = DubPipeline(RealLandmarkGenerator(trained.generator), settings)

    scores: dict[str, dict[str, float]] = {}
    for split, clips in folders.items():
        readings: dict[str, list[ClipReading]] = {row: [] for row in pipelines}
        for folder in clips:
            for row, reading in score_clip(folder, pipelines, corpus, scoring, out / split, say).items():
                readings[row].append(reading)
        scores[split] = split_figures(readings)
    return scores


def split_figures(readings: dict[str, list[ClipReading]]) -> dict[str, float]:
    """The split's means over clips (NaN where no clip gave a reading)."""
    figures: dict[str, float] = {}
    for row, found in readings.items():
        name = "r" if row == "model" else f"r_{row}"
        r = np.array([reading.r for reading in found], np.float64)
        figures[name] = nan_mean(r)
        figures[f"abs_{name}"] = abs(figures[name])
        if row == "model":
            figures["r_min"] = float(np.nanmin(r)) if np.isfinite(r).any() else math.nan
            figures["r_max"] = float(np.nanmax(r)) if np.isfinite(r).any() else math.nan
            figures["best_lag"] = nan_mean(np.array([reading.best_lag for reading in found], np.float64))
            figures["clips"] = int(np.isfinite(r).sum())
    return figures


def score_clip(
    folder: Path,
    pipelines: dict[str, DubPipeline],
    corpus: Path,
    scoring: CorpusScoring,
    out: Path,
    say: Callable[[str], None],
) -> dict[str, ClipReading]:
    """Dub the corpus clip behind the prepared clip `folder` in every row; each row's reading."""
    from lipsync.config import AUDIO_SAMPLE_RATE
    from lipsync.eval.lip_sync_meter import load_opening
    from lipsync.io.audio import load_audio
    from lipsync.train.learning_check.controls import shuffled_audio
    from lipsync.train.learning_check.corpus_split import OPENING_SUFFIX, VIDEO_SUFFIX, clip_name
    from lipsync.train.learning_check.split import write_wav
    from lipsync.train.unet_data import read_meta

    meta = read_meta(folder)
    name = clip_name(meta.source)
    source = corpus / f"{name}{VIDEO_SUFFIX}"
    opening = load_opening(corpus / f"{name}{OPENING_SUFFIX}")
    work = out / name.replace("/", "-")
    work.mkdir(parents=True, exist_ok=True)
    samples = load_audio(source).samples
    speech = write_wav(work / "speech.wav", samples)
    piece = max(1, round(scoring.shuffle_piece_seconds * AUDIO_SAMPLE_RATE))
    shuffled = write_wav(work / "shuffled-speech.wav", shuffled_audio(samples, piece, scoring.seed))
    readings = {}
    for row, pipeline in pipelines.items():
        video = work / f"{row}.mp4"
        say(f"  {name}: dubbing '{row}'")
        pipeline(source, shuffled if row == "shuffled" else speech, video, progress=False)
        readings[row] = read_dub(video, opening)
    return readings


def read_dub(video: Path, opening: np.ndarray) -> ClipReading:
    """The lip gap of `video`'s face against `opening`, frame by frame (NaN where r is undefined)."""
    from lipsync.eval.inputs import track_video
    from lipsync.eval.lip_sync_meter import lip_gap, read_lip_sync

    gap = lip_gap(track_video(video).track.points)
    count = min(len(gap), len(opening))
    try:
        reading = read_lip_sync(gap[:count], opening[:count])
    except ValueError:
        return ClipReading(math.nan, math.nan, math.nan)
    return ClipReading(reading.r, float(reading.best_lag), reading.best_r)


def nan_mean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN where there is none."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
