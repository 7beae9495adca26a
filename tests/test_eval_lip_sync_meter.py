"""The lip-sync meter on hand-made landmarks and series: gap per frame, r, the best lag, undefined cases."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.eval.lip_sync_meter import MAX_LAG_FRAMES, lip_gap, read_lip_sync


def mouth(gap: float, width: float = 40.0, x: float = 100.0, y: float = 200.0) -> np.ndarray:
    """68 landmarks at (x, y) but for a mouth `width` wide whose facing inner-lip points are `gap` apart."""
    points = np.full((68, 2), (x, y), dtype=np.float64)
    points[48], points[54] = (x - width / 2, y), (x + width / 2, y)
    for upper, lower, dx in ((61, 67, -5.0), (62, 66, 0.0), (63, 65, 5.0)):
        points[upper] = (x + dx, y - gap / 2)
        points[lower] = (x + dx, y + gap / 2)
    return points


def smooth_series(frames: int, seed: int = 0) -> np.ndarray:
    """A mouth-opening-like series: random, smoothed over a few frames, in [0, 1]."""
    raw = np.random.default_rng(seed).random(frames + 4)
    smoothed = np.convolve(raw, np.ones(5) / 5, mode="valid")
    return (smoothed - smoothed.min()) / (smoothed.max() - smoothed.min())


def test_the_lip_gap_is_the_inner_gap_over_the_mouth_width_whatever_the_scale() -> None:
    points = np.stack([mouth(0.0), mouth(6.0), mouth(12.0, width=30.0), mouth(6.0) * 3])
    points = np.concatenate([points, np.full((1, 68, 2), np.nan)])
    np.testing.assert_allclose(lip_gap(points)[:4], [0.0, 0.15, 0.4, 0.15])
    assert np.isnan(lip_gap(points)[4])  # no face
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        lip_gap(np.zeros((3, 20, 2)))


def test_r_equals_numpys_and_ignores_frames_without_a_face() -> None:
    target = smooth_series(120)
    generated = 0.3 * target + 0.02 * np.random.default_rng(1).standard_normal(120)
    expected = np.corrcoef(generated, target)[0, 1]
    generated[[5, 17, 60]] = np.nan
    kept = np.isfinite(generated)
    reading = read_lip_sync(generated, target)
    assert reading.frames == 117
    assert reading.r == pytest.approx(np.corrcoef(generated[kept], target[kept])[0, 1], rel=1e-12)
    assert reading.r == pytest.approx(expected, abs=0.02) and reading.r > 0.9


def test_a_mouth_that_follows_late_is_found_at_its_lag() -> None:
    target = smooth_series(200, seed=2)
    late = np.concatenate([np.full(3, target[0]), target[:-3]])  # the mouth moves 3 frames after the target
    reading = read_lip_sync(2.0 * late + 1.0, target)
    assert reading.best_lag == 3 and reading.best_r == pytest.approx(1.0)
    assert reading.r < 0.9  # at lag 0 it is off
    early = read_lip_sync(target[4:], target[:-4])  # the generated frame t shows the target's t + 4
    assert early.best_lag == -4 and early.best_r == pytest.approx(1.0)
    assert set(reading.by_lag) == set(range(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1))


def test_a_mouth_that_ignores_the_target_reads_near_zero() -> None:
    target = smooth_series(500, seed=3)
    unrelated = smooth_series(500, seed=4)
    assert abs(read_lip_sync(unrelated, target).r) < 0.2
    assert read_lip_sync(-target, target).r == pytest.approx(-1.0)


def test_undefined_readings_say_why() -> None:
    with pytest.raises(ValueError, match="only 6 frames have both"):
        read_lip_sync(smooth_series(6), smooth_series(6, seed=1))
    with pytest.raises(ValueError, match="does not vary"):
        read_lip_sync(np.full(50, 0.2), smooth_series(50))
    with pytest.raises(ValueError, match="1-D"):
        read_lip_sync(np.zeros((5, 2)), np.zeros(5))
