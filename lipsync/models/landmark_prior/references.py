"""Which frames of a video serve as references, and which frames' landmarks surround a source frame.

References (our rule; the paper gives only the counts, IP_LAP ranks frames by lip openness): frames with a
face in farthest-point order over (head pose, mouth opening). Each frame's feature is its 37 pose
landmarks normalised to their own bounds (translation and scale drop out, head rotation and the upper
face's expression stay), scaled by 1/√37 so that distances are the RMS point displacement, plus the
mouth opening: the inner-lip gap (points 62 and 66) over the height of the same bounds. The order starts at
the frame nearest the mean feature, then repeatedly takes the frame farthest from all taken so far. Every
prefix of that order is spread out, so the image references, the lip references and the landmark
references are its first N, 5 and 15 frames (fewer when the video has fewer frames with a face).

Sequence neighbours (our rule): the transformer and the sketches read frames t − 2 … t + 2. Output frames
map to source frames through a cycle the generator does not see, so it reads the source frames around the
frame's own source s, s − 2 … s + 2, reflected at the video's ends as the forward-backward cycle does (…,
N − 2, N − 1, N − 1, N − 2, …); a neighbour without a face is replaced by s itself. While the cycle runs
forward these are the output frames' own sources.
"""

from __future__ import annotations

import math

import numpy as np

from lipsync.models.landmark_prior.landmark_sets import POSE_POINTS
from lipsync.models.landmark_prior.sketch import CONTEXT_FRAMES

UPPER_INNER_LIP = 62
LOWER_INNER_LIP = 66
MIN_EXTENT = 1e-6  # bounds thinner than this (degenerate landmarks) count as this


def reference_features(points: np.ndarray) -> np.ndarray:
    """(F, 75) float64: per frame, its pose landmarks normalised to their bounds / √37, then the mouth
    opening. `points` (F, 68, 2) in any pixel coordinates."""
    points = np.asarray(points, dtype=np.float64)
    pose = points[:, POSE_POINTS]
    low = pose.min(axis=1, keepdims=True)
    extent = np.maximum(pose.max(axis=1, keepdims=True) - low, MIN_EXTENT)
    normalised = (pose - low) / extent / math.sqrt(len(POSE_POINTS))
    opening = (points[:, LOWER_INNER_LIP, 1] - points[:, UPPER_INNER_LIP, 1]) / extent[:, 0, 1]
    return np.concatenate([normalised.reshape(len(points), -1), opening[:, None]], axis=1)


def spread_frames(has_face: np.ndarray, points: np.ndarray, count: int) -> list[int]:
    """Up to `count` distinct frames with a face, in farthest-point order over `reference_features`.
    `has_face` (F,) bool and `points` (F, 68, 2) are the whole face track."""
    candidates = np.flatnonzero(np.asarray(has_face, dtype=bool))
    if count < 1 or len(candidates) == 0:
        return []
    features = reference_features(points[candidates])
    first = int(np.argmin(np.linalg.norm(features - features.mean(axis=0), axis=1)))
    order = [first]
    distance = np.linalg.norm(features - features[first], axis=1)
    distance[first] = -np.inf
    while len(order) < min(count, len(candidates)):
        farthest = int(np.argmax(distance))
        order.append(farthest)
        distance = np.minimum(distance, np.linalg.norm(features - features[farthest], axis=1))
        distance[order] = -np.inf
    return [int(candidates[i]) for i in order]


def neighbour_frames(source: int, has_face: np.ndarray) -> list[int]:
    """The source frames s − 2 … s + 2 around `source`, reflected at the ends; s where one has no face."""
    count = len(has_face)
    frames = []
    for step in range(-CONTEXT_FRAMES, CONTEXT_FRAMES + 1):
        frame = source + step
        frame = -1 - frame if frame < 0 else frame
        frame = 2 * count - 1 - frame if frame >= count else frame
        frame = min(max(frame, 0), count - 1)
        frames.append(frame if has_face[frame] else source)
    return frames
