"""The lip-sync meter: does a generated mouth open and close with a target?

Per frame, the lip gap of a face: the mean distance between the facing inner-lip points (iBUG 61-67, 62-66,
63-65) over the mouth width (outer corners 48-54), from our landmarks; dimensionless, so neither the video's
resolution nor the face's distance matters. Against a target series (a controlled-sync corpus's ground-truth
opening per frame, or, when a held-out real clip is dubbed with its own audio, the real video's own lip gap):
Pearson r at lag 0 and at each lag within ±MAX_LAG_FRAMES, and the lag where r is highest. Landmark L1 and
LMD hide whether a mouth follows speech (a model that learns the mean mouth scores well on them); r does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.errors import InputError
from lipsync.eval.landmark_metrics import INNER_LIP_PAIRS, POINTS

MOUTH_LEFT, MOUTH_RIGHT = 48, 54  # iBUG outer mouth corners
MAX_LAG_FRAMES = 5  # ±0.2 s at 25 fps: beyond any sync error a viewer would still call lip-sync
MIN_FRAMES = 10  # fewer frame pairs give no meaningful correlation


def lip_gap(points: np.ndarray) -> np.ndarray:
    """(N,) inner-lip gap over mouth width of (N, 68, 2) landmarks; NaN for frames without a face."""
    if points.ndim != 3 or points.shape[1:] != (POINTS, 2):
        raise ValueError(f"landmarks must be an (N, {POINTS}, 2) array, got shape {points.shape}")
    pts = points.astype(np.float64)
    upper = pts[:, [pair[0] for pair in INNER_LIP_PAIRS]]
    lower = pts[:, [pair[1] for pair in INNER_LIP_PAIRS]]
    gap = np.linalg.norm(lower - upper, axis=-1).mean(axis=1)
    width = np.linalg.norm(pts[:, MOUTH_RIGHT] - pts[:, MOUTH_LEFT], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gap / width, np.nan)


@dataclass(frozen=True)
class LipSyncReading:
    """How a generated lip-gap series follows a target series."""

    r: float  # Pearson r at lag 0
    frames: int  # frame pairs behind r (both values finite)
    best_lag: int  # frames; positive: the generated mouth moves that many frames after the target
    best_r: float  # r at best_lag
    by_lag: dict[int, float]  # r at every lag that had enough frame pairs


def pearson(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson r over the positions where both are finite, and how many; NaN where there are fewer than
    MIN_FRAMES or either side does not vary."""
    both = np.isfinite(a) & np.isfinite(b)
    count = int(both.sum())
    if count < MIN_FRAMES:
        return float("nan"), count
    x, y = a[both], b[both]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), count
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())), count


def lagged(generated: np.ndarray, target: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """generated[t + lag] paired with target[t], over the t where both exist."""
    n = min(len(generated), len(target))
    if lag >= 0:
        return generated[lag:n], target[: max(n - lag, 0)]
    return generated[: max(n + lag, 0)], target[-lag:n]


def read_lip_sync(generated: np.ndarray, target: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> LipSyncReading:
    """r of the generated series against the target at lags -max_lag..max_lag (per frame, same frame rate;
    the shorter series sets the length). ValueError, saying why, where r at lag 0 is undefined."""
    generated, target = np.asarray(generated, np.float64), np.asarray(target, np.float64)
    if generated.ndim != 1 or target.ndim != 1:
        raise ValueError(f"lip-gap series must be 1-D, got shapes {generated.shape} and {target.shape}")
    r, frames = pearson(generated, target)
    if not np.isfinite(r):
        if frames < MIN_FRAMES:
            raise ValueError(
                f"only {frames} frames have both a generated lip gap and a target value; the lip-sync "
                f"meter needs at least {MIN_FRAMES}"
            )
        raise ValueError("the generated lip gap or the target does not vary, so its correlation is undefined")
    by_lag = {}
    for lag in range(-max_lag, max_lag + 1):
        value, _ = pearson(*lagged(generated, target, lag))
        if np.isfinite(value):
            by_lag[lag] = value
    best_lag = max(by_lag, key=lambda lag: (by_lag[lag], -abs(lag)))
    return LipSyncReading(r, frames, best_lag, by_lag[best_lag], by_lag)


def load_opening(path: Path) -> np.ndarray:
    """A ground-truth opening series: a .npy file of one number per frame (a corpus's <clip>.opening.npy)."""
    fix = "give the <clip>.opening.npy saved beside a controlled-sync clip: one value per frame, 25 fps"
    try:
        values = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"the opening file {path} does not exist", fix) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"the opening file {path} is not a readable .npy array ({exc})", fix) from None
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number) or len(values) == 0:
        raise InputError(
            f"the opening file {path} holds an array of shape {values.shape} and type {values.dtype}, "
            "not one number per frame",
            fix,
        )
    return values.astype(np.float64)
