"""Landmark sketches: the image form in which landmarks enter the alignment and rendering models.

IP_LAP's drawing: a black canvas, every edge of the landmark graph as a 1 px line of colour (224, 224, 224)
(MediaPipe's default drawing colour), no dots; a point at normalised (x, y) lands on pixel
(floor(x·size), floor(y·size)); points outside [0, 1] are dropped together with their edges; the image is
divided by 255. Our graph is the 68-point one of `landmark_sets` (63 edges; 20 of them the lips).

IP_LAP draws on a canvas whose short side is 128 with the face box's aspect, then resizes it to 128 × 128
(bilinear). Our landmarks are already normalised to the square face crop, so we draw at the face size
directly (our choice: no resampling blur; thin lines stay one pixel wide at 128 and 256 px).

The paper (§3.2) feeds 2k + 1 target sketches around frame t (k = 2 as in IP_LAP): `sketch_stack` stacks
the five frames' sketches frame-major on channels, (15, S, S).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lipsync.models.landmark_prior.landmark_sets import COORDINATES, FACE_EDGES, LANDMARK_COUNT

SKETCH_SIZE = 128  # px, the paper's and IP_LAP's face size
SKETCH_COLOUR = 224  # each of the three channels (MediaPipe's DrawingSpec default, IP_LAP)
SKETCH_THICKNESS = 1  # px (IP_LAP)
SKETCH_CHANNELS = 3
CONTEXT_FRAMES = 2  # k: frames t − k … t + k are sketched (IP_LAP k = 2)
STACK_FRAMES = 2 * CONTEXT_FRAMES + 1  # 2k + 1 = 5
PIXEL_MAX = 255.0


def draw_sketch(
    landmarks: np.ndarray,
    size: int = SKETCH_SIZE,
    edges: Sequence[tuple[int, int]] = FACE_EDGES,
) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]: the sketch of one (2, 68) landmark set normalised to [0, 1].

    Grey lines (224/255 in every channel, so RGB and BGR read the same) on black. An edge with an end
    outside [0, 1] (or not finite) is not drawn.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (COORDINATES, LANDMARK_COUNT):
        raise ValueError(f"expected ({COORDINATES}, {LANDMARK_COUNT}) landmarks, got {points.shape}")
    canvas = np.zeros((size, size), dtype=np.uint8)
    inside = np.isfinite(points).all(axis=0) & (points >= 0).all(axis=0) & (points <= 1).all(axis=0)
    pixels = np.floor(np.nan_to_num(points) * size).astype(np.int64)
    for start, end in edges:
        if inside[start] and inside[end]:
            a = (int(pixels[0, start]), int(pixels[1, start]))
            b = (int(pixels[0, end]), int(pixels[1, end]))
            cv2.line(canvas, a, b, (SKETCH_COLOUR,), thickness=SKETCH_THICKNESS)
    grey = canvas.astype(np.float32) / PIXEL_MAX
    return np.repeat(grey[None], SKETCH_CHANNELS, axis=0)


def sketch_stack(
    frames: Sequence[np.ndarray],
    size: int = SKETCH_SIZE,
    edges: Sequence[tuple[int, int]] = FACE_EDGES,
) -> np.ndarray:
    """(15, size, size) float32: the sketches of the 2k + 1 = 5 landmark sets around frame t, frame-major
    (channels 0-2 are frame t − 2, 6-8 frame t, 12-14 frame t + 2)."""
    if len(frames) != STACK_FRAMES:
        raise ValueError(f"a sketch stack takes {STACK_FRAMES} frames (t − {CONTEXT_FRAMES} … t + 2)")
    return np.concatenate([draw_sketch(frame, size, edges) for frame in frames], axis=0)
