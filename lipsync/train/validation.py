"""Validation image strips: one row per sample, one column per image kind."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

PIXEL_MAX = 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 RGB."""
    pixels = ((images.clamp(-1, 1) + 1) / 2 * PIXEL_MAX).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def save_strip(columns: list[torch.Tensor], path: Path) -> np.ndarray:
    """Tile columns of (B, 3, H, W) images side by side, samples top to bottom; write a PNG; return it."""
    rows = np.concatenate([np.concatenate(list(to_uint8(c)), axis=0) for c in columns], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rows, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return rows
