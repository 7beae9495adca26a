"""The MuseTalk crop box and the 256x256 face crop.

See lipsync/models/musetalk/README.md, sections Crop box and Face crop and masking.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.config import FACE_SIZE
from lipsync.face.landmarks import CROP_CENTRE


@dataclass(frozen=True)
class CropBox:
    """A box in frame pixels; x2 and y2 are exclusive (frame[y1:y2, x1:x2])."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


def crop_box_from_landmarks(
    points: np.ndarray,
    frame_width: int,
    frame_height: int,
    bbox_shift: int = 0,
    extra_margin: int = 0,
) -> CropBox | None:
    """The reference crop box: vertically centred on point 29 (shifted by bbox_shift), from the chin up
    by the same distance, as wide as the landmarks; extra_margin px added below. None if degenerate."""
    pts = np.rint(np.asarray(points, dtype=np.float64)).astype(np.int64)
    centre_y = int(pts[CROP_CENTRE, 1]) + bbox_shift
    bottom = int(pts[:, 1].max())
    half = bottom - centre_y
    x1 = max(0, int(pts[:, 0].min()))
    x2 = min(frame_width, int(pts[:, 0].max()))
    y1 = max(0, centre_y - half)
    y2 = min(bottom + extra_margin, frame_height)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return CropBox(x1, y1, x2, y2)


def crop_face(frame: np.ndarray, box: CropBox, size: int = FACE_SIZE) -> np.ndarray:
    """The box's pixels resized to (size, size, 3) uint8; the aspect ratio is not kept (as the reference)."""
    region = frame[box.y1 : box.y2, box.x1 : box.x2]
    if region.shape[0] != box.height or region.shape[1] != box.width:
        raise ValueError(f"crop box {box} does not fit in a frame of shape {frame.shape}")
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_LANCZOS4)
