"""Landmark prior: the talking-face generator of "Talking Face Generation with Lip and Identity Priors"
(Wu et al.), built on IP_LAP's audio-to-landmark transformer.

The module-level functions are what every family offers `lipsync.models.families`. The facts it
implements, the choices where the paper is silent, and what is left are in README.md here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lipsync.models.landmark_prior.config import FACE_SIZE
from lipsync.models.landmark_prior.weights import (
    DEFAULT_VERSION,
    FAMILY,
    VERSIONS,
    check_weights,
    recognise,
    scaffold_weights,
)

if TYPE_CHECKING:
    import torch

    from lipsync.models.generator import Generator
    from lipsync.models.weights import WeightsReport

__all__ = ["DEFAULT_VERSION", "FAMILY", "VERSIONS", "check", "load", "recognise", "scaffold"]


def load(root: Path, version: str, device: torch.device, dtype: torch.dtype) -> Generator:
    from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator

    return LandmarkPriorGenerator.from_pretrained(root, device, dtype)


def check(root: Path, version: str | None = None) -> WeightsReport:
    return check_weights(root, version)


def scaffold(root: Path, tiny: bool = False, seed: int = 0, face_size: int | None = None) -> None:
    scaffold_weights(root, tiny=tiny, seed=seed, face_size=FACE_SIZE if face_size is None else face_size)
