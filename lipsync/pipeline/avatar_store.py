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
Nothing on disk is trusted: `read_manifest` checks every field a reader uses (`check_manifest`), `info` and
`list` check each array file's size against its .npy header, and `remove` deletes only a folder with an
avatar manifest, never through a symbolic link.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.config import FaceSettings
from lipsync.errors import LipsyncError
from lipsync.face.crop import CropBox
from lipsync.face.track import NO_BOX, box_at
from lipsync.io.files import Leftover, atomic_path, file_sha256, leftovers, remove_leftovers
from lipsync.timing import StageTimes

AVATAR_FORMAT = "lipsync-avatar"
AVATAR_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
BASE_ARRAYS = ("frames", "boxes", "masks", "cycle")
REFERENCE_PREFIX = "ref-"
# What a format-1 manifest (no "generator" entry) was made by.
FORMAT_1_GENERATOR = {"family": "musetalk", "frame_arrays": ["latents"], "reference_arrays": []}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: use fullmatch


class AvatarError(LipsyncError):
    """A prepared avatar that is missing, corrupt or made by an incompatible version."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise AvatarError(
            f"{name!r} is not a usable avatar name",
            "use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
    return name


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
        return sorted(p.name for p in self.root.iterdir() if NAME_PATTERN.fullmatch(p.name) and p.is_dir())

    def leftovers(self) -> list[Leftover]:
        """Half-built avatars of runs that died (removed by the next prepare in this store)."""
        return leftovers(self.root)

    def list(self) -> list[AvatarInfo]:
        """Every avatar, each broken one reported by itself (one broken avatar hides none of the others)."""
        infos = []
        for name in self.names():
            try:
                infos.append(self.info(name))
            except AvatarError:  # removed while listing
                continue
        return infos

    def info(self, name: str) -> AvatarInfo:
        """What the manifest says of one avatar; a broken one comes back with `problem` set.

        Cheap: every array file the manifest names must exist with the size its .npy header and shape
        imply (a deleted or truncated array shows here), but no checksum is computed (`load` does that).
        """
        folder = self._existing(name)
        try:
            manifest = read_manifest(folder)
            for array_name in array_names(manifest):
                problem = array_file_problem(folder / f"{array_name}.npy", manifest["arrays"][array_name])
                if problem:
                    raise _corrupt(name, folder, problem)
            return info_from_manifest(manifest, _folder_bytes(folder))
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
            problem = array_file_problem(path, spec)
            if problem is None:
                try:
                    array = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as error:
                    problem = f"{path.name} cannot be read ({error})"
                else:
                    if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                        problem = (
                            f"{path.name} has shape {array.shape} {array.dtype}, expected {spec['shape']}"
                        )
                    elif verify and file_sha256(path) != spec["sha256"]:
                        problem = f"{path.name} does not match its checksum"
            if problem:
                raise _corrupt(name, folder, problem)
            arrays[array_name] = array
        return Avatar(folder, manifest, arrays)

    def remove(self, name: str) -> str:
        """Delete avatar `name` and say what was done. Only a folder with an avatar manifest is deleted (a
        broken avatar too); an avatar that is a symbolic link loses the link only, never what it points to."""
        folder = self._existing(name)
        if not _has_avatar_manifest(folder):
            raise AvatarError(
                f"{folder} is not a prepared avatar (it has no {MANIFEST_NAME} of a lipsync avatar), "
                "so it was left alone",
                f"delete it yourself if it should go, or pick the --avatars folder that holds {name!r}",
            )
        if folder.is_symlink():
            target = folder.resolve()
            try:
                folder.unlink()
            except OSError as error:
                raise AvatarError(
                    f"the link {folder} cannot be removed ({error})", _permission_fix()
                ) from None
            return f"removed the link {folder} (the avatar it points to, {target}, was kept)"
        try:
            shutil.rmtree(folder)
        except OSError as error:
            raise AvatarError(f"avatar {name!r} cannot be removed ({error})", _permission_fix()) from None
        return f"removed avatar {name} from {self.root}"

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A fresh temporary folder; on success it atomically replaces the avatar, on failure it vanishes."""
        self.root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.root)  # what runs that died while preparing left here
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
    if type(version) is not int or version not in READABLE_FORMAT_VERSIONS:
        source = manifest.get("source")
        video = source.get("path") if isinstance(source, dict) else None
        raise AvatarError(
            f"avatar {folder.name!r} has format version {version}; "
            f"this lipsync reads version {AVATAR_FORMAT_VERSION}",
            f"prepare it again: lipsync avatar prepare {video if isinstance(video, str) else 'VIDEO'} "
            f"--name {folder.name}, or remove it (lipsync avatar remove {folder.name})",
        )
    try:
        check_manifest(manifest)
    except ManifestFieldError as error:
        raise _corrupt(folder.name, folder, f"{MANIFEST_NAME}: {error}") from None
    return manifest


class ManifestFieldError(ValueError):
    """One field of an avatar manifest is missing or has the wrong type or range (the message names it)."""


FACE_FIELDS = frozenset(field.name for field in fields(FaceSettings))


