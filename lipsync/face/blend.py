"""Paste a generated face back into its frame (lipsync/models/musetalk/README.md, Blend and paste back)."""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.face.crop import CropBox


def paste_face(
    frame: np.ndarray, face: np.ndarray, box: CropBox, mask: np.ndarray, strength: float = 1.0
) -> np.ndarray:
    """A new frame with `face` resized into `box` and blended with alpha mask * strength.

    Pixels where that alpha is 0 are bit-identical to `frame`; `frame` itself is not modified.
    """
    if mask.shape != (box.height, box.width):
        raise ValueError(f"mask shape {mask.shape} does not match the box ({box.height}, {box.width})")
    region = frame[box.y1 : box.y2, box.x1 : box.x2]
    if region.shape[:2] != mask.shape:
        raise ValueError(f"crop box {box} does not fit in a frame of shape {frame.shape}")
    resized = cv2.resize(face, (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    alpha = np.clip(mask.astype(np.float32) * np.float32(strength), 0.0, 1.0)[..., None]
    original = region.astype(np.float32)
    blended = original + alpha * (resized.astype(np.float32) - original)
    out = frame.copy()
    out[box.y1 : box.y2, box.x1 : box.x2] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
