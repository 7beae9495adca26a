"""Face crops for syncnet_v2 in the manner of syncnet_python's run_pipeline (224 x 224, BGR).

syncnet_python boxes faces with S3FD; we box them with the 68 landmarks' bounds (no S3FD here), then do as
it does: box centre and half-size median-filtered over 13 frames, the crop reaching `CROP_SCALE` of the
half-size further out (more below the centre than above), the frame padded with grey 110 where the crop
leaves it, resized to 224. Frames without a face take the box interpolated from their neighbours.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.signal import medfilt

from lipsync.eval.networks.syncnet_v2 import SYNCNET_V2_IMAGE_SIZE

BOX_MEDIAN_KERNEL = 13  # frames (syncnet_python's track smoothing)
CROP_SCALE = 0.40  # syncnet_python's crop_scale
PAD_VALUE = 110  # grey around the frame (syncnet_python)


def sync_boxes(points: np.ndarray) -> np.ndarray | None:
    """(N, 68, 2) landmarks (NaN = no face) -> (N, 3) float (centre x, centre y, half-size), smoothed;
    None when no frame has a face."""
    present = ~np.isnan(points[:, 0, 0])
    if not present.any():
        return None
    lo, hi = np.nanmin(points, axis=1), np.nanmax(points, axis=1)  # NaN rows stay NaN
    raw = np.stack(
        [(lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2, np.max(hi - lo, axis=1) / 2], axis=1
    )
    index = np.arange(len(points))
    filled = np.stack([np.interp(index, index[present], raw[present, c]) for c in range(3)], axis=1)
    kernel = min(BOX_MEDIAN_KERNEL, len(points) - (1 - len(points) % 2))  # medfilt wants an odd kernel
    if kernel >= 3:
        filled = np.stack([medfilt(filled[:, c], kernel) for c in range(3)], axis=1)
    return filled


def sync_crop(frame_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(224, 224, 3) uint8 BGR crop of one frame for syncnet_v2."""
    centre_x, centre_y, half = (float(v) for v in box)
    pad = int(half * (1 + 2 * CROP_SCALE))
    bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    padded = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    y, x = centre_y + pad, centre_x + pad
    face = padded[
        int(y - half) : int(y + half * (1 + 2 * CROP_SCALE)),
        int(x - half * (1 + CROP_SCALE)) : int(x + half * (1 + CROP_SCALE)),
    ]
    size = SYNCNET_V2_IMAGE_SIZE
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)
