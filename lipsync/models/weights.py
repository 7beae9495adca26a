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
    """The families lipsync.json lists ({} when the folder has none); a WeightsError when it is there but
    is not a manifest of this format and version (such a file never makes weights count as trained)."""
    path = Path(root) / WEIGHTS_MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"its format is {found!r}, not {WEIGHTS_FORMAT!r}")
        version = data.get("format_version")
        if type(version) is not int or version != WEIGHTS_FORMAT_VERSION:
            raise WeightsError(
                f"{path} has format_version {version!r}: this lipsync reads version {WEIGHTS_FORMAT_VERSION}",
                "use the lipsync that wrote the folder, or write the folder again with this one "
                "(`lipsync weights scaffold`, a training export or `lipsync weights download`)",
            )
        models = data["models"]
        if not isinstance(models, dict):
            raise ValueError("its models are not a JSON object")
        entries = {name: _model_entry(name, entry) for name, entry in models.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(
            f"{path} is not a readable lipsync weights manifest ({exc})",
            "write it again: `lipsync weights scaffold` or a training export makes one",
        ) from exc
    return entries


def _model_entry(name: str, entry: Any) -> ModelEntry:
    if not isinstance(entry, dict):
        raise ValueError(f"the entry of {name!r} is not a JSON object")
    untrained = entry.get("untrained", False)
    if not isinstance(untrained, bool):
        raise ValueError(f"{name}: untrained is {untrained!r}, not true or false")
    version, size, training = entry.get("version"), entry.get("size"), entry.get("training") or {}
    if version is not None and not isinstance(version, str):
        raise ValueError(f"{name}: version is {version!r}, not a string")
    if size not in (None, "full", "tiny"):
        raise ValueError(f"{name}: size is {size!r}, not full or tiny")
    if not isinstance(training, dict):
        raise ValueError(f"{name}: training is not a JSON object")
    return ModelEntry(family=name, version=version, size=size, untrained=untrained, training=dict(training))


def write_model_entry(root: Path, entry: ModelEntry) -> Path:
    """Add or replace one family's entry in ROOT/lipsync.json (written atomically)."""
    root = Path(root)
    path = root / WEIGHTS_MANIFEST
    entries = read_weights_manifest(root) if path.exists() else _released_layouts(root)
    entries[entry.family] = entry
    content = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "models": {
            name: {k: v for k, v in asdict(e).items() if k != "family"} for name, e in entries.items()
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _released_layouts(root: Path) -> dict[str, ModelEntry]:
    """Entries for the families ROOT holds in their released layout while it has no lipsync.json: the
    first manifest lists them as they counted without it (trained, unless the old UNTRAINED.json)."""
    from lipsync.models.families import families_in  # here: that module imports this one

    return {name: ModelEntry(name, untrained=is_untrained(root, name)) for name in families_in(root)}


def is_untrained(root: Path, family: str | None = None) -> bool:
    """True when the folder (or `family` in it) holds random test weights, or cannot be told to hold
    trained ones: a lipsync.json that lists no entry for the family (or none at all) counts as untrained,
    and one that cannot be read is a WeightsError. A folder without lipsync.json (the released layout)
    counts as trained unless it has the old scaffolds' UNTRAINED.json."""
    root = Path(root)
    entries = read_weights_manifest(root)
    if family is not None and family in entries:
        return entries[family].untrained
    if family is None and any(e.untrained for e in entries.values()):
        return True
    if (root / WEIGHTS_MANIFEST).exists() and (family is not None or not entries):
        return True
    return (root / UNTRAINED_MARKER).is_file()


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
            lines.append(
                f"  NOTE: these count as untrained test weights (lipsync.json marks them untrained, or "
                f"lists no {self.family} entry); output is noise"
            )
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


# Bounds on the sizes a family's config.json may give, checked before any network is built (a width the
# config invents costs memory before the weights file can disagree), far above every configuration the
# families ship, scaffold or train.
MAX_CONFIG_WIDTH = 4096  # channels, embedding and hidden widths, and the divisors of widths
MAX_CONFIG_DEPTH = 64  # layers, blocks, attention heads
MAX_CONFIG_FACE_SIZE = 1024  # px
MAX_CONFIG_COUNT = 256  # references of each kind


def config_size(name: str, value: Any, largest: int) -> int:
    """`value` of config.json's setting `name` as a whole number from 1 to `largest`, else a ValueError
    that names the setting and the bounds."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise ValueError(f"{name} is {value!r}: give a whole number from 1 to {largest}")
    return value


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
