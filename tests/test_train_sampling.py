"""Reference-frame sampling strategies, the dynamic margin and the margin crop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from lipsync.config import FACE_SIZE
from lipsync.face.landmarks import CHIN
from lipsync.train.config import MarginConfig, SamplingConfig, SamplingMethod
from lipsync.train.sampling import (
    MOUTH_POINTS,
    POSE_POINTS,
    SamplingError,
    crop_face,
    draw_margin,
    face_transform,
    fallback_window,
    landmarks_in_face,
    min_legal_frames,
    mouth_dissimilar_set,
    mouth_distances,
    pose_aligned_set,
    pose_distances,
    sample_reference,
    sis_set,
    top_k_count,
)

if TYPE_CHECKING:
    from lipsync.models.musetalk.loading import MuseTalkModels

METHODS: tuple[SamplingMethod, ...] = ("random", "pose_aligned", "mouth_dissimilar", "sis")


def synthetic_landmarks(frames: int, seed: int = 0) -> np.ndarray:
    """(N, 68, 2) in 256-crop pixels: a base face whose jaw sways and mouth opens independently."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 216, size=(68, 2)).astype(np.float32)
    sway = rng.normal(0, 4, size=(frames, 1, 2)).astype(np.float32)
    opening = rng.uniform(0, 12, size=(frames, 1, 1)).astype(np.float32)
    points = np.repeat(base[None], frames, axis=0)
    points[:, POSE_POINTS] += sway
    points[:, MOUTH_POINTS, 1:] += (
        opening * np.linspace(-1, 1, MOUTH_POINTS.stop - MOUTH_POINTS.start)[:, None]
    )
    return points + rng.normal(0, 0.3, size=points.shape).astype(np.float32)


def brute_distances(landmarks256: np.ndarray, target: int, points: slice) -> np.ndarray:
    return np.array(
        [
            np.mean(np.linalg.norm(landmarks256[j, points] - landmarks256[target, points], axis=1))
            for j in range(len(landmarks256))
        ]
    )


def in_top_k(distances: np.ndarray, target: int, k: int, chosen: np.ndarray, largest: bool) -> bool:
    """Every chosen frame is among the k smallest (largest) distances, self excluded, ties allowed."""
    others = np.delete(distances, target)
    if largest:
        threshold = np.sort(others)[::-1][k - 1]
        return bool(np.all(distances[chosen] >= threshold - 1e-5))
    threshold = np.sort(others)[k - 1]
    return bool(np.all(distances[chosen] <= threshold + 1e-5))


def check_method(
    landmarks256: np.ndarray, config: SamplingConfig, clip_frames: int, draws: int, seed: int
) -> None:
    """Assert each method's definition (lipsync/models/musetalk/README.md, SIS) on many targets."""
    rng = np.random.default_rng(seed)
    frames = len(landmarks256)
    k = top_k_count(frames, config.top_k_ratio)
    radius = config.fallback_radius * clip_frames
    for target in rng.integers(0, frames, size=draws):
        target = int(target)
        ref = sample_reference(landmarks256, target, config, clip_frames, rng)
        assert 0 <= ref < frames
        assert abs(ref - target) >= config.min_distance
        pose = brute_distances(landmarks256, target, POSE_POINTS)
        mouth = brute_distances(landmarks256, target, MOUTH_POINTS)
        window = fallback_window(target, frames, config, clip_frames)
        if config.method == "random":
            assert abs(ref - target) <= radius
            continue
        pool = {
            "pose_aligned": pose_aligned_set,
            "mouth_dissimilar": mouth_dissimilar_set,
            "sis": sis_set,
        }[config.method](landmarks256, target, config.top_k_ratio)
        legal = pool[np.abs(pool - target) >= config.min_distance]
        if len(legal) == 0:
            assert ref in window  # the uniform fallback
            continue
        assert ref in legal
        if config.method in ("pose_aligned", "sis"):
            assert in_top_k(pose, target, k, np.array([ref]), largest=False)
        if config.method in ("mouth_dissimilar", "sis"):
            assert in_top_k(mouth, target, k, np.array([ref]), largest=True)


# --------------------------------------------------------------------------------------------------
# Synthetic landmarks


def test_landmarks_in_face_shifts_and_scales_per_frame() -> None:
    landmarks = np.array([[[10.0, 20.0], [110.0, 70.0]], [[0.0, 0.0], [64.0, 32.0]]], dtype=np.float32)
    boxes = np.array([[10, 20, 110, 70], [0, 0, 128, 128]], dtype=np.float32)
    out = landmarks_in_face(landmarks, boxes)
    np.testing.assert_allclose(out[0], [[0, 0], [256, 256]])
    np.testing.assert_allclose(out[1], [[0, 0], [128, 64]])


