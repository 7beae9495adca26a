"""Prepared avatars: everything about a video that does not depend on speech, computed once.

`prepare_avatar` finds the face in every frame, then stores the frames, crop boxes, blend masks, the
forward-backward cycle and whatever per-frame and reference arrays the generator prepares (MuseTalk: the
reference latents; see avatar_store for the layout). An avatar remembers its
source file and the options it was made with (its recipe); when either changes, preparing again rebuilds
it, and `load_fresh_avatar` rebuilds it on its own before speaking.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lipsync import __version__
from lipsync.config import DubSettings, FaceSettings
from lipsync.errors import NoFaceError
from lipsync.face.track import FaceTrack
from lipsync.io.files import file_sha256, require_file
from lipsync.io.video import FrameReader, VideoInfo, ping_pong_index, probe_video
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar_store import (
    AVATAR_FORMAT,
    AVATAR_FORMAT_VERSION,
    REFERENCE_PREFIX,
    Avatar,
    AvatarError,
    AvatarInfo,
    AvatarStore,
    array_entry,
    check_name,
    generator_spec,
    write_array,
    write_manifest,
)
from lipsync.pipeline.dub import find_faces
from lipsync.pipeline.render import (
    FACE_PASS_SHARE,
    ProgressCallback,
    face_batch,
    generator_times,
    reference_arrays,
)

__all__ = [
    "Avatar",
    "AvatarError",
    "AvatarInfo",
    "AvatarStore",
    "PrepareResult",
    "load_fresh_avatar",
    "prepare_avatar",
]


@dataclass(frozen=True)
class PrepareResult:
    info: AvatarInfo
    rebuilt: bool
    reason: str  # why it was (re)built, or why not
    seconds: float


def avatar_recipe(generator: Generator, settings: DubSettings) -> dict[str, Any]:
    """The options an avatar's content depends on; any change means a rebuild."""
    return {**generator.recipe(), "face": asdict(settings.face), "image_fps": str(settings.image_fps)}


