"""Reference-frame sampling and the face crop with stage 2's dynamic bottom margin.

Selective Information Sampling (MuseTalk paper §3.2; lipsync/models/musetalk/README.md, Reference
sampling (SIS)): the reference image of a target frame is a frame of the same clip whose head pose is close
to the target's (jaw contour) while its mouth is clearly different (inner lips), so the UNet copies texture
from the reference but must take the mouth from audio.

Landmarks are compared in each frame's own 256x256 face crop, so head translation and scale do not count.
Every method returns a "legal" frame: inside the clip and at least `min_distance` frames from the target.
Differences from the reference, on purpose: candidates closer than `min_distance` are dropped before the
draw (the reference draws, then replaces a too-close choice by a uniform one, so its choice may leave the
set it was drawn from), and the uniform window is intersected with the clip before drawing (the reference
clamps afterwards, which piles the out-of-clip mass onto the first and last frames and can undo the
distance rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from lipsync.config import FACE_SIZE
from lipsync.errors import LipsyncError
from lipsync.face.landmarks import INNER_LIPS, JAW
from lipsync.train.config import MarginConfig, SamplingConfig, SamplingMethod

# The reference compares slices one point short of the iBUG groups (quirk kept: it defines the sets).
POSE_POINTS = slice(JAW.start, JAW.stop - 1)  # [0:16]: 16 of the 17 jaw-contour points
MOUTH_POINTS = slice(INNER_LIPS.start, INNER_LIPS.stop - 1)  # [60:67]: 7 of the 8 inner-lip points
CANDIDATE_METHODS: tuple[SamplingMethod, ...] = ("pose_aligned", "mouth_dissimilar", "sis")


class SamplingError(LipsyncError):
    """No legal reference frame exists (a clip too short for the sampling settings)."""


@dataclass(frozen=True)
class FaceTransform:
    """Affine map from stored-crop pixels to the size x size face crop: p' = (p - origin) * scale."""

    origin: tuple[float, float]  # x1, y1 of the face box
    scale: tuple[float, float]  # size / box width, size / (box height + margin rows)
    size: int

    def matrix(self) -> np.ndarray:
        """The 2x3 matrix for cv2.warpAffine."""
        sx, sy = self.scale
        x0, y0 = self.origin
        return np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], dtype=np.float64)

    def points(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2) points into the face crop (float32)."""
        origin = np.asarray(self.origin, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        return ((np.asarray(points, dtype=np.float32) - origin) * scale).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Landmarks in the face crop


def landmarks_in_face(landmarks: np.ndarray, face_boxes: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """(N, 68, 2) points of each frame in its own size x size face crop (box shifted to 0, rescaled)."""
    boxes = np.asarray(face_boxes, dtype=np.float32)
    origin = boxes[:, None, :2]
    extent = np.maximum(boxes[:, None, 2:] - boxes[:, None, :2], np.float32(1e-6))
    return ((np.asarray(landmarks, dtype=np.float32) - origin) * (size / extent)).astype(np.float32)


def point_distances(landmarks256: np.ndarray, targets: np.ndarray | int, points: slice) -> np.ndarray:
    """(len(targets), N): mean per-point Euclidean distance between each target frame and every frame."""
    group = np.asarray(landmarks256[:, points], dtype=np.float32)  # (N, P, 2)
    chosen = group[np.atleast_1d(targets)]  # (F, P, 2)
    diff = chosen[:, None] - group[None]  # (F, N, P, 2)
    return np.sqrt((diff * diff).sum(axis=-1)).mean(axis=-1)


def pose_distances(landmarks256: np.ndarray, target: int) -> np.ndarray:
    """(N,) jaw-contour distance of every frame to the target (small = similar head pose)."""
    return point_distances(landmarks256, target, POSE_POINTS)[0]


def mouth_distances(landmarks256: np.ndarray, target: int) -> np.ndarray:
    """(N,) inner-lip distance of every frame to the target (large = different mouth)."""
    return point_distances(landmarks256, target, MOUTH_POINTS)[0]


def top_k_count(frame_count: int, top_k_ratio: float) -> int:
    """Size of each candidate set: int(ratio * N) as in the reference, at most N - 1 (self is excluded)."""
    return max(0, min(int(top_k_ratio * frame_count), frame_count - 1))


def _smallest(distances: np.ndarray, target: int, k: int) -> np.ndarray:
    """Sorted indices of the k smallest distances, the target itself excluded (stable on ties)."""
    masked = np.array(distances, dtype=np.float64)
    masked[target] = np.inf
    return np.sort(np.argsort(masked, kind="stable")[:k])


def pose_aligned_set(landmarks256: np.ndarray, target: int, top_k_ratio: float) -> np.ndarray:
    """The top_k frames with the most similar jaw contour (paper: the Pose-Aligned Image Set)."""
    k = top_k_count(len(landmarks256), top_k_ratio)
    return _smallest(pose_distances(landmarks256, target), target, k)


def mouth_dissimilar_set(landmarks256: np.ndarray, target: int, top_k_ratio: float) -> np.ndarray:
    """The top_k frames with the most different inner lips (paper: the Lip Motion Dissimilarity Set)."""
    k = top_k_count(len(landmarks256), top_k_ratio)
    return _smallest(-mouth_distances(landmarks256, target), target, k)


def sis_set(landmarks256: np.ndarray, target: int, top_k_ratio: float) -> np.ndarray:
    """Selective Information Sampling: pose-aligned AND mouth-dissimilar (may be empty)."""
    return np.intersect1d(
        pose_aligned_set(landmarks256, target, top_k_ratio),
        mouth_dissimilar_set(landmarks256, target, top_k_ratio),
    )


def candidates(
    landmarks256: np.ndarray, target: int, method: SamplingMethod, top_k_ratio: float
) -> np.ndarray:
    """The candidate set of a method, before the distance rule; "random" has none (all frames)."""
    if method == "pose_aligned":
        return pose_aligned_set(landmarks256, target, top_k_ratio)
    if method == "mouth_dissimilar":
        return mouth_dissimilar_set(landmarks256, target, top_k_ratio)
    if method == "sis":
        return sis_set(landmarks256, target, top_k_ratio)
    return np.arange(len(landmarks256))


# --------------------------------------------------------------------------------------------------
# Drawing a reference


def fallback_radius(config: SamplingConfig, clip_frames: int) -> int:
    """R: the uniform window is [target - R, target + R] (reference: 5 x the frames per sample)."""
    return config.fallback_radius * clip_frames


def fallback_window(target: int, frame_count: int, config: SamplingConfig, clip_frames: int) -> np.ndarray:
    """Legal frames of the uniform window: in the clip, within R of the target, at least min_distance away."""
    radius = fallback_radius(config, clip_frames)
    window = np.arange(max(0, target - radius), min(frame_count - 1, target + radius) + 1)
    return window[np.abs(window - target) >= config.min_distance]


def min_legal_frames(config: SamplingConfig, clip_frames: int) -> int:
    """The fewest frames for which every target of a clip has a legal uniform fallback."""
    if fallback_radius(config, clip_frames) < config.min_distance:
        raise SamplingError(
            f"sampling.fallback_radius x clip_frames = {fallback_radius(config, clip_frames)} is below "
            f"sampling.min_distance = {config.min_distance}: no reference can ever be drawn",
            "raise sampling.fallback_radius or lower sampling.min_distance",
        )
    return max(1, 2 * config.min_distance)


def sample_reference(
    landmarks256: np.ndarray,
    target: int,
    config: SamplingConfig,
    clip_frames: int,
    rng: np.random.Generator,
) -> int:
    """A reference frame for `target`, chosen by config.method among legal frames.

    The candidates of the method that are at least min_distance from the target are drawn from uniformly;
    when there are none ("sis" with an empty intersection, or only too-close candidates), the draw is
    uniform in the legal part of [target - R, target + R]. Raises SamplingError if that is empty too.
    """
    frame_count = len(landmarks256)
    if not 0 <= target < frame_count:
        raise IndexError(f"target frame {target} is outside the clip's {frame_count} frames")
    if config.method in CANDIDATE_METHODS:
        pool = candidates(landmarks256, target, config.method, config.top_k_ratio)
        pool = pool[np.abs(pool - target) >= config.min_distance]
        if len(pool):
            return int(rng.choice(pool))
    window = fallback_window(target, frame_count, config, clip_frames)
    if not len(window):
        raise SamplingError(
            f"no reference frame for frame {target} of a {frame_count}-frame clip: none is within "
            f"{fallback_radius(config, clip_frames)} frames and at least {config.min_distance} away",
            f"use clips of at least {2 * config.min_distance} frames, or lower sampling.min_distance",
        )
    return int(rng.choice(window))


def sample_references(
    landmarks256: np.ndarray,
    targets: np.ndarray,
    config: SamplingConfig,
    clip_frames: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(F,) int64: one reference per target frame, each drawn independently."""
    return np.array(
        [sample_reference(landmarks256, int(t), config, clip_frames, rng) for t in targets], dtype=np.int64
    )