def test_distances_and_sets_match_brute_force() -> None:
    landmarks = synthetic_landmarks(40)
    for target in (0, 17, 39):
        np.testing.assert_allclose(
            pose_distances(landmarks, target),
            brute_distances(landmarks, target, POSE_POINTS),
            rtol=1e-5,
            atol=1e-4,
        )
        np.testing.assert_allclose(
            mouth_distances(landmarks, target),
            brute_distances(landmarks, target, MOUTH_POINTS),
            rtol=1e-5,
            atol=1e-4,
        )
        k = top_k_count(40, 0.51)
        pose_set = pose_aligned_set(landmarks, target, 0.51)
        mouth_set = mouth_dissimilar_set(landmarks, target, 0.51)
        assert len(pose_set) == len(mouth_set) == k == 20
        assert target not in pose_set and target not in mouth_set
        expected_pose = set(
            np.argsort(
                np.where(np.arange(40) == target, np.inf, brute_distances(landmarks, target, POSE_POINTS))
            )[:k]
        )
        assert set(pose_set) == expected_pose
        assert set(sis_set(landmarks, target, 0.51)) == set(pose_set) & set(mouth_set)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("clip_frames", [1, 16])
def test_each_method_satisfies_its_definition_on_synthetic_landmarks(
    method: SamplingMethod, clip_frames: int
) -> None:
    config = SamplingConfig(method=method)
    check_method(synthetic_landmarks(120, seed=3), config, clip_frames, draws=150, seed=4)


def test_sis_falls_back_to_the_window_when_the_intersection_is_empty() -> None:
    # Mouth and jaw move together: the most pose-similar frames are also the most mouth-similar, so the
    # k closest poses and the k most different mouths are disjoint when 2k <= N - 1.
    frames = 60
    shift = np.arange(frames, dtype=np.float32)[:, None, None] * np.array([1.0, 0.0], dtype=np.float32)
    landmarks = np.tile(synthetic_landmarks(1)[0], (frames, 1, 1)) + shift
    config = SamplingConfig(method="sis", top_k_ratio=0.4)
    rng = np.random.default_rng(0)
    for target in range(frames):
        assert len(sis_set(landmarks, target, config.top_k_ratio)) == 0
        for _ in range(5):
            ref = sample_reference(landmarks, target, config, 1, rng)
            assert ref in fallback_window(target, frames, config, 1)
            assert abs(ref - target) == config.min_distance  # R = min_distance = 5 for one frame per sample
    check_method(landmarks, config, 4, draws=100, seed=1)


def test_random_covers_its_window_uniformly() -> None:
    config = SamplingConfig(method="random")
    landmarks = synthetic_landmarks(200)
    rng = np.random.default_rng(0)
    refs = np.array([sample_reference(landmarks, 100, config, 4, rng) for _ in range(3000)])
    expected = set(range(80, 96)) | set(range(105, 121))
    assert set(refs) == expected
    counts = np.bincount(refs - 80)[np.array(sorted(expected)) - 80]
    assert counts.min() > 0.5 * counts.mean()


def test_bounds_min_distance_and_short_clips() -> None:
    config = SamplingConfig(method="random", min_distance=5)
    assert min_legal_frames(config, 1) == 10
    rng = np.random.default_rng(0)
    for frames in range(1, 14):
        landmarks = synthetic_landmarks(frames)
        legal_everywhere = all(len(fallback_window(t, frames, config, 1)) for t in range(frames))
        assert legal_everywhere == (frames >= min_legal_frames(config, 1))
        for method in METHODS:
            for target in range(frames):
                if len(fallback_window(target, frames, config, 1)) == 0 and method == "random":
                    with pytest.raises(SamplingError, match="no reference frame"):
                        sample_reference(landmarks, target, replace(config, method=method), 1, rng)
                elif legal_everywhere:
                    ref = sample_reference(landmarks, target, replace(config, method=method), 1, rng)
                    assert 0 <= ref < frames and abs(ref - target) >= 5
    with pytest.raises(SamplingError, match="fallback_radius"):
        min_legal_frames(SamplingConfig(fallback_radius=1, min_distance=6), 1)
    with pytest.raises(IndexError):
        sample_reference(synthetic_landmarks(20), 20, config, 1, rng)


# --------------------------------------------------------------------------------------------------
# Margin and crop


