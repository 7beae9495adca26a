"""The model families lipsync runs, and which one a weights folder holds.

A family is a package under `lipsync.models` offering FAMILY, VERSIONS, DEFAULT_VERSION and the functions
`load`, `check`, `scaffold` and `recognise` (see `Family`), and, when its released files are on the Hugging
Face Hub, `hub_files(version)` for `lipsync weights download` (see `lipsync.models.hub`). Packages are
imported only when used, so the command line stays quick.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from lipsync.errors import WeightsError
from lipsync.models.weights import read_weights_manifest

if TYPE_CHECKING:
    import torch

    from lipsync.config import DeviceChoice, DtypeChoice
    from lipsync.models.generator import Generator
    from lipsync.models.weights import WeightsReport

FAMILY_PACKAGES: dict[str, str] = {
    "musetalk": "lipsync.models.musetalk",
    "stabilized-sync": "lipsync.models.stabilized_sync",
    "landmark-prior": "lipsync.models.landmark_prior",
}
FAMILY_NAMES = tuple(FAMILY_PACKAGES)
DEFAULT_FAMILY = "musetalk"


class Family(Protocol):
    FAMILY: str
    VERSIONS: tuple[str, ...]
    DEFAULT_VERSION: str

    def load(self, root: Path, version: str, device: torch.device, dtype: torch.dtype) -> Generator: ...

    def check(self, root: Path, version: str | None = None) -> WeightsReport: ...

    def scaffold(self, root: Path, tiny: bool = False, seed: int = 0, face_size: int | None = None) -> None:
        """Random weights in the family's layout; `face_size` picks a size configuration where the family
        has several (None: its default), and a WeightsError says which sizes it has otherwise."""

    def recognise(self, root: Path) -> bool: ...


def family(name: str) -> Family:
    """The package of family `name`, or a WeightsError naming the known ones."""
    if name not in FAMILY_PACKAGES:
        raise WeightsError(
            f"there is no model family {name!r}", f"set `model` to one of: {', '.join(FAMILY_NAMES)}"
        )
    return cast(Family, importlib.import_module(FAMILY_PACKAGES[name]))


def families_in(root: Path) -> list[str]:
    """The families ROOT holds: those its lipsync.json lists, else those whose released layout it has."""
    listed = [name for name in read_weights_manifest(root) if name in FAMILY_PACKAGES]
    return listed or [name for name in FAMILY_NAMES if family(name).recognise(Path(root))]


def choose_family(root: Path, requested: str | None) -> str:
    """The family to load from ROOT: `requested`, or the only one it holds (the default when none)."""
    if requested is not None:
        family(requested)
        return requested
    held = families_in(root)
    if len(held) == 1:
        return held[0]
    if not held:  # loading the default family then lists every file it needs and where to get it
        return DEFAULT_FAMILY
    raise WeightsError(f"{root} holds several model families: {', '.join(held)}", "choose one with `model`")


def choose_version(root: Path, name: str, requested: str | None) -> str:
    """`requested`, or the version lipsync.json names for the family, or the family's default."""
    known = family(name)
    entry = read_weights_manifest(root).get(name)
    version = requested or (entry.version if entry is not None else None) or known.DEFAULT_VERSION
    if version not in known.VERSIONS:
        raise WeightsError(
            f"{name} has no version {version!r}", f"set `version` to one of: {', '.join(known.VERSIONS)}"
        )
    return version


def load_generator(
    root: Path,
    model: str | None = None,
    version: str | None = None,
    device: DeviceChoice = "auto",
    dtype: DtypeChoice = "auto",
) -> Generator:
    """Check, then load the family ROOT holds (or `model`), ready for inference on `device` in `dtype`."""
    from lipsync.models.device import resolve_device, resolve_dtype

    root = Path(root)
    name = choose_family(root, model)
    torch_device = resolve_device(device)
    return family(name).load(
        root, choose_version(root, name, version), torch_device, resolve_dtype(dtype, torch_device)
    )