# --------------------------------------------------------------------------------------------------
# Dynamic margin crop


def draw_margin(config: MarginConfig, rng: np.random.Generator) -> float:
    """Stage 2's bottom margin in 256-crop pixels: Normal(mean, std) clipped to [0, max]; 0 if disabled."""
    if not config.enabled:
        return 0.0
    return float(np.clip(rng.normal(config.mean, config.std), 0.0, config.max))


def face_transform(face_box: np.ndarray, margin: float = 0.0, size: int = FACE_SIZE) -> FaceTransform:
    """The map of the face box, grown by `margin` rows (in size-crop pixels) below y2, onto size x size."""
    x1, y1, x2, y2 = (float(v) for v in face_box)
    width, height = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    extra = margin * height / size  # size-crop pixels -> stored-crop pixels
    return FaceTransform(origin=(x1, y1), scale=(size / width, size / (height + extra)), size=size)


PIXEL_SCALE = 127.5  # uint8 [0, 255] -> [-1, 1]


def crops_to_images(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 crops -> (N, 3, S, S) float32 in [-1, 1], the range the VAE and SyncNet take."""
    planar = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))  # transposing bytes is the cheap side
    return torch.from_numpy(planar.astype(np.float32)).div_(PIXEL_SCALE).sub_(1.0)


def crop_face(
    frame: np.ndarray, face_box: np.ndarray, margin: float = 0.0, size: int = FACE_SIZE
) -> np.ndarray:
    """(size, size, 3) uint8: the face box plus `margin` extra rows under the chin, resized (bilinear).

    Landmarks mapped with `face_transform(face_box, margin, size).points` land on the same pixels; with
    margin 0 that is exactly `landmarks_in_face`.
    """
    transform = face_transform(face_box, margin, size)
    return cv2.warpAffine(
        np.ascontiguousarray(frame),
        transform.matrix(),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
