"""MuseTalk: VAE latents of the masked face and a reference, whisper-tiny tokens by cross-attention, one
UNet pass, VAE decode. The facts it implements, and where it deliberately differs, are in README.md here.

The module-level functions are what every family offers `lipsync.models.families`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lipsync.config import FACE_SIZE
from lipsync.errors import WeightsError
from lipsync.models.musetalk.weights import (
    ALL_VERSIONS,
    FAMILY,
    check_weights,
    recognise,
    scaffold_weights,
)
from lipsync.models.musetalk.weights import hub_files as _hub_files

if TYPE_CHECKING:
    import torch

    from lipsync.models.generator import Generator
    from lipsync.models.hub import HubFile
    from lipsync.models.weights import WeightsReport

VERSIONS: tuple[str, ...] = ALL_VERSIONS
DEFAULT_VERSION = "v15"

__all__ = ["DEFAULT_VERSION", "FAMILY", "VERSIONS", "check", "hub_files", "load", "recognise", "scaffold"]


def load(root: Path, version: str, device: torch.device, dtype: torch.dtype) -> Generator:
    from lipsync.models.musetalk.generator import MuseTalkGenerator

    return MuseTalkGenerator.from_pretrained(root, version, device, dtype)  # type: ignore[arg-type]


def check(root: Path, version: str | None = None) -> WeightsReport:
    return check_weights(root, version)  # type: ignore[arg-type]


def scaffold(root: Path, tiny: bool = False, seed: int = 0, face_size: int | None = None) -> None:
    if face_size not in (None, FACE_SIZE):
        raise WeightsError(
            f"MuseTalk works on {FACE_SIZE} px faces only, not {face_size}", "leave out `face_size`"
        )
    scaffold_weights(root, tiny=tiny, seed=seed)


def hub_files(version: str) -> list[HubFile]:
    """The files of `version` on the Hugging Face Hub, and where each goes (`lipsync weights download`)."""
    return _hub_files(version)  # type: ignore[arg-type]