def test_margin_draws_lie_in_range_with_the_configured_mean() -> None:
    rng = np.random.default_rng(0)
    config = MarginConfig(enabled=True, mean=10.0, std=10.0, max=20.0)
    draws = np.array([draw_margin(config, rng) for _ in range(4000)])
    assert draws.min() >= 0.0 and draws.max() <= 20.0
    assert abs(draws.mean() - 10.0) < 0.5  # clipping a normal symmetrically about its mean keeps the mean
    assert 0.1 < np.mean(draws == 0.0) < 0.25  # P(N(10, 10) < 0) = 0.16
    skewed = np.array(
        [draw_margin(MarginConfig(enabled=True, mean=4.0, std=2.0, max=20.0), rng) for _ in range(2000)]
    )
    assert abs(skewed.mean() - 4.0) < 0.2
    assert draw_margin(MarginConfig(enabled=False), rng) == 0.0


def test_crop_with_margin_zero_is_the_face_box() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(320, 320, 3), dtype=np.uint8)
    box = np.array([32, 32, 288, 288], dtype=np.float32)
    np.testing.assert_array_equal(crop_face(frame, box, 0.0), frame[32:288, 32:288])
    # A box of another size: the same as resizing the box pixels (up to interpolation details).
    smooth = cv2.GaussianBlur(frame, (0, 0), 3)
    box = np.array([40, 30, 240, 280], dtype=np.float32)
    expected = cv2.resize(smooth[30:280, 40:240], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(crop_face(smooth, box, 0.0).astype(np.float32) - expected)
    assert diff.mean() < 1.5
    # Landmarks through the crop's transform land where landmarks_in_face puts them.
    points = rng.uniform(30, 280, size=(5, 68, 2)).astype(np.float32)
    mapped = face_transform(box, 0.0).points(points)
    np.testing.assert_allclose(mapped, landmarks_in_face(points, np.tile(box, (5, 1))), atol=1e-4)


@pytest.mark.parametrize("margin", [0.0, 10.0, 20.0])
def test_positive_margin_moves_the_chin_up(margin: float) -> None:
    box = np.array([32.0, 40.0, 288.0, 264.0], dtype=np.float32)  # height 224
    chin_row = 250
    frame = np.zeros((320, 320, 3), dtype=np.uint8)
    frame[chin_row] = 255  # a bright line at the chin
    crop = crop_face(frame, box, margin)
    height = box[3] - box[1]
    expected = (chin_row - box[1]) * FACE_SIZE / (height + margin * height / FACE_SIZE)
    found = np.average(np.arange(FACE_SIZE), weights=crop[:, 128, 0].astype(np.float64))
    assert abs(found - expected) < 0.1
    # The box bottom moves from row 256 up by 256 * m / (256 + m): ~9.6 px for m = 10.
    bottom = face_transform(box, margin).points(np.array([[160.0, box[3]]]))[0, 1]
    assert bottom == pytest.approx(FACE_SIZE * FACE_SIZE / (FACE_SIZE + margin), abs=1e-3)
    chin = face_transform(box, margin).points(np.array([[160.0, chin_row]]))[0, 1]
    assert chin == pytest.approx(expected, abs=1e-3)


# --------------------------------------------------------------------------------------------------
# Real landmarks


@pytest.fixture(scope="session")
def prepared_clip(tmp_path_factory: pytest.TempPathFactory, tiny_models: MuseTalkModels) -> Path:
    """The first 2 s clip of talk_c.mp4, prepared (the dataset is shared with test_train_unet_data.py)."""
    from test_train_unet_data import build_prepared

    from lipsync.train.data.format import list_clips

    return list_clips(build_prepared(tmp_path_factory, tiny_models))[0]


def test_each_method_satisfies_its_definition_on_real_landmarks(prepared_clip: Path) -> None:
    from lipsync.train.data.format import read_clip

    clip = read_clip(prepared_clip)
    landmarks256 = landmarks_in_face(np.asarray(clip.landmarks), np.asarray(clip.face_boxes))
    assert np.all(
        (landmarks256[:, CHIN, 1] > 200) & (landmarks256[:, CHIN, 1] < 262)
    )  # chin near the box bottom
    for method in METHODS:
        for clip_frames in (1, 16):
            check_method(landmarks256, SamplingConfig(method=method), clip_frames, draws=60, seed=7)
    # The paper's ratio gives smaller sets and an empty intersection more often: both paths are used.
    check_method(landmarks256, SamplingConfig(method="sis", top_k_ratio=0.2), 1, draws=60, seed=8)
