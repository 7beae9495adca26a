"""CSIM: identity similarity of faces by ArcFace (insightface arcface_torch) embeddings.

Crops are prepared as arcface_torch's evaluation does: resized to 112 x 112, RGB, (x / 255 - 0.5) / 0.5.
The score compares each generated frame with its own source frame (the cosine of matched rows), not the
mean over all pairs of frames that some scripts (e.g. vico's compute_csim.py) report.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from lipsync.eval.networks.arcface import ARCFACE_EMBED_DIM, ARCFACE_INPUT_SIZE, IResNet

PIXEL_MAX = 255.0
NORM_MEAN = 0.5
NORM_STD = 0.5
DEFAULT_BATCH_SIZE = 32
NORM_FLOOR = 1e-12  # a zero vector stays zero instead of dividing by zero


def _resized(crop: np.ndarray) -> np.ndarray:
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB crops, got {crop.dtype} {crop.shape}")
    height, width = crop.shape[:2]
    size = ARCFACE_INPUT_SIZE
    if (height, width) == (size, size):
        return crop
    shrinking = height >= size and width >= size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def arcface_input(crops_rgb_uint8: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) RGB uint8 crops (or a list of crops of any sizes) -> (N, 3, 112, 112) float in [-1, 1]."""
    resized = [_resized(np.asarray(crop)) for crop in crops_rgb_uint8]
    if not resized:
        return torch.zeros((0, 3, ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE))
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()
    return (x / PIXEL_MAX - NORM_MEAN) / NORM_STD


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    result: np.ndarray = x / np.maximum(norms, NORM_FLOOR)
    return result


def arcface_embeddings(
    model: IResNet, crops_rgb_uint8: np.ndarray | Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """(N, 512) float64 L2-normalised ArcFace embeddings of RGB uint8 face crops."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(crops_rgb_uint8), batch_size):
            x = arcface_input(crops_rgb_uint8[start : start + batch_size]).to(device)
            chunks.append(model(x).double().cpu().numpy())
    if not chunks:
        return np.zeros((0, ARCFACE_EMBED_DIM), dtype=np.float64)
    return _normalised(np.concatenate(chunks))


def matched_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of row i of `a` with row i of `b` (frame-matched embeddings)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    cosine: np.ndarray = np.sum(_normalised(a) * _normalised(b), axis=1)
    return cosine
