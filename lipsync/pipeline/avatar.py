"""Prepared avatars: everything about a video that does not depend on speech, computed once.

`prepare_avatar` finds the face in every frame, then stores the frames, crop boxes, reference latents,
blend masks and the forward-backward cycle (see avatar_store for the layout). An avatar remembers its
source file and the options it was made with (its recipe); when either changes, preparing again rebuilds
it, and `load_fresh_avatar` rebuilds it on its own before speaking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lipsync import __version__
from lipsync.config import FACE_SIZE, LATENT_SIZE, UNET_IN_CHANNELS, DubSettings, FaceSettings
from lipsync.errors import NoFaceError
from lipsync.face.crop import crop_face
from lipsync.face.mask import lower_face_mask
from lipsync.face.track import FaceTrack
from lipsync.io.files import require_file
from lipsync.io.video import FrameReader, VideoInfo, ping_pong_index, probe_video
from lipsync.models.loading import MuseTalkModels
from lipsync.models.vae import encode_faces
from lipsync.pipeline.avatar_store import (
    AVATAR_FORMAT,
    AVATAR_FORMAT_VERSION,
    Avatar,
    AvatarError,
    AvatarInfo,
    AvatarStore,
    array_entry,
    check_name,
    file_sha256,
    write_array,
    write_manifest,
)
from lipsync.pipeline.dub import find_faces
from lipsync.pipeline.timing import StageTimes

__all__ = [
    "Avatar",
    "AvatarError",
    "AvatarInfo",
    "AvatarStore",
    "PrepareResult",
    "load_fresh_avatar",
    "prepare_avatar",
]

ProgressCallback = Callable[[float], None]
FACE_PASS_SHARE = 0.5  # progress share of the face pass; the storing pass takes the rest


@dataclass(frozen=True)
class PrepareResult:
    info: AvatarInfo
    rebuilt: bool
    reason: str  # why it was (re)built, or why not
    seconds: float


def avatar_recipe(models: MuseTalkModels, settings: DubSettings) -> dict[str, Any]:
    """The options an avatar's content depends on; any change means a rebuild."""
    vae = "unknown"
    if models.vae_weights is not None and models.vae_weights.exists():
        stat = models.vae_weights.stat()
        vae = f"{models.vae_weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return {
        "version": models.version,
        "face": asdict(settings.face),
        "image_fps": str(settings.image_fps),
        "dtype": str(models.dtype).removeprefix("torch."),
        "vae": vae,
    }


