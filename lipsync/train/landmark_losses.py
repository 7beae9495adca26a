"""The landmark transformer's training loss, IP_LAP's (`train_landmarks_generator.py`): L1 + velocity, 1:1.

* L1: the mean absolute error over every predicted coordinate (T frames × 2 × 31 content points), in units
  of the crop (landmarks are normalised to it);
* velocity: each sample's frame-to-frame differences of its flattened (2 × 31) landmark vectors, predicted
  against real, their Euclidean distance (`pairwise_distance`, as IP_LAP) averaged over the T − 1 steps and
  the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

L1_WEIGHT = 1.0  # IP_LAP
VELOCITY_WEIGHT = 1.0  # IP_LAP


def landmark_l1(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean absolute coordinate error of (B, T, 2, P) landmarks."""
    return F.l1_loss(predicted, target)


def velocity_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean distance between predicted and real frame-to-frame motion of (B, T, 2, P) landmarks."""
    moved = predicted.flatten(2).diff(dim=1)
    real = target.flatten(2).diff(dim=1)
    return F.pairwise_distance(moved.flatten(0, 1), real.flatten(0, 1)).mean()


@dataclass(frozen=True)
class LandmarkLoss:
    """The weighted sum and its terms."""

    total: Tensor
    l1: Tensor
    velocity: Tensor

    def scalars(self) -> dict[str, float]:
        return {
            "loss/total": float(self.total.detach()),
            "loss/l1": float(self.l1.detach()),
            "loss/velocity": float(self.velocity.detach()),
        }


def landmark_loss(
    predicted: Tensor, target: Tensor, l1_weight: float = L1_WEIGHT, velocity_weight: float = VELOCITY_WEIGHT
) -> LandmarkLoss:
    l1, velocity = landmark_l1(predicted, target), velocity_loss(predicted, target)
    return LandmarkLoss(l1_weight * l1 + velocity_weight * velocity, l1, velocity)
