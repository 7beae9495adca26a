"""Files: the one check every input file goes through, and the one way every output file is written."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lipsync.errors import InputError

TEMP_PREFIX = ".tmp-"  # every temporary file or folder this project writes beside its target starts so


def require_file(path: Path, kind: str, fix: str) -> None:
    """Raise InputError unless `path` is an existing file; `kind` names what it should be."""
    if not path.exists():
        raise InputError(f"{path} does not exist.", "Check the path and the spelling of the file name.")
    if not path.is_file():
        raise InputError(f"{path} is a folder, not {kind}.", fix)


def temporary_sibling(path: Path) -> Path:
    """A fresh, unused name beside `path` for writing it in full before it appears:
    `.tmp-PID-RANDOM-NAME`, so a later run can tell whether the process that wrote it still lives."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:16]}-{path.name}")


@dataclass(frozen=True)
class Leftover:
    """A temporary file or folder that a run which died (SIGKILL, a crash, a power cut) left behind."""

    path: Path
    size: int  # bytes


def leftovers(folder: Path) -> list[Leftover]:
    """The temporaries in `folder` whose writing process is gone (those of live runs are not listed)."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        owner = entry.name[len(TEMP_PREFIX) :].split("-")[0] if entry.name.startswith(TEMP_PREFIX) else ""
        if owner.isdigit() and not process_alive(int(owner)):
            found.append(Leftover(entry, _size(entry)))
    return found


def remove_leftovers(folder: Path) -> list[Leftover]:
    """Delete what `leftovers` finds; returns it."""
    found = leftovers(folder)
    for leftover in found:
        _remove(leftover.path)
    return found


def process_alive(pid: int) -> bool:
    """True while process `pid` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.lstat().st_size


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, it replaces `path` in one rename.

    A reader never sees half a file, and a failed or interrupted write leaves `path` as it was and no
    temporary behind. Works for files and for folders (an existing folder at `path` is replaced whole).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = temporary_sibling(path)
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


HASH_CHUNK_BYTES = 8 << 20  # read this much at a time when hashing a file


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in chunks: memory stays small for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
