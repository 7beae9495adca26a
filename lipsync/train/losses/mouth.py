"""Mouth boxes and crops for the mouth discriminator (lipsync/models/musetalk/README.md, Training losses).

The reference takes the lip landmarks in 256-crop coordinates, pads their x-range by `padding` px each side,
makes the box half as tall as it is wide around the lip centre, shifts it up by an extra-margin term, clips
it to the image, and resizes the GT and predicted crops to 256×256 bilinearly.

Deliberate differences:
* no extra-margin shift: our training landmarks are already in the coordinates of the exact crop the model
  sees (any stage-2 bottom margin included), so the box needs no correction;
* all 20 lip points (48–67; the reference's slice stops at 66), and a mouth opened taller than the 2:1 box
  grows the box (still 2:1) so the crop always contains every lip point plus the padding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lipsync.config import FACE_SIZE

LIP_LANDMARKS = slice(48, 68)  # outer (48–59) and inner (60–67) lip contour of the 68-point scheme
NUM_LANDMARKS = 68
BOX_ASPECT = 2  # width : height
ROUNDING_SLACK = 2  # px added each side of the padded box so integer rounding never cuts a lip point
MIN_BOX_SIZE = 2  # px: a box squeezed by clipping keeps at least this side
MOUTH_CROP_SIZE = 256  # side of the crops the mouth discriminator sees


def mouth_boxes(
    landmarks256: np.ndarray | torch.Tensor, padding: int, image_size: int = FACE_SIZE
) -> np.ndarray:
    """Integer mouth boxes (B, 4) as [x1, y1, x2, y2) (ends exclusive), from (B, 68, 2) x/y landmarks.

    Width = lip x-range + 2·padding (+ a little rounding slack), height = width / 2, centred on the lip centre
    (within a pixel) and clipped to the image (a clipped box may lose its 2:1 shape).
    """
    points = landmarks256.detach().cpu().numpy() if isinstance(landmarks256, torch.Tensor) else landmarks256
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be (B, {NUM_LANDMARKS}, 2), got {points.shape}")
    lips = points[:, LIP_LANDMARKS]
    low, high = lips.min(axis=1), lips.max(axis=1)  # (B, 2) each
    centre = (low + high) / 2
    half_width = (high[:, 0] - low[:, 0]) / 2 + padding
    half_height_needed = (high[:, 1] - low[:, 1]) / 2 + padding
    half_width = np.maximum(half_width, BOX_ASPECT * half_height_needed)
    # An even integer width with ROUNDING_SLACK px each side, so that after flooring the corner to a pixel
    # the box still covers [cx − hw, cx + hw] × [cy − hh, cy + hh] and stays centred within a pixel.
    width = 2 * (np.ceil(half_width).astype(np.int64) + ROUNDING_SLACK)
    height = width // BOX_ASPECT
    x1 = np.floor(centre[:, 0] - width / 2).astype(np.int64)
    y1 = np.floor(centre[:, 1] - height / 2).astype(np.int64)
    boxes = np.stack([x1, y1, x1 + width, y1 + height], axis=1)
    boxes = np.clip(boxes, 0, image_size)
    # Keep a usable box even for landmarks at or beyond the border.
    for start, end in ((0, 2), (1, 3)):
        boxes[:, start] = np.minimum(boxes[:, start], image_size - MIN_BOX_SIZE)
        boxes[:, end] = np.maximum(boxes[:, end], boxes[:, start] + MIN_BOX_SIZE)
    return boxes


def crop_mouths(
    images: torch.Tensor, boxes: np.ndarray | torch.Tensor, size: int = MOUTH_CROP_SIZE
) -> torch.Tensor:
    """(B, C, H, W) images, (B, 4) [x1, y1, x2, y2) boxes -> (B, C, size, size) crops, bilinearly resized.

    Differentiable with respect to `images` (a slice then an interpolation).
    """
    rows = boxes.detach().cpu().tolist() if isinstance(boxes, torch.Tensor) else np.asarray(boxes).tolist()
    if len(rows) != images.shape[0]:
        raise ValueError(f"{len(rows)} boxes for {images.shape[0]} images")
    height, width = images.shape[-2:]
    crops: list[torch.Tensor] = []
    for index, (x1, y1, x2, y2) in enumerate(rows):
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise ValueError(f"box {[x1, y1, x2, y2]} is not inside the {width}×{height} image {index}")
        crop = images[index : index + 1, :, int(y1) : int(y2), int(x1) : int(x2)]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops, dim=0)
