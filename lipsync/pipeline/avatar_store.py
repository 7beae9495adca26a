"""Prepared avatars on disk: a versioned manifest plus plain .npy arrays, written atomically.

<avatars>/<name>/
  manifest.json   format and version, source identity, the generator family and its arrays, the recipe
                  (options the content depends on), video geometry, and each array's shape, dtype, sha256
  frames.npy      (N, H, W, 3) uint8    source frames, decoded once
  boxes.npy       (N, 4) int32          crop box per frame (-1 where there is no face)
  masks.npy       (N, Hmax, Wmax) float32 blend mask per frame, top-left aligned in its box
  cycle.npy       (2N,) int32           source frame of each step of the forward-backward cycle
  NAME.npy        (N, ...)              each per-frame array the generator prepares (MuseTalk: latents.npy,
                                        (N, 8, 32, 32) float32 masked + reference VAE latents)
  ref-NAME.npy    (...)                 each reference array it makes once (none for MuseTalk)

Format version 1 (before generator families) is the same layout for MuseTalk and is still read.

Arrays are memory-mapped when loaded, so an avatar costs no RAM beyond what a frame needs. No pickles.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.errors import LipsyncError
from lipsync.face.crop import CropBox
from lipsync.face.track import NO_BOX, box_at
from lipsync.io.files import atomic_path
from lipsync.timing import StageTimes

AVATAR_FORMAT = "lipsync-avatar"
AVATAR_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
BASE_ARRAYS = ("frames", "boxes", "masks", "cycle")
REFERENCE_PREFIX = "ref-"
# What a format-1 manifest (no "generator" entry) was made by.
FORMAT_1_GENERATOR = {"family": "musetalk", "frame_arrays": ["latents"], "reference_arrays": []}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HASH_CHUNK_BYTES = 8 << 20


class AvatarError(LipsyncError):
    """A prepared avatar that is missing, corrupt or made by an incompatible version."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise AvatarError(
            f"{name!r} is not a usable avatar name",
            "use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
    return name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class AvatarInfo:
    """What `lipsync avatar list` shows. A broken avatar has `problem` set and zeros elsewhere."""

    name: str
    source: Path
    fps: Fraction
    width: int
    height: int
    frame_count: int
    frames_with_face: int
    created: str
    disk_bytes: int
    version: str
    untrained: bool
    family: str = ""
    problem: str | None = None

    @classmethod
    def broken(cls, name: str, problem: str, disk_bytes: int) -> AvatarInfo:
        return cls(name, Path(), Fraction(0), 0, 0, 0, 0, "", disk_bytes, "", False, "", problem)

    def format(self) -> str:
        size = f"{self.disk_bytes / 1e6:.1f} MB"
        if self.problem:
            return f"{self.name:<20} BROKEN ({size}): {self.problem}"
        seconds = self.frame_count / float(self.fps)
        label = " UNTRAINED" if self.untrained else ""
        return (
            f"{self.name:<20} {self.frame_count} frames ({seconds:.1f} s at {float(self.fps):.2f} fps), "
            f"{self.width}x{self.height}, {self.frames_with_face} with a face, "
            f"{' '.join(filter(None, (self.family, self.version)))}{label}, "
            f"{size}, from {self.source}"
        )


