"""Full-reference image metrics (PSNR, SSIM) and inter-frame consistency (IFC) on face crops.

All images are arrays of pixel values on the 0..255 scale (uint8 face crops, H x W x 3 RGB).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# SSIM as defined by Wang et al. 2004 ("Image quality assessment: from error visibility to structural
# similarity"), with the same settings as skimage's structural_similarity(gaussian_weights=True,
# sigma=1.5, use_sample_covariance=False).
SSIM_SIGMA = 1.5  # Gaussian window standard deviation, px (Wang et al. 2004)
SSIM_WINDOW = 11  # window taps (Wang et al. 2004); skimage: 2 * int(3.5 * sigma + 0.5) + 1
SSIM_K1 = 0.01  # luminance stabiliser constant (Wang et al. 2004)
SSIM_K2 = 0.03  # contrast/structure stabiliser constant (Wang et al. 2004)
PIXEL_RANGE = 255.0  # data range of 8-bit pixel values (the L of Wang et al., skimage's data_range)

SSIM_BORDER = SSIM_WINDOW // 2  # px at each edge where the window does not fit; left out of the mean
SSIM_C1 = (SSIM_K1 * PIXEL_RANGE) ** 2
SSIM_C2 = (SSIM_K2 * PIXEL_RANGE) ** 2


def _gaussian_taps() -> np.ndarray:
    """The normalised 1-D Gaussian window (as scipy.ndimage's, which skimage uses), float64 column."""
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - SSIM_BORDER
    taps = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (taps / taps.sum()).reshape(-1, 1)


SSIM_TAPS = _gaussian_taps()


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be H x W or H x W x C arrays, got shape {a.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; inf for identical images."""
    _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PIXEL_RANGE**2 / mse)


def _blur(image: np.ndarray, out: np.ndarray) -> None:
    """Gaussian-weighted local means of a float64 plane into `out`; values within SSIM_BORDER of an edge
    depend on the border rule and are not used."""
    cv2.sepFilter2D(image, cv2.CV_64F, SSIM_TAPS, SSIM_TAPS, dst=out, borderType=cv2.BORDER_REFLECT_101)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004) over the valid region and the channels.

    Matches skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False). H x W images count as one channel.
    """
    _check_pair(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} px on each side, got shape {a.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    height, width, channels = a.shape
    # One float64 work area for all channels, every step in place: allocating fresh maps per call
    # costs more (page faults) than the arithmetic. var_x + var_y is taken as E[x^2 + y^2] - mu_x^2 -
    # mu_y^2, which needs four filtered maps per channel instead of five.
    x, y, work, mu_x, mu_y, mean_sq = np.empty((6, height, width), dtype=np.float64)
    inner = (slice(SSIM_BORDER, height - SSIM_BORDER), slice(SSIM_BORDER, width - SSIM_BORDER))
    total = 0.0
    for channel in range(channels):
        np.copyto(x, a[..., channel])
        np.copyto(y, b[..., channel])
        _blur(x, mu_x)
        _blur(y, mu_y)
        np.multiply(x, x, out=work)
        work += np.multiply(y, y, out=mean_sq)
        _blur(work, mean_sq)  # E[x^2 + y^2]
        np.multiply(x, y, out=work)
        _blur(work, x)  # x now holds E[xy]
        np.multiply(mu_x, mu_y, out=work)
        x -= work  # covariance (population)
        x *= 2.0
        x += SSIM_C2  # contrast-structure numerator
        work *= 2.0
        work += SSIM_C1  # luminance numerator
        work *= x
        np.multiply(mu_x, mu_x, out=mu_x)
        np.multiply(mu_y, mu_y, out=mu_y)
        mu_x += mu_y  # mu_x^2 + mu_y^2
        mean_sq -= mu_x
        mean_sq += SSIM_C2  # var_x + var_y + C2
        mu_x += SSIM_C1
        mu_x *= mean_sq
        work /= mu_x  # the SSIM map
        total += float(work[inner].mean(dtype=np.float64))
    return total / channels


def frame_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute pixel difference between two consecutive frames (0..255)."""
    _check_pair(previous, current)
    return float(np.mean(np.abs(current.astype(np.float64) - previous.astype(np.float64))))


class ConsistencyTracker:
    """Streaming inter-frame consistency (IFC, from the stabilized synchronization loss paper).

    Feed the face crops of each frame in order with add(); only the previous crops are kept. For every
    frame t after the first, d_gen(t) = frame_change(g[t-1], g[t]) and, with a reference (ground-truth)
    video, d_ref(t) likewise. IFC = mean_t |d_gen(t) - d_ref(t)| (lower is better); flicker = mean_t
    d_gen(t), which needs no reference.
    """

    def __init__(self) -> None:
        self._previous_generated: np.ndarray | None = None
        self._previous_reference: np.ndarray | None = None
        self._has_reference: bool | None = None  # fixed by the first add()
        self._d_gen: list[float] = []
        self._d_ref: list[float] = []
        self._frames = 0

    @property
    def frames(self) -> int:
        """Frames added so far (skipped frames not counted)."""
        return self._frames

    def add(self, generated: np.ndarray, reference: np.ndarray | None = None) -> None:
        """The next frame's generated crop and its ground-truth crop (None when there is no reference).

        Either every frame has a reference or none does; mixing them raises ValueError.
        """
        has_reference = reference is not None
        if self._has_reference is None:
            self._has_reference = has_reference
        elif has_reference != self._has_reference:
            given = "a reference" if has_reference else "no reference"
            raise ValueError(f"frame {self._frames} has {given}, unlike the frames before it")
        if reference is not None and reference.shape != generated.shape:
            raise ValueError(
                f"generated and reference crops must have the same shape, "
                f"got {generated.shape} and {reference.shape}"
            )
        if self._previous_generated is not None:
            self._d_gen.append(frame_change(self._previous_generated, generated))
            if reference is not None and self._previous_reference is not None:
                self._d_ref.append(frame_change(self._previous_reference, reference))
        self._previous_generated = generated.copy()
        self._previous_reference = None if reference is None else reference.copy()
        self._frames += 1

    def skip(self) -> None:
        """A frame without crops (e.g. no face found): the change into the next frame is not measured."""
        self._previous_generated = None
        self._previous_reference = None

    @property
    def d_gen(self) -> list[float]:
        """Per-frame mean absolute change of the generated crops (one per measured frame pair)."""
        return list(self._d_gen)

    @property
    def d_ref(self) -> list[float] | None:
        """Per-frame mean absolute change of the reference crops; None without a reference."""
        return list(self._d_ref) if self._has_reference else None

    def ifc(self) -> float | None:
        """Mean |d_gen - d_ref|; None without a reference or before two consecutive frames."""
        if not self._has_reference or not self._d_gen:
            return None
        return float(np.mean(np.abs(np.subtract(self._d_gen, self._d_ref))))

    def flicker(self) -> float | None:
        """Mean d_gen (reference-free); None before two consecutive frames."""
        if not self._d_gen:
            return None
        return float(np.mean(self._d_gen))
