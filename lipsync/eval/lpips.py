"""LPIPS of face-crop pairs: the crops as lpips' im2tensor prepares them (RGB, x / 127.5 - 1), unresized."""

from __future__ import annotations

import numpy as np
import torch

from lipsync.eval.networks.lpips_net import Lpips

HALF_PIXEL_MAX = 127.5  # uint8 0..255 -> [-1, 1]


def lpips_input(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 in [-1, 1] on `device`."""
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be an (N, H, W, 3) RGB array, got shape {crops.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float()
    return tensor / HALF_PIXEL_MAX - 1.0


def lpips_distances(model: Lpips, generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) LPIPS of each generated crop against the reference crop of the same index (same size)."""
    if generated.shape != reference.shape:
        raise ValueError(f"crop pairs differ in shape: {generated.shape} and {reference.shape}")
    device = next(model.parameters()).device
    with torch.inference_mode():
        values = model(lpips_input(generated, device), lpips_input(reference, device))
    return values.double().cpu().numpy()