def source_identity(source: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Path, size, mtime and sha256 of a source; the hash is reused from `known` if size and mtime match."""
    stat = source.stat()
    identity = {"path": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        identity["sha256"] = known.get("sha256")
    else:
        identity["sha256"] = file_sha256(source)
    return identity


def stale_reason(manifest: dict[str, Any], source: Path, recipe: dict[str, Any], family: str) -> str | None:
    """Why a prepared avatar no longer matches its source, options and model family, or None."""
    made_for = generator_spec(manifest)["family"]
    if made_for != family:
        return f"it was prepared for the {made_for} model family, not {family}"
    stored_source = manifest["source"]
    if Path(stored_source["path"]) != source.resolve():
        return f"the source changed from {stored_source['path']} to {source.resolve()}"
    if source_identity(source, stored_source)["sha256"] != stored_source["sha256"]:
        return f"{source} changed since the avatar was prepared"
    stored = manifest["recipe"]
    changed = [
        f"{key} {stored.get(key)!r} -> {value!r}" for key, value in recipe.items() if stored.get(key) != value
    ]
    return f"options changed: {'; '.join(changed)}" if changed else None


def prepare_avatar(
    generator: Generator,
    store: AvatarStore,
    name: str,
    source: Path,
    settings: DubSettings | None = None,
    *,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
    show_bar: bool = True,
) -> PrepareResult:
    """Prepare (or rebuild) avatar `name` from `source`; an up-to-date avatar is left as it is."""
    started = time.perf_counter()
    check_name(name)
    source = Path(source)
    require_file(source, "a video or photo", "give the video (or photo) file the avatar should be made from")
    settings = settings or DubSettings()
    recipe = avatar_recipe(generator, settings)
    reason = "forced" if force else "new"
    if store.exists(name) and not force:
        try:
            manifest = store.load(name).manifest  # load verifies every array
            stale = stale_reason(manifest, source, recipe, generator.family)
        except AvatarError as error:
            stale = f"the stored one is unusable ({error.problem})"
        if stale is None:
            return PrepareResult(store.info(name), False, "up to date", time.perf_counter() - started)
        reason = stale
    _build(generator, store, name, source, settings, recipe, on_progress, show_bar)
    return PrepareResult(store.info(name), True, reason, time.perf_counter() - started)


def load_fresh_avatar(
    generator: Generator, store: AvatarStore, name: str, *, show_bar: bool = True
) -> tuple[Avatar, str | None]:
    """Load an avatar for speaking with `generator`, rebuilding it first if its source or recipe changed.

    Returns the avatar and the rebuild reason (None if it was fresh). If the source file is gone, the
    avatar is used as it is. A corrupt avatar raises AvatarError with the fix.
    """
    manifest = store.read_manifest(name)
    stored = manifest["recipe"]
    settings = DubSettings(face=FaceSettings(**stored["face"]), image_fps=Fraction(stored["image_fps"]))
    source = Path(manifest["source"]["path"])
    reason = None
    if source.is_file():
        reason = stale_reason(manifest, source, avatar_recipe(generator, settings), generator.family)
        if reason is not None:
            prepare_avatar(generator, store, name, source, settings, force=True, show_bar=show_bar)
    elif generator_spec(manifest)["family"] != generator.family:
        raise AvatarError(
            f"avatar {name!r} was prepared for the {generator_spec(manifest)['family']} model family, "
            f"and its source {source} is gone, so it cannot be rebuilt for {generator.family}",
            "speak with weights of the family it was made for, or prepare it again from its video",
        )
    return store.load(name), reason


def _build(
    generator: Generator,
    store: AvatarStore,
    name: str,
    source: Path,
    settings: DubSettings,
    recipe: dict[str, Any],
    on_progress: ProgressCallback | None,
    show_bar: bool,
) -> None:
    info = probe_video(source, settings.image_fps)
    identity = source_identity(source)
    count = info.frame_count
    times = generator_times(generator)

    def face_progress(done: int) -> None:
        if on_progress is not None:
            on_progress(FACE_PASS_SHARE * done / count)

    with FrameReader(info) as reader:
        track = find_faces(
            reader,
            info,
            count,
            settings.face,
            times,
            show_bar,
            on_frame=face_progress,
            box_rule=generator.crop_box,
        ).head(reader.info.frame_count)  # shorter when the video's tail cannot be decoded
        info = reader.info
        count = info.frame_count
        if track.faces_found == 0:
            raise NoFaceError(
                f"no face was found in any frame of {source}",
                "use a video or photo where one face is clearly visible, frontal, at least 100 px wide",
            )
        with store.writing(name) as folder:
            arrays = _store_frames(generator, reader, info, track, settings, folder, on_progress, show_bar)
            references = reference_arrays(generator, track, reader.frame, times)
            for ref_name, ref_array in references.items():
                arrays[REFERENCE_PREFIX + ref_name] = write_array(
                    folder, REFERENCE_PREFIX + ref_name, ref_array
                )
            cycle = np.array([ping_pong_index(i, count) for i in range(2 * count)], dtype=np.int32)
            arrays["cycle"] = write_array(folder, "cycle", cycle)
            manifest = {
                "format": AVATAR_FORMAT,
                "format_version": AVATAR_FORMAT_VERSION,
                "lipsync_version": __version__,
                "name": name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": identity,
                "generator": {
                    "family": generator.family,
                    "frame_arrays": list(generator.frame_arrays()),
                    "reference_arrays": list(references),
                },
                "recipe": recipe,
                "untrained": generator.untrained,
                "video": {
                    "fps": str(info.fps),
                    "width": info.width,
                    "height": info.height,
                    "frame_count": count,
                    "frames_with_face": track.faces_found,
                },
                "arrays": arrays,
            }
            write_manifest(folder, manifest)
    if on_progress is not None:
        on_progress(1.0)


DISK_FIX = "free some disk space (or use another --avatars folder), then prepare again; nothing was kept"


def _check_free_space(folder: Path, shapes: Iterable[tuple[tuple[int, ...], str]]) -> None:
    """Refuse at once when the arrays cannot fit on the disk (cheap, before anything is written)."""
    needed = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in shapes)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise AvatarError(
            f"the avatar needs {needed / 1e6:.0f} MB and {folder.parent} has {free / 1e6:.0f} MB free",
            DISK_FIX,
        )


def _allocated_memmap(path: Path, shape: tuple[int, ...], dtype: str) -> np.memmap:
    """A new .npy memory map whose disk blocks are reserved now: writing into a sparse map on a disk that
    fills up kills the process with SIGBUS, while a refused reservation is an ordinary error."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        try:
            with open(path, "r+b") as file:
                os.posix_fallocate(file.fileno(), 0, path.stat().st_size)
        except OSError as error:
            raise AvatarError(
                f"cannot reserve {path.stat().st_size / 1e6:.0f} MB for {path.name} ({error})", DISK_FIX
            ) from error
    return array


def _store_frames(
    generator: Generator,
    reader: FrameReader,
    info: VideoInfo,
    track: FaceTrack,
    settings: DubSettings,
    folder: Path,
    on_progress: ProgressCallback | None,
    show_bar: bool,
) -> dict[str, Any]:
    """Write frames, boxes, masks and the generator's per-frame arrays, one frame at a time (bounded
    memory): frames with a face are prepared in batches; rows without one stay zero."""
    count = info.frame_count
    boxes = track.boxes.astype(np.int32)
    present = track.boxes[:, 0] >= 0
    max_height = int((boxes[present, 3] - boxes[present, 1]).max())
    max_width = int((boxes[present, 2] - boxes[present, 0]).max())
    specs = generator.frame_arrays()
    shapes = {
        "frames": ((count, info.height, info.width, 3), "uint8"),
        "masks": ((count, max_height, max_width), "float32"),
        **{name: ((count, *spec.shape), spec.dtype) for name, spec in specs.items()},
    }
    paths = {key: folder / f"{key}.npy" for key in shapes}
    _check_free_space(folder, shapes.values())
    arrays = {key: _allocated_memmap(paths[key], shape, dtype) for key, (shape, dtype) in shapes.items()}
    times = generator_times(generator)
    waiting: list[int] = []
    waiting_frames: list[np.ndarray] = []

    def prepare_waiting() -> None:
        if waiting:
            prepared = generator.prepare(face_batch(generator, track, waiting, waiting_frames), times)
            for name in specs:
                arrays[name][waiting] = prepared[name]
            waiting.clear()
            waiting_frames.clear()

    bar = tqdm(total=count, desc="storing frames", unit="frame", disable=not show_bar, leave=False)
    for index, frame in enumerate(reader.frames(0, count)):
        arrays["frames"][index] = frame
        box, landmarks = track.box(index), track.landmarks(index)
        if box is not None and landmarks is not None:
            waiting.append(index)
            waiting_frames.append(frame)
            arrays["masks"][index, : box.height, : box.width] = generator.blend_mask(landmarks, box)
        if len(waiting) == settings.runtime.batch_size:
            prepare_waiting()
        bar.update(1)
        if on_progress is not None:
            on_progress(FACE_PASS_SHARE + (1 - FACE_PASS_SHARE) * (index + 1) / count)
    prepare_waiting()
    bar.close()
    entries = {}
    for key, array in arrays.items():
        array.flush()
        entries[key] = array_entry(paths[key], array)
    entries["boxes"] = write_array(folder, "boxes", boxes)
    return entries
