"""Mouth landmark distance (LMD) and mouth opening: real tracks of warped mouths, and synthetic arrays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.config import FaceSettings
from lipsync.eval.landmark_metrics import (
    INNER_LIP_PAIRS,
    LEFT_EYE_OUTER,
    MOUTH_POINTS,
    RIGHT_EYE_OUTER,
    LandmarkDistance,
    face_size,
    landmark_distance,
    lmd_normalised,
    lmd_pixels,
    mouth_opening,
)
from lipsync.face.landmarks import IBUG68_FROM_MESH
from lipsync.face.track import track_face
from lipsync.io.video import FrameReader, probe_video

from conftest import media

FRAMES = 12
STRETCHES = (0, 4, 10)  # px the lower lip is moved down
MOUTH_SHIFT = np.array([3.0, 4.0], dtype=np.float32)  # 5 px Euclidean, 3.5 px mean per coordinate


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    info = probe_video(media("talk_b.mp4"))
    with FrameReader(info) as reader:
        return list(reader.frames(0, FRAMES))


def track_points(frames: list[np.ndarray]) -> np.ndarray:
    height, width = frames[0].shape[:2]
    return track_face(frames, FaceSettings(), width, height).points


@pytest.fixture(scope="module")
def original(frames: list[np.ndarray]) -> np.ndarray:
    points = track_points(frames)
    assert not np.isnan(points).any()
    return points


def open_mouth(frame: np.ndarray, points: np.ndarray, stretch: float) -> np.ndarray:
    """The frame with the lower lip moved down by `stretch` px: a vertical displacement that ramps up
    from the upper inner lip to the bottom of the lower lip, then back to zero at the chin, fading out
    sideways over half a mouth width beyond the corners. Eyes and jaw stay where they are."""
    height, width = frame.shape[:2]
    top = float(points[61:64, 1].mean())
    lip_bottom, chin = float(points[57, 1]), float(points[8, 1])
    left, right = float(points[48, 0]), float(points[54, 0])
    margin = (right - left) / 2
    rows = np.interp(np.arange(height), [top, lip_bottom, chin], [0.0, 1.0, 0.0])
    cols = np.interp(np.arange(width), [left - margin, left, right, right + margin], [0.0, 1.0, 1.0, 0.0])
    map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_y -= (stretch * rows[:, None] * cols[None, :]).astype(np.float32)
    return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def warped(frames: list[np.ndarray], original: np.ndarray) -> dict[int, np.ndarray]:
    """Tracked landmarks of the clip with each stretch applied."""
    out = {}
    for stretch in STRETCHES:
        copies = [open_mouth(f, p, stretch) for f, p in zip(frames, original, strict=True)]
        if stretch == 0:
            assert all(np.array_equal(c, f) for c, f in zip(copies, frames, strict=True))
        out[stretch] = track_points(copies)
    return out


def test_a_video_against_itself_has_zero_lmd(original: np.ndarray) -> None:
    result = landmark_distance(original, original)
    assert result == LandmarkDistance(normalised=0.0, pixels=0.0, frames=FRAMES)


def test_an_unchanged_copy_tracked_again_has_zero_lmd(original: np.ndarray, warped: dict) -> None:
    result = landmark_distance(warped[0], original)
    assert result.frames == FRAMES
    assert result.pixels == 0.0 and result.normalised == 0.0  # the tracker is deterministic


def test_lmd_grows_with_the_mouth_warp(original: np.ndarray, warped: dict) -> None:
    small = landmark_distance(warped[4], original)
    large = landmark_distance(warped[10], original)
    assert small.frames == large.frames == FRAMES
    assert 0 < small.normalised < large.normalised
    assert 0 < small.pixels < large.pixels
    # every frame moves, more with the larger warp
    assert np.all(lmd_pixels(warped[10], original) > lmd_pixels(warped[4], original))
    # the lower lip (about half the 20 mouth points) moves down by up to 10 px: a few px on average
    assert 1.0 < large.pixels < 10.0
    assert large.normalised == pytest.approx(np.mean(lmd_normalised(warped[10], original)), rel=1e-12)


def test_mouth_opening_grows_with_the_stretch(original: np.ndarray, warped: dict) -> None:
    opening = {k: mouth_opening(p) for k, p in warped.items()}
    assert np.array_equal(opening[0], mouth_opening(original))
    assert np.all(opening[4] > opening[0]) and np.all(opening[10] > opening[4])
    # a 10 px stretch opens the mouth by about 10 px over a ~185 px face
    assert 0.02 < float(np.mean(opening[10] - opening[0])) < 0.08


def test_landmark_roles_match_the_ibug_layout(original: np.ndarray) -> None:
    # FaceMesh's outer eye corners are vertices 33 (image left) and 263 (image right)
    assert IBUG68_FROM_MESH[LEFT_EYE_OUTER] == 33 and IBUG68_FROM_MESH[RIGHT_EYE_OUTER] == 263
    assert np.all(original[:, LEFT_EYE_OUTER, 0] < original[:, RIGHT_EYE_OUTER, 0])
    sizes = face_size(original)
    # each inner-lip pair: the upper point above the lower, horizontally close
    for upper, lower in INNER_LIP_PAIRS:
        assert np.all(original[:, upper, 1] < original[:, lower, 1])
        assert np.all(np.abs(original[:, upper, 0] - original[:, lower, 0]) < 0.05 * sizes)


# ---- synthetic arrays ----


def synthetic(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.uniform(100, 300, size=(frames, 68, 2)).astype(np.float32)
    points[:, LEFT_EYE_OUTER] = (150, 120)
    points[:, RIGHT_EYE_OUTER] = (180, 160)  # 50 px apart
    return points


def test_face_size_is_the_outer_eye_corner_distance() -> None:
    points = synthetic(3)
    points[1] = np.nan
    np.testing.assert_array_equal(face_size(points)[[0, 2]], [50.0, 50.0])
    assert np.isnan(face_size(points)[1])


def test_mouth_shift_gives_known_distances() -> None:
    reference = synthetic(2)
    generated = reference.copy()
    generated[:, MOUTH_POINTS] += MOUTH_SHIFT
    generated[:, :48] += 7.0  # points outside the mouth do not count
    np.testing.assert_allclose(lmd_normalised(generated, reference), [0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(lmd_pixels(generated, reference), [3.5, 3.5], rtol=1e-6)


def test_normalisation_uses_the_reference_face() -> None:
    reference = synthetic(1)
    generated = reference.copy()
    generated[:, MOUTH_POINTS] += MOUTH_SHIFT
    generated[:, RIGHT_EYE_OUTER] = (250, 120)  # a different generated face size is ignored
    np.testing.assert_allclose(lmd_normalised(generated, reference), [0.1], rtol=1e-6)


def test_pixel_variant_is_the_mean_absolute_coordinate_difference() -> None:
    generated, reference = synthetic(4, seed=1), synthetic(4, seed=2)
    expected = [
        np.mean([abs(float(g[j, c]) - float(r[j, c])) for j in range(48, 68) for c in range(2)])
        for g, r in zip(generated, reference, strict=True)
    ]
    np.testing.assert_allclose(lmd_pixels(generated, reference), expected, rtol=1e-12)
    euclidean = [
        np.mean([np.hypot(*(g[j].astype(float) - r[j])) for j in range(48, 68)]) / 50.0
        for g, r in zip(generated, reference, strict=True)
    ]
    np.testing.assert_allclose(lmd_normalised(generated, reference), euclidean, rtol=1e-9)


def test_frames_without_a_face_are_skipped() -> None:
    reference = synthetic(5)
    generated = reference.copy()
    generated[:, MOUTH_POINTS] += MOUTH_SHIFT
    generated[2:, MOUTH_POINTS] += MOUTH_SHIFT  # frames 2-4: twice as far
    generated[1] = np.nan  # no generated face
    reference[3] = np.nan  # no reference face
    per_frame = lmd_normalised(generated, reference)
    assert np.isnan(per_frame[[1, 3]]).all() and np.isnan(lmd_pixels(generated, reference)[[1, 3]]).all()
    result = landmark_distance(generated, reference)
    assert result.frames == 3
    assert result.normalised == pytest.approx((0.1 + 0.2 + 0.2) / 3)
    assert result.pixels == pytest.approx((3.5 + 7.0 + 7.0) / 3)


def test_no_frame_with_both_faces_raises() -> None:
    reference = synthetic(2)
    generated = reference.copy()
    generated[0] = np.nan
    reference[1] = np.nan
    with pytest.raises(ValueError, match="no frame has a face in both"):
        landmark_distance(generated, reference)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(3, 68, 2\) and \(2, 68, 2\)"):
        lmd_pixels(synthetic(3), synthetic(2))
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        face_size(np.zeros((3, 20, 2)))


def test_mouth_opening_is_the_mean_inner_lip_gap_over_face_size() -> None:
    points = synthetic(2)
    for upper, lower in INNER_LIP_PAIRS:
        points[:, upper] = (200, 250)
        points[:, lower] = (200, 250)
    points[0, 66] = (200, 265)  # only the middle pair opens, by 15 px: mean gap 5 px
    points[1] = np.nan
    opening = mouth_opening(points)
    assert opening[0] == pytest.approx(5.0 / 50.0) and np.isnan(opening[1])
