"""The blend mask: which pixels of the generated face replace the frame.

MuseTalk's reference code segments the face with a face parser; here the region comes from the landmarks'
face oval, grown a little (like v1.5's "jaw" mode) so an opening mouth can move the chin and jaw. See
lipsync/models/musetalk/README.md, Blend and paste back.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.config import BLEND_FEATHER_RATIO, MASK_UPPER_BOUNDARY_RATIO
from lipsync.face.crop import CropBox
from lipsync.face.landmarks import FaceLandmarks

# How far the face oval is grown, as fractions of the box: sideways so the jaw line can widen,
# downward so a dropping chin stays inside (the box bottom clips it).
MASK_GROW_SIDE_RATIO = 0.04
MASK_GROW_DOWN_RATIO = 0.08
GROW_DIRECTIONS = 16


def feather_kernel_size(box_width: int, feather_ratio: float = BLEND_FEATHER_RATIO) -> int:
    """The reference's odd Gaussian kernel size: about feather_ratio of the crop width."""
    return int(feather_ratio * box_width // 2 * 2) + 1


def lower_face_mask(
    landmarks: FaceLandmarks,
    box: CropBox,
    feather_ratio: float = BLEND_FEATHER_RATIO,
    upper_ratio: float = MASK_UPPER_BOUNDARY_RATIO,
) -> np.ndarray:
    """Float32 alpha (box.height, box.width) in [0, 1], in box coordinates.

    Positive only strictly inside the grown face oval, below the row at upper_ratio of the box height
    and inside the box; the feather is applied within that region, so everything else is exactly 0.
    """
    height, width = box.height, box.width
    oval: np.ndarray = landmarks.face_oval - np.array([box.x1, box.y1], dtype=np.float32)
    hard = np.zeros((height, width), dtype=np.uint8)
    # Grow the oval by an ellipse: fill it shifted to points around the ellipse (much faster than a
    # morphological dilation with a large kernel). One polygon per call: fillPoly fills overlaps even-odd.
    angles = np.linspace(0.0, 2.0 * np.pi, GROW_DIRECTIONS, endpoint=False)
    grow = np.stack(
        [MASK_GROW_SIDE_RATIO * width * np.cos(angles), MASK_GROW_DOWN_RATIO * height * np.sin(angles)], 1
    )
    for shift in [np.zeros(2), *grow]:
        cv2.fillPoly(hard, [np.rint(oval + shift).astype(np.int32)], (1,))
    hard[: int(upper_ratio * height) + 1] = 0
    # The box's outermost pixels are outside too, so the alpha fades out before the box edges.
    hard[-1], hard[:, 0], hard[:, -1] = 0, 0, 0

    kernel = feather_kernel_size(width, feather_ratio)
    # Eroding by the blur radius keeps the blurred alpha inside the hard region: exact zeros outside.
    inner = cv2.erode(hard, np.ones((kernel, kernel), np.uint8))
    alpha = cv2.GaussianBlur(inner.astype(np.float32), (kernel, kernel), 0, borderType=cv2.BORDER_CONSTANT)
    return np.clip(alpha, 0.0, 1.0)
