"""Stabilized sync: the talking-face generator of "Audio-driven Talking Face Generation with Stabilized
Synchronization Loss" (Yaman et al.), with its AVSyncNet expert, silent-lip generator and losses.

The module-level functions are what every family offers `lipsync.models.families`. The facts it
implements, the choices where the paper is silent, and what is left are in README.md here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lipsync.errors import WeightsError
from lipsync.models.stabilized_sync.generator_net import FACE_SIZES
from lipsync.models.stabilized_sync.weights import (
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
    from lipsync.models.stabilized_sync.generator import StabilizedSyncGenerator

    return StabilizedSyncGenerator.from_pretrained(root, device, dtype)


def check(root: Path, version: str | None = None) -> WeightsReport:
    return check_weights(root, version)


def scaffold(root: Path, tiny: bool = False, seed: int = 0, face_size: int | None = None) -> None:
    if face_size is None:
        scaffold_weights(root, tiny=tiny, seed=seed)
    elif face_size not in FACE_SIZES:
        raise WeightsError(
            f"stabilized-sync has no {face_size} px configuration",
            f"set `face_size` to one of {', '.join(map(str, FACE_SIZES))}",
        )
    else:
        scaffold_weights(root, tiny=tiny, seed=seed, face_size=face_size)
