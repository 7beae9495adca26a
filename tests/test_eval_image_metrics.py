"""PSNR and SSIM against scikit-image on real face crops; inter-frame consistency (IFC) and flicker."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lipsync.eval.image_metrics import ConsistencyTracker, frame_change, psnr, ssim
from lipsync.io.video import FrameReader, probe_video

from conftest import media

CROP_SIZE = 256
FACE_REGION = (slice(160, 560), slice(220, 620))  # talk_b (844x844): the speaker's head, 400x400 px
FRAMES = 8
JPEG_QUALITY = 20
# Both compute in float64 with the same window; they differ by rounding only (measured: ~1e-15). 1e-4
# would do; a tighter bound also catches off-by-one borders or a mis-normalised window.
SSIM_TOLERANCE = 1e-9


def crop(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(frame[FACE_REGION], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    info = probe_video(media("talk_b.mp4"))
    with FrameReader(info) as reader:
        return [crop(frame) for frame in reader.frames(0, FRAMES)]


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        structural_similarity(
            a,
            b,
            channel_axis=-1,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def noisy(image: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, std, image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def shifted(image: np.ndarray) -> np.ndarray:
    """Moved 3 px right and 2 px down (edges repeated)."""
    matrix = np.array([[1, 0, 3], [0, 1, 2]], dtype=np.float32)
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


DISTORTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "noise": lambda im: noisy(im, 8.0),
    "blur": lambda im: cv2.GaussianBlur(im, (7, 7), 2.0),
    "jpeg": jpeg,
    "shift": shifted,
    "darker": lambda im: (im * 0.7).astype(np.uint8),
}


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_psnr_and_ssim_agree_with_skimage(crops: list[np.ndarray], name: str) -> None:
    for image in crops[:3]:
        distorted = DISTORTIONS[name](image)
        assert distorted.shape == image.shape and not np.array_equal(distorted, image)
        ours, theirs = (
            psnr(image, distorted),
            float(peak_signal_noise_ratio(image, distorted, data_range=255)),
        )
        assert abs(ours - theirs) < 1e-6
        ours, theirs = ssim(image, distorted), skimage_ssim(image, distorted)
        assert abs(ours - theirs) < SSIM_TOLERANCE
        assert ours < 0.999


def test_different_frames_agree_with_skimage(crops: list[np.ndarray]) -> None:
    a, b = crops[0], crops[-1]
    assert abs(ssim(a, b) - skimage_ssim(a, b)) < SSIM_TOLERANCE
    assert abs(psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-6


def test_grey_images_agree_with_skimage(crops: list[np.ndarray]) -> None:
    a = cv2.cvtColor(crops[0], cv2.COLOR_RGB2GRAY)
    b = cv2.GaussianBlur(a, (5, 5), 1.0)
    theirs = structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert abs(ssim(a, b) - theirs) < SSIM_TOLERANCE


def test_small_and_odd_sizes_agree_with_skimage(crops: list[np.ndarray]) -> None:
    a = crops[0][40:77, 10:113]  # 37 x 103, a view (not contiguous)
    b = noisy(a, 12.0)
    assert abs(ssim(a, b) - skimage_ssim(a, b)) < SSIM_TOLERANCE
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(a[:10], b[:10])


def test_more_distortion_scores_lower(crops: list[np.ndarray]) -> None:
    image = crops[0]
    scores = [(psnr(image, noisy(image, std)), ssim(image, noisy(image, std))) for std in (2.0, 6.0, 18.0)]
    assert scores[0][0] > scores[1][0] > scores[2][0]
    assert scores[0][1] > scores[1][1] > scores[2][1]


def test_identical_images(crops: list[np.ndarray]) -> None:
    image = crops[0]
    assert psnr(image, image.copy()) == float("inf")
    assert ssim(image, image.copy()) == 1.0


def test_shape_mismatch_raises(crops: list[np.ndarray]) -> None:
    a, b = crops[0], crops[1][:255]
    for metric in (psnr, ssim, frame_change):
        with pytest.raises(ValueError, match=r"\(256, 256, 3\) and \(255, 256, 3\)"):
            metric(a, b)


def test_ssim_time(crops: list[np.ndarray]) -> None:
    a, b = crops[0], crops[1]
    ssim(a, b)
    repeats = 50
    start = time.perf_counter()
    for _ in range(repeats):
        ssim(a, b)
    elapsed_ms = (time.perf_counter() - start) / repeats * 1000
    print(f"ssim 256x256x3: {elapsed_ms:.2f} ms per pair")  # informative only: the machine is shared


# ---- inter-frame consistency ----


def run_tracker(generated: list[np.ndarray], reference: list[np.ndarray] | None) -> ConsistencyTracker:
    tracker = ConsistencyTracker()
    for index, frame in enumerate(generated):
        tracker.add(frame, None if reference is None else reference[index])
    return tracker


def test_reference_against_itself_is_consistent(crops: list[np.ndarray]) -> None:
    tracker = run_tracker(crops, crops)
    assert tracker.frames == FRAMES
    assert tracker.d_gen == tracker.d_ref and len(tracker.d_gen) == FRAMES - 1
    assert tracker.ifc() == 0.0
    flicker = tracker.flicker()
    assert flicker is not None and flicker > 0  # a real talking head moves
    assert flicker == pytest.approx(np.mean([frame_change(a, b) for a, b in itertools.pairwise(crops)]))


def test_per_frame_noise_raises_ifc(crops: list[np.ndarray]) -> None:
    ifcs, flickers = [], []
    for std in (2.0, 5.0, 12.0):
        generated = [noisy(frame, std, seed=index) for index, frame in enumerate(crops)]
        tracker = run_tracker(generated, crops)
        ifc, flicker = tracker.ifc(), tracker.flicker()
        assert ifc is not None and flicker is not None
        ifcs.append(ifc)
        flickers.append(flicker)
    assert 0 < ifcs[0] < ifcs[1] < ifcs[2]
    assert flickers[0] < flickers[1] < flickers[2]


def test_static_sequence_has_no_flicker(crops: list[np.ndarray]) -> None:
    tracker = run_tracker([crops[0]] * 5, None)
    assert tracker.d_gen == [0.0] * 4 and tracker.flicker() == 0.0
    assert tracker.d_ref is None and tracker.ifc() is None
    # against a moving reference, a frozen video is inconsistent by the reference's own motion
    frozen = run_tracker([crops[0]] * FRAMES, crops)
    assert frozen.d_ref is not None and frozen.ifc() == pytest.approx(np.mean(frozen.d_ref))


def test_known_values_and_edge_cases() -> None:
    grey = [np.full((16, 16, 3), v, dtype=np.uint8) for v in (10, 13, 13, 3)]
    tracker = run_tracker(grey, [np.full((16, 16, 3), 50, dtype=np.uint8)] * 4)
    assert tracker.d_gen == [3.0, 0.0, 10.0] and tracker.d_ref == [0.0, 0.0, 0.0]
    assert tracker.ifc() == pytest.approx(13 / 3) and tracker.flicker() == pytest.approx(13 / 3)

    single = run_tracker(grey[:1], grey[:1])
    assert single.ifc() is None and single.flicker() is None and single.d_gen == []
    assert ConsistencyTracker().flicker() is None

    mixed = ConsistencyTracker()
    mixed.add(grey[0], grey[0])
    with pytest.raises(ValueError, match="no reference"):
        mixed.add(grey[1])

    gap = ConsistencyTracker()
    gap.add(grey[0])
    gap.add(grey[1])
    gap.skip()  # a frame without a face: no change measured into the next one
    gap.add(grey[3])
    gap.add(grey[2])
    assert gap.d_gen == [3.0, 10.0] and gap.frames == 4