def check_manifest(manifest: dict[str, Any]) -> None:
    """Check every field an avatar's readers use, its type and its range (format and version aside): the
    schema of format versions 1 and 2. Raises ManifestFieldError naming the field."""
    _text(manifest, "name")
    _text(manifest, "created", empty=True)
    source = _mapping(manifest, "source")
    _text(source, "path", "source.")
    _text(source, "sha256", "source.")
    _integer(source, "size", "source.", minimum=0)
    _integer(source, "mtime_ns", "source.")
    if "generator" in manifest:  # format 1 had none: it was MuseTalk's
        generator = _mapping(manifest, "generator")
        _text(generator, "family", "generator.")
        for key in ("frame_arrays", "reference_arrays"):
            names = _field(generator, key, "generator.")
            if not isinstance(names, list) or not all(
                isinstance(n, str) and NAME_PATTERN.fullmatch(n) for n in names
            ):
                raise ManifestFieldError(f"generator.{key} must be a list of array names, not {names!r}")
    recipe = _mapping(manifest, "recipe")
    face = _mapping(recipe, "face", "recipe.")
    for key in face:
        if key not in FACE_FIELDS:
            raise ManifestFieldError(
                f"recipe.face.{key} is not a face option (known: {', '.join(sorted(FACE_FIELDS))})"
            )
        _integer(face, key, "recipe.face.")
    _positive_fraction(recipe, "image_fps", "recipe.")
    if "version" in recipe:
        _text(recipe, "version", "recipe.", empty=True)
    if not isinstance(_field(manifest, "untrained"), bool):
        raise ManifestFieldError(f"untrained must be true or false, not {manifest['untrained']!r}")
    video = _mapping(manifest, "video")
    _positive_fraction(video, "fps", "video.")
    _integer(video, "width", "video.", minimum=1)
    _integer(video, "height", "video.", minimum=1)
    count = _integer(video, "frame_count", "video.", minimum=1)
    faces = _integer(video, "frames_with_face", "video.", minimum=0)
    if faces > count:
        raise ManifestFieldError(f"video.frames_with_face is {faces}, more than video.frame_count {count}")
    arrays = _mapping(manifest, "arrays")
    for array_name in array_names(manifest):
        where = f"arrays.{array_name}."
        entry = _mapping(arrays, array_name, "arrays.")
        shape = _field(entry, "shape", where)
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ManifestFieldError(f"{where}shape must be a list of sizes (integers >= 0), not {shape!r}")
        dtype = _text(entry, "dtype", where)
        try:
            usable = not np.dtype(dtype).hasobject
        except TypeError:
            usable = False
        if not usable:
            raise ManifestFieldError(f"{where}dtype {dtype!r} is not a numpy type of plain numbers")
        _text(entry, "sha256", where)


def _field(mapping: dict[str, Any], key: str, where: str = "") -> Any:
    if key not in mapping:
        raise ManifestFieldError(f"{where}{key} is missing")
    return mapping[key]


def _mapping(mapping: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = _field(mapping, key, where)
    if not isinstance(value, dict):
        raise ManifestFieldError(f"{where}{key} must be an object, not {value!r}")
    return value


def _text(mapping: dict[str, Any], key: str, where: str = "", *, empty: bool = False) -> str:
    value = _field(mapping, key, where)
    if not isinstance(value, str) or not (value or empty):
        raise ManifestFieldError(
            f"{where}{key} must be {'a' if empty else 'a non-empty'} string, not {value!r}"
        )
    return value


def _integer(mapping: dict[str, Any], key: str, where: str = "", *, minimum: int | None = None) -> int:
    value = _field(mapping, key, where)
    if type(value) is not int or (minimum is not None and value < minimum):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ManifestFieldError(f"{where}{key} must be {wanted}, not {value!r}")
    return value


def _positive_fraction(mapping: dict[str, Any], key: str, where: str = "") -> Fraction:
    value = _field(mapping, key, where)
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        fraction = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        fraction = Fraction(0)
    if fraction <= 0:
        raise ManifestFieldError(
            f'{where}{key} must be a positive rate like "25" or "30000/1001", not {value!r}'
        )
    return fraction


def array_file_problem(path: Path, spec: dict[str, Any]) -> str | None:
    """Why an array file does not match its manifest entry (missing, another shape or type, truncated or
    too long for what its .npy header says), or None. Reads the header only: cheap, no checksum."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return f"{path.name} has an unknown .npy format version {version}"
            data_start = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return f"{path.name} cannot be read (it is missing)"
    except (OSError, ValueError) as error:
        return f"{path.name} cannot be read ({error})"
    if list(shape) != spec["shape"] or str(dtype) != spec["dtype"]:
        return f"{path.name} has shape {shape} {dtype}, expected {spec['shape']} {spec['dtype']}"
    expected = data_start + math.prod(shape) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return f"{path.name} is {state} ({size} bytes, expected {expected})"
    return None


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
    removal = (
        f"remove it (lipsync avatar remove {name})"
        if _has_avatar_manifest(folder)
        else f"delete the folder {folder} yourself (without an avatar manifest `lipsync avatar remove` "
        "leaves it alone)"
    )
    return AvatarError(
        f"avatar {name!r} in {folder.parent} is corrupt: {problem}",
        f"prepare it again (lipsync avatar prepare VIDEO --name {name}) or {removal}",
    )


def _has_avatar_manifest(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json of a lipsync avatar (of any version, valid or not)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == AVATAR_FORMAT


def _permission_fix() -> str:
    return "check that you may write to the avatars folder, then try again"


def _folder_bytes(folder: Path) -> int:
    total = 0
    try:
        for path in folder.iterdir():
            try:
                if path.is_file():
                    total += path.stat().st_size
            except OSError:  # removed meanwhile
                continue
    except OSError:
        return 0
    return total
