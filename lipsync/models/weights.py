"""Weights folders that say what they hold, and the cheap file checks every family's `weights check` uses.

A folder's `lipsync.json` lists the model families in it, each with its version, size, training info and
whether it is untrained (random weights for tests). `lipsync weights scaffold` and every training export
write it; every loader reads it. A folder without one (the released MuseTalk download) is recognised by
its layout, as each family's `recognise` decides.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from lipsync.errors import WeightsError
from lipsync.io.files import atomic_path

WEIGHTS_MANIFEST = "lipsync.json"
WEIGHTS_FORMAT = "lipsync-weights"
WEIGHTS_FORMAT_VERSION = 1
UNTRAINED_MARKER = "UNTRAINED.json"  # written by scaffolds made before lipsync.json existed, still read

_SAFETENSORS_HEADER_BYTES = 8
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a legacy (non-zip) torch.save file
_LFS_POINTER = b"version https://git-lfs"

T = TypeVar("T")


@dataclass(frozen=True)
class ModelEntry:
    """One family's entry in lipsync.json."""

    family: str
    version: str | None = None
    size: Literal["full", "tiny"] | None = None
    untrained: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # what a training export records (steps, ...)


def read_weights_manifest(root: Path) -> dict[str, ModelEntry]:
    """The families lipsync.json lists ({} when the folder has none)."""
    path = Path(root) / WEIGHTS_MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = {
            name: ModelEntry(
                family=name,
                version=entry.get("version"),
                size=entry.get("size"),
                untrained=bool(entry.get("untrained", False)),
                training=dict(entry.get("training") or {}),
            )
            for name, entry in data["models"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(
            f"{path} is not a readable lipsync weights manifest ({exc})",
            "write it again: `lipsync weights scaffold` or a training export makes one",
        ) from exc
    return entries


def write_model_entry(root: Path, entry: ModelEntry) -> Path:
    """Add or replace one family's entry in ROOT/lipsync.json (written atomically)."""
    root = Path(root)
    entries = read_weights_manifest(root)
    entries[entry.family] = entry
    content = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "models": {
            name: {k: v for k, v in asdict(e).items() if k != "family"} for name, e in entries.items()
        },
    }
    path = root / WEIGHTS_MANIFEST
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def is_untrained(root: Path, family: str | None = None) -> bool:
    """True when the folder (or `family` in it) holds random test weights."""
    entries = read_weights_manifest(root)
    if family is not None and family in entries:
        return entries[family].untrained
    if family is None and any(e.untrained for e in entries.values()):
        return True
    return (Path(root) / UNTRAINED_MARKER).is_file()


# --- cheap file checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    path: Path
    status: Literal["present", "missing", "malformed"]
    detail: str


def check_json(path: Path, expected: dict[str, Any]) -> FileCheck:
    """A JSON config file that exists, parses, and has the `expected` values."""
    if not path.is_file():
        return FileCheck(path, "missing", "")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return FileCheck(path, "malformed", f"not valid JSON: {exc}")
    if not isinstance(config, dict):
        return FileCheck(path, "malformed", "not a JSON object")
    wrong = "; ".join(
        f"{k}={config[k]!r} (expected {v!r})" if k in config else f"{k} absent (expected {v!r})"
        for k, v in expected.items()
        if config.get(k) != v
    )
    return FileCheck(path, "malformed" if wrong else "present", wrong)


def check_weights_file(path: Path) -> FileCheck:
    """A weights file that exists and whose header and directory look whole (no full load)."""
    if not path.is_file():
        return FileCheck(path, "missing", "")
    problem = _weights_problem(path)
    return FileCheck(path, "malformed" if problem else "present", problem)


def _weights_problem(path: Path) -> str:
    """Why a weights file cannot be what it claims, from its header and directory only ('' if fine)."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    with path.open("rb") as fh:
        head = fh.read(len(_LFS_POINTER))
        if head.startswith(_LFS_POINTER):
            return "a Git LFS pointer, not the weights: fetch the real file (git lfs pull)"
        if path.suffix == ".safetensors":
            return _safetensors_problem(fh, size)
    if head.startswith(_TORCH_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "truncated or corrupt torch archive (zip directory unreadable)"
        return "" if any(n.endswith("data.pkl") for n in names) else "zip archive without torch data.pkl"
    if head[0] == _PICKLE_PROTO:
        return ""  # legacy torch.save format: nothing cheap left to check
    return "not a PyTorch or safetensors file"


def _safetensors_problem(fh: BinaryIO, size: int) -> str:
    fh.seek(0)
    header_len = int.from_bytes(fh.read(_SAFETENSORS_HEADER_BYTES), "little")
    if _SAFETENSORS_HEADER_BYTES + header_len > size:
        return "truncated safetensors file (header runs past the end)"
    try:
        header = json.loads(fh.read(header_len))
        data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return "unreadable safetensors header"
    if _SAFETENSORS_HEADER_BYTES + header_len + data_end > size:
        return "truncated safetensors file (tensor data runs past the end)"
    return ""


@dataclass(frozen=True)
class WeightsReport:
    """One family's files in a folder: each present, missing or malformed, and where to get them."""

    root: Path
    family: str
    title: str  # e.g. "MuseTalk v1.5"
    files: tuple[FileCheck, ...]
    untrained: bool
    sources: dict[str, str] = field(default_factory=dict)  # sub-folder -> where its files come from
    layout: str = ""  # the expected tree, shown when something is wrong
    hint: str = ""

    @property
    def ok(self) -> bool:
        return all(f.status == "present" for f in self.files)

    def problems(self) -> list[FileCheck]:
        return [f for f in self.files if f.status != "present"]

    def format(self) -> str:
        lines = [f"weights in {self.root} ({self.title}):"]
        for f in self.files:
            rel = f.path.relative_to(self.root) if f.path.is_relative_to(self.root) else f.path
            lines.append(f"  {f.status:<9} {rel}" + (f"  ({f.detail})" if f.detail else ""))
        if self.untrained:
            lines.append("  NOTE: these are untrained test weights (lipsync.json says so); output is noise")
        bad_dirs = sorted({f.path.parent.name for f in self.problems()})
        if bad_dirs:
            lines.append("get the missing or malformed files from:")
            lines += [f"  {d}/: {self.sources.get(d, '?')}" for d in bad_dirs]
            if self.layout:
                lines += ["expected layout:", self.layout]
            if self.hint:
                lines.append(self.hint)
        return "\n".join(lines)


# --- a family's own config.json and scaffolds ---------------------------------------------------------


def read_family_config(
    path: Path, family: str, config_format: str, hint: str, parse: Callable[[dict[str, Any]], T]
) -> T:
    """A family's config.json at `path` (its `format` must be `config_format`), parsed; a WeightsError
    saying what is wrong, with `hint` as the fix, otherwise."""
    if not path.is_file():
        raise WeightsError(f"no {family} weights in {path.parent.parent}: {path} does not exist", hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != config_format:
            raise ValueError(f"its format is {data.get('format')!r}, not {config_format!r}")
        return parse(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{path} is not a usable {family} config ({exc})", hint) from exc


def check_family_config(path: Path, read: Callable[[], object]) -> FileCheck:
    """`path` present and `read()` accepting it, as a FileCheck (the reason when it does not)."""
    if not path.is_file():
        return FileCheck(path, "missing", "")
    try:
        read()
    except WeightsError as exc:
        return FileCheck(path, "malformed", exc.problem.split("(", 1)[-1].rstrip(")"))
    return FileCheck(path, "present", "")


def refuse_to_overwrite_trained(root: Path, family: str, files: Iterable[Path], what: str) -> None:
    """A scaffold writes over nothing but another scaffold: WeightsError when any of `files` exists and
    ROOT's `family` is not marked untrained."""
    existing = [path for path in files if path.exists()]
    if existing and not is_untrained(root, family):
        raise WeightsError(
            f"{root} already holds {what} weights ({existing[0]}) not marked untrained: not overwriting them",
            "scaffold into an empty folder",
        )
