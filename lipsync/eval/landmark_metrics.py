"""Mouth landmark distance (LMD) and mouth opening on 68-point (iBUG) landmarks.

Landmarks are (N, 68, 2) float arrays of (x, y) pixels, one row per frame, NaN where no face was found
(as FaceTrack.points). Two LMD variants (see docs/evaluation-metrics.md):

- normalised (ours): mean Euclidean distance over the 20 mouth points divided by the ground-truth
  frame's inter-ocular distance (outer eye corners), the normalisation of face-alignment NME;
- pixels (vico_challenge_baseline compute_lmd.py): mean absolute per-coordinate difference in pixels;
- LipLMD (the landmark-prior paper's table): mean Euclidean distance over the same 20 lip points in pixels
  of a 128 x 128 face crop, the crop size that paper (after IPLAP) evaluates at. Here the crop is the
  reference's dub crop box, so the figure does not depend on the video's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POINTS = 68
MOUTH_POINTS = slice(48, 68)  # iBUG 48-59 outer lips, 60-67 inner lips (Chen et al. 2018 LMD; vico lip_range)
# Outer eye corners in iBUG numbering; lipsync.face.landmarks maps 36 to the eye on the image's left
# (the subject's right eye) and 45 to the eye on the image's right.
LEFT_EYE_OUTER = 36
RIGHT_EYE_OUTER = 45
# Inner-lip points facing each other across the mouth (iBUG: 61-63 upper, 67-65 lower, left to right).
INNER_LIP_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65))
LIP_LMD_CROP = 128  # px: the face-crop side LipLMD is measured in


def _check_points(points: np.ndarray) -> None:
    if points.ndim != 3 or points.shape[1:] != (POINTS, 2):
        raise ValueError(f"landmarks must be an (N, {POINTS}, 2) array, got shape {points.shape}")


def _check_pair(generated: np.ndarray, reference: np.ndarray) -> None:
    _check_points(generated)
    _check_points(reference)
    if generated.shape != reference.shape:
        raise ValueError(
            f"generated and reference landmarks must cover the same frames, "
            f"got shapes {generated.shape} and {reference.shape}"
        )


def face_size(points: np.ndarray) -> np.ndarray:
    """(N,) inter-ocular distance (outer eye corners) in pixels; NaN for frames without a face."""
    _check_points(points)
    corners = points.astype(np.float64)
    return np.linalg.norm(corners[:, RIGHT_EYE_OUTER] - corners[:, LEFT_EYE_OUTER], axis=-1)


def _per_frame(values: np.ndarray) -> np.ndarray:
    """Mean over all but the first axis; NaN (without a warning) where any value in the frame is NaN."""
    return values.reshape(len(values), -1).mean(axis=1)


def lmd_normalised(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) mean Euclidean mouth-point distance / reference face size; NaN where either has no face."""
    _check_pair(generated, reference)
    gen = generated[:, MOUTH_POINTS].astype(np.float64)
    ref = reference[:, MOUTH_POINTS].astype(np.float64)
    distance = _per_frame(np.linalg.norm(gen - ref, axis=-1))
    size = face_size(reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > 0, distance / size, np.nan)


def lmd_pixels(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) mean absolute per-coordinate mouth-point difference in pixels (vico's variant)."""
    _check_pair(generated, reference)
    gen = generated[:, MOUTH_POINTS].astype(np.float64)
    ref = reference[:, MOUTH_POINTS].astype(np.float64)
    return _per_frame(np.abs(gen - ref))


def lip_lmd(
    generated: np.ndarray, reference: np.ndarray, boxes: np.ndarray, size: int = LIP_LMD_CROP
) -> np.ndarray:
    """(N,) mean Euclidean lip-point distance in pixels of each frame's box resized to size x size.

    boxes: (N, 4) x1, y1, x2, y2 (x2, y2 exclusive, as CropBox) in frame pixels, NaN rows where there is
    no box; a frame without a box or without either face is NaN.
    """
    _check_pair(generated, reference)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(generated), 4):
        raise ValueError(f"boxes must be an ({len(generated)}, 4) array, got shape {boxes.shape}")
    origin = boxes[:, None, :2]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(boxes[:, 2:] > boxes[:, :2], size / (boxes[:, 2:] - boxes[:, :2]), np.nan)[:, None]
    gen = (generated[:, MOUTH_POINTS].astype(np.float64) - origin) * scale
    ref = (reference[:, MOUTH_POINTS].astype(np.float64) - origin) * scale
    return _per_frame(np.linalg.norm(gen - ref, axis=-1))


def mean_over_faces(values: np.ndarray, what: str) -> tuple[float, int]:
    """The mean of the finite per-frame values and how many there are; ValueError if there is none."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        raise ValueError(
            f"no frame has a face in both the generated and the reference landmarks "
            f"({len(values)} frames compared), so the {what} is undefined"
        )
    return float(finite.mean()), len(finite)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """(N,) mean gap between facing inner-lip points / face size; NaN for frames without a face."""
    _check_points(points)
    pts = points.astype(np.float64)
    upper = pts[:, [pair[0] for pair in INNER_LIP_PAIRS]]
    lower = pts[:, [pair[1] for pair in INNER_LIP_PAIRS]]
    gap = np.linalg.norm(lower - upper, axis=-1).mean(axis=1)
    size = face_size(points)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > 0, gap / size, np.nan)


@dataclass(frozen=True)
class LandmarkDistance:
    """LMD of a generated video against its ground truth, averaged over frames with both faces."""

    normalised: float  # mean Euclidean distance / inter-ocular distance
    pixels: float  # mean absolute per-coordinate difference, px (vico)
    frames: int  # frames where both faces were found


def landmark_distance(generated: np.ndarray, reference: np.ndarray) -> LandmarkDistance:
    """Both LMD variants over the frames where both videos have a face; ValueError if there is none."""
    normalised = lmd_normalised(generated, reference)
    pixels = lmd_pixels(generated, reference)
    both = np.isfinite(normalised) & np.isfinite(pixels)
    frames = int(np.count_nonzero(both))
    if frames == 0:
        raise ValueError(
            f"no frame has a face in both the generated and the reference landmarks "
            f"({len(normalised)} frames compared), so the mouth landmark distance is undefined"
        )
    return LandmarkDistance(
        normalised=float(normalised[both].mean()), pixels=float(pixels[both].mean()), frames=frames
    )