def source_identity(source: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Path, size, mtime and sha256 of a source; the hash is reused from `known` if size and mtime match."""
    stat = source.stat()
    identity = {"path": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        identity["sha256"] = known.get("sha256")
    else:
        identity["sha256"] = file_sha256(source)
    return identity


def stale_reason(manifest: dict[str, Any], source: Path, recipe: dict[str, Any]) -> str | None:
    """Why a prepared avatar no longer matches its source and options, or None if it still does."""
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
    models: MuseTalkModels,
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
    settings = replace(settings or DubSettings(), version=models.version)
    recipe = avatar_recipe(models, settings)
    reason = "forced" if force else "new"
    if store.exists(name) and not force:
        try:
            stale = stale_reason(store.load(name).manifest, source, recipe)  # load verifies every array
        except AvatarError as error:
            stale = f"the stored one is unusable ({error.problem})"
        if stale is None:
            return PrepareResult(store.info(name), False, "up to date", time.perf_counter() - started)
        reason = stale
    _build(models, store, name, source, settings, recipe, on_progress, show_bar)
    return PrepareResult(store.info(name), True, reason, time.perf_counter() - started)


def load_fresh_avatar(
    models: MuseTalkModels, store: AvatarStore, name: str, *, show_bar: bool = True
) -> tuple[Avatar, str | None]:
    """Load an avatar for speaking with `models`, rebuilding it first if its source or recipe changed.

    Returns the avatar and the rebuild reason (None if it was fresh). If the source file is gone, the
    avatar is used as it is. A corrupt avatar raises AvatarError with the fix.
    """
    manifest = store.read_manifest(name)
    stored = manifest["recipe"]
    settings = DubSettings(
        version=models.version,
        face=FaceSettings(**stored["face"]),
        image_fps=Fraction(stored["image_fps"]),
    )
    source = Path(manifest["source"]["path"])
    reason = None
    if source.is_file():
        reason = stale_reason(manifest, source, avatar_recipe(models, settings))
        if reason is not None:
            prepare_avatar(models, store, name, source, settings, force=True, show_bar=show_bar)
    avatar = store.load(name)
    return avatar.to(models.device, models.dtype), reason


def _build(
    models: MuseTalkModels,
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
    times = StageTimes(device=models.device)

    def face_progress(done: int) -> None:
        if on_progress is not None:
            on_progress(FACE_PASS_SHARE * done / count)

    with FrameReader(info) as reader:
        track = find_faces(reader, info, count, settings.face, times, show_bar, on_frame=face_progress)
        if track.faces_found == 0:
            raise NoFaceError(
                f"no face was found in any frame of {source}",
                "use a video or photo where one face is clearly visible, frontal, at least 100 px wide",
            )
        with store.writing(name) as folder:
            arrays = _store_frames(models, reader, info, track, settings, folder, on_progress, show_bar)
            cycle = np.array([ping_pong_index(i, count) for i in range(2 * count)], dtype=np.int32)
            arrays["cycle"] = write_array(folder, "cycle", cycle)
            manifest = {
                "format": AVATAR_FORMAT,
                "format_version": AVATAR_FORMAT_VERSION,
                "lipsync_version": __version__,
                "name": name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": identity,
                "recipe": recipe,
                "untrained": models.untrained,
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


def _store_frames(
    models: MuseTalkModels,
    reader: FrameReader,
    info: VideoInfo,
    track: FaceTrack,
    settings: DubSettings,
    folder: Path,
    on_progress: ProgressCallback | None,
    show_bar: bool,
) -> dict[str, Any]:
    """Write frames, boxes, latents and masks, one frame at a time (bounded memory)."""
    count = info.frame_count
    boxes = track.boxes.astype(np.int32)
    present = track.boxes[:, 0] >= 0
    max_height = int((boxes[present, 3] - boxes[present, 1]).max())
    max_width = int((boxes[present, 2] - boxes[present, 0]).max())
    paths = {key: folder / f"{key}.npy" for key in ("frames", "latents", "masks")}
    frames = np.lib.format.open_memmap(
        paths["frames"], mode="w+", dtype=np.uint8, shape=(count, info.height, info.width, 3)
    )
    latents = np.lib.format.open_memmap(
        paths["latents"],
        mode="w+",
        dtype=np.float32,
        shape=(count, UNET_IN_CHANNELS, LATENT_SIZE, LATENT_SIZE),
    )
    masks = np.lib.format.open_memmap(
        paths["masks"], mode="w+", dtype=np.float32, shape=(count, max_height, max_width)
    )
    crops: list[np.ndarray] = []
    waiting: list[int] = []

    def encode_waiting() -> None:
        if waiting:
            latents[waiting] = encode_faces(models, np.stack(crops)).float().cpu().numpy()
            crops.clear()
            waiting.clear()

    bar = tqdm(total=count, desc="storing frames", unit="frame", disable=not show_bar, leave=False)
    for index, frame in enumerate(reader.frames(0, count)):
        frames[index] = frame
        box, landmarks = track.box(index), track.landmarks(index)
        if box is not None and landmarks is not None:
            crops.append(crop_face(frame, box, FACE_SIZE))
            waiting.append(index)
            masks[index, : box.height, : box.width] = lower_face_mask(landmarks, box)
        if len(waiting) == settings.runtime.batch_size:
            encode_waiting()
        bar.update(1)
        if on_progress is not None:
            on_progress(FACE_PASS_SHARE + (1 - FACE_PASS_SHARE) * (index + 1) / count)
    encode_waiting()
    bar.close()
    entries = {}
    for key, array in (("frames", frames), ("latents", latents), ("masks", masks)):
        array.flush()
        entries[key] = array_entry(paths[key], array)
    entries["boxes"] = write_array(folder, "boxes", boxes)
    return entries