class Avatar:
    """A loaded avatar: memory-mapped arrays plus the manifest. Also the FacePrep that rendering reads."""

    def __init__(self, folder: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.info = info_from_manifest(manifest, _folder_bytes(folder))
        self.frames = arrays["frames"]
        self.boxes = arrays["boxes"]
        self.masks = arrays["masks"]
        self.cycle = arrays["cycle"]
        spec = generator_spec(manifest)
        self.family: str = spec["family"]
        self.frame_arrays = {name: arrays[name] for name in spec["frame_arrays"]}
        self._references = {
            name: np.array(arrays[REFERENCE_PREFIX + name]) for name in spec["reference_arrays"]
        }

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def fps(self) -> Fraction:
        return self.info.fps

    @property
    def references(self) -> dict[str, np.ndarray]:
        return self._references

    def source_index(self, output_index: int) -> int:
        return int(self.cycle[output_index % len(self.cycle)])

    def frame(self, source: int) -> np.ndarray:
        return np.array(self.frames[source])

    def has_face(self, source: int) -> bool:
        return bool(self.boxes[source, 0] != NO_BOX)

    def box(self, source: int) -> CropBox | None:
        return box_at(self.boxes, source)

    def mask(self, source: int) -> np.ndarray:
        box = self.box(source)
        if box is None:
            raise ValueError(f"frame {source} of avatar {self.info.name} has no face")
        return np.array(self.masks[source, : box.height, : box.width])

    def prepared(
        self, sources: list[int], frames: list[np.ndarray], times: StageTimes
    ) -> dict[str, np.ndarray]:
        return {name: np.stack([array[s] for s in sources]) for name, array in self.frame_arrays.items()}


class AvatarStore:
    """A folder of prepared avatars."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST_NAME).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))

    def list(self) -> list[AvatarInfo]:
        return [self.info(name) for name in self.names()]

    def info(self, name: str) -> AvatarInfo:
        """What the manifest says of one avatar; a broken one comes back with `problem` set."""
        folder = self._existing(name)
        try:
            return info_from_manifest(read_manifest(folder), _folder_bytes(folder))
        except AvatarError as error:
            return AvatarInfo.broken(name, error.problem, _folder_bytes(folder))

    def read_manifest(self, name: str) -> dict[str, Any]:
        return read_manifest(self._existing(name))

    def load(self, name: str, verify: bool = True) -> Avatar:
        """Open an avatar; with `verify`, every array's checksum is checked (corruption is reported)."""
        folder = self._existing(name)
        manifest = read_manifest(folder)
        arrays = {}
        for array_name in array_names(manifest):
            spec = manifest["arrays"][array_name]
            path = folder / f"{array_name}.npy"
            problem = None
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                problem = f"{path.name} cannot be read ({error})"
            else:
                if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                    problem = f"{path.name} has shape {array.shape} {array.dtype}, expected {spec['shape']}"
                elif verify and file_sha256(path) != spec["sha256"]:
                    problem = f"{path.name} does not match its checksum"
            if problem:
                raise _corrupt(name, folder, problem)
            arrays[array_name] = array
        return Avatar(folder, manifest, arrays)

    def remove(self, name: str) -> None:
        folder = self.path(name)
        if not folder.is_dir():
            raise AvatarError(f"there is no avatar called {name!r} in {self.root}", self._list_fix())
        shutil.rmtree(folder)

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A fresh temporary folder; on success it atomically replaces the avatar, on failure it vanishes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(name)) as temporary:
            temporary.mkdir()
            yield temporary

    def _existing(self, name: str) -> Path:
        folder = self.path(name)
        if not folder.is_dir():
            raise AvatarError(f"there is no avatar called {name!r} in {self.root}", self._list_fix())
        return folder

    def _list_fix(self) -> str:
        names = self.names()
        known = f" (prepared: {', '.join(names)})" if names else ""
        return f"prepare it with `lipsync avatar prepare VIDEO --name NAME`{known}, or pick another --avatars"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise _corrupt(folder.name, folder, f"{MANIFEST_NAME} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(folder.name, folder, f"{MANIFEST_NAME} is unreadable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != AVATAR_FORMAT:
        raise _corrupt(folder.name, folder, f"{MANIFEST_NAME} is not a lipsync avatar manifest")
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise AvatarError(
            f"avatar {folder.name!r} has format version {version}; "
            f"this lipsync reads version {AVATAR_FORMAT_VERSION}",
            f"prepare it again: lipsync avatar prepare {manifest.get('source', {}).get('path', 'VIDEO')} "
            f"--name {folder.name}",
        )
    try:
        info_from_manifest(manifest, 0)
        for array_name in array_names(manifest):
            spec = manifest["arrays"][array_name]
            spec["shape"], spec["dtype"], spec["sha256"]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise _corrupt(folder.name, folder, f"{MANIFEST_NAME} lacks or garbles {error}") from None
    return manifest


def generator_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The generator family an avatar was made for and the arrays it prepared."""
    spec: dict[str, Any] = manifest.get("generator", FORMAT_1_GENERATOR)
    return spec


def array_names(manifest: dict[str, Any]) -> list[str]:
    """Every array file of an avatar (without .npy)."""
    spec = generator_spec(manifest)
    return [*BASE_ARRAYS, *spec["frame_arrays"], *(REFERENCE_PREFIX + n for n in spec["reference_arrays"])]


def info_from_manifest(manifest: dict[str, Any], disk_bytes: int) -> AvatarInfo:
    video = manifest["video"]
    return AvatarInfo(
        name=manifest["name"],
        source=Path(manifest["source"]["path"]),
        fps=Fraction(video["fps"]),
        width=int(video["width"]),
        height=int(video["height"]),
        frame_count=int(video["frame_count"]),
        frames_with_face=int(video["frames_with_face"]),
        created=str(manifest["created"]),
        disk_bytes=disk_bytes,
        version=str(manifest["recipe"].get("version", "")),
        untrained=bool(manifest["untrained"]),
        family=str(generator_spec(manifest)["family"]),
    )


def write_array(folder: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    """Save one array and return its manifest entry."""
    path = folder / f"{name}.npy"
    np.save(path, array, allow_pickle=False)
    return array_entry(path, array)


def array_entry(path: Path, array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": file_sha256(path)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _corrupt(name: str, folder: Path, problem: str) -> AvatarError:
    return AvatarError(
        f"avatar {name!r} in {folder.parent} is corrupt: {problem}",
        f"prepare it again (lipsync avatar prepare VIDEO --name {name}) or remove it "
        f"(lipsync avatar remove {name})",
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
