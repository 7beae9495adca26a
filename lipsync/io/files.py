"""The one check every input file goes through before it is opened."""

from __future__ import annotations

from pathlib import Path

from lipsync.errors import InputError


def require_file(path: Path, kind: str, fix: str) -> None:
    """Raise InputError unless `path` is an existing file; `kind` names what it should be."""
    if not path.exists():
        raise InputError(f"{path} does not exist.", "Check the path and the spelling of the file name.")
    if not path.is_file():
        raise InputError(f"{path} is a folder, not {kind}.", fix)
