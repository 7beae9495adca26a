"""Where `lipsync serve` may read the sources of prepare jobs: its media folder, and files clients upload.

A client names a server-side source by its path relative to the media folder (`lipsync serve --media DIR`);
anything else (absolute, `..`, a symlink out of the folder, missing, not a file) gets one and the same
refusal, so the answer does not tell which files exist. Uploads go to a private temporary folder that lives
as long as the server; each upload is removed when the job that used it ends, or when unused for a while.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePath

from lipsync.config import UPLOAD_NAME_MAX_BYTES
from lipsync.errors import LipsyncError

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".png", ".jpg", ".jpeg", ".bmp", ".webp"}
)
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus"})
UPLOAD_SUFFIXES = VIDEO_SUFFIXES | AUDIO_SUFFIXES  # a speech track may also come in a video's sound
UPLOAD_DIR_PREFIX = "lipsync-uploads-"
PARTIAL_SUFFIX = ".part"
# What a browser sends across sites without asking the server first (a CORS "simple" request): an upload
# in one of these, or with no type at all, may come from any web page, so it is refused.
SIMPLE_CONTENT_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


class SourceRefused(LipsyncError):
    """A prepare source the server will not read."""


class UnknownUpload(LipsyncError):
    """No (unused) upload has this id."""


class UploadRefused(LipsyncError):
    """An upload the server will not keep (bad name)."""


class UploadTooBig(LipsyncError):
    """An upload over `max_upload_bytes`, or one the room left under `max_upload_total_bytes` cannot hold."""


class UploadTypeRefused(LipsyncError):
    """An upload sent with a content type any web page may send across sites."""


class UploadTimeout(LipsyncError):
    """An upload that stalled, or took too long in all."""


def check_upload_type(content_type: str | None) -> None:
    """Refuse the content types a web page on another site could send without the server's consent."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind or kind in SIMPLE_CONTENT_TYPES:
        raise UploadTypeRefused(
            f"an upload sent as {kind or 'no content type'!r} is refused: any web page could send it",
            "send the file's raw bytes with 'Content-Type: application/octet-stream' (or its video/, "
            "audio/ or image/ type)",
        )


def upload_name(name: str | None) -> str:
    """The client's file name of an upload, checked: no folders, no control characters, at most
    UPLOAD_NAME_MAX_BYTES bytes (a longer stem is shortened, the suffix kept); else UploadRefused."""
    name = name or ""
    bad = sorted({repr(c) for c in name if c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise UploadRefused(
            f"upload name {name[:80]!r} holds {', '.join(bad)}: a file name has no folders or control "
            "characters",
            "send ?name=ORIGINAL_FILE_NAME: the bare name of the file, e.g. ?name=anna.mp4",
        )
    if len(name.encode("utf-8")) <= UPLOAD_NAME_MAX_BYTES:
        return name
    path = PurePath(name)
    room = UPLOAD_NAME_MAX_BYTES - len(path.suffix.encode("utf-8"))
    stem = path.stem.encode("utf-8")[: max(room, 1)].decode("utf-8", errors="ignore")
    return stem + path.suffix


def not_in_media() -> SourceRefused:
    """The one answer for every source that is not a file inside the media folder."""
    return SourceRefused(
        "source is not a file in the server's media folder",
        "give the path of a video or photo relative to the media folder the server was started with "
        "(lipsync serve --media DIR), or upload the file with POST /api/uploads and send "
        '{"upload": ID}',
    )


def media_source(media_dir: Path | None, source: str) -> Path:
    """The file `source` names inside `media_dir` (symlinks followed), or SourceRefused.

    Absolute paths, paths that leave the folder, missing paths and non-files all get the same answer.
    """
    if media_dir is None:
        raise SourceRefused(
            "this server reads no files of its own: it was started without a media folder",
            'upload the file with POST /api/uploads and send {"upload": ID}, or start the server with '
            "--media DIR and give a path relative to DIR",
        )
    try:
        if not source or "\0" in source or PurePath(source).is_absolute() or source.startswith("~"):
            raise not_in_media()
        root = media_dir.resolve(strict=True)
        target = (root / source).resolve(strict=True)
        if not target.is_relative_to(root) or not target.is_file():
            raise not_in_media()
    except (OSError, ValueError, RuntimeError) as error:  # missing, unreadable, a symlink loop
        raise not_in_media() from error
    return target


def upload_suffix(name: str | None) -> str:
    """The suffix of an uploaded file's original name, if it is one lipsync reads; else UploadRefused."""
    suffix = PurePath(name or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadRefused(
            f"upload name {name!r} does not end in a video, photo or audio suffix lipsync reads",
            f"send ?name=ORIGINAL_FILE_NAME ending in one of {', '.join(sorted(UPLOAD_SUFFIXES))}",
        )
    return suffix


@dataclass
class _Upload:
    path: Path
    stored: float  # time.monotonic() when it was complete
    name: str  # the file name the client gave (its stem names a dub's output)


class UploadStore:
    """Uploaded files in a private (0700) temporary folder, made now and removed by `close`.

    An upload is complete once `finish` was called; `claim` hands it to one job (and forgets it: the job
    removes the file when it ends). Unclaimed uploads older than `ttl_seconds` are removed by `prune`, which
    every other method calls. An upload in progress holds a reservation of the bytes it may still write,
    taken when it begins, so that uploads running at once cannot pass the total limit together.
    """

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.folder = Path(tempfile.mkdtemp(prefix=UPLOAD_DIR_PREFIX))  # mode 0700
        self._lock = threading.Lock()
        self._uploads: dict[str, _Upload] = {}
        self._reserved: dict[str, int] = {}  # upload id -> bytes held for an upload in progress
        self._closed = False

    def begin(self, name: str | None, size: int, total_limit: int) -> tuple[str, Path]:
        """A new upload's id and the path to write its bytes to (not yet claimable); `size` bytes are
        reserved for it, or UploadTooBig if the folder cannot hold them within `total_limit`."""
        suffix = upload_suffix(upload_name(name))
        self.prune()
        upload_id = uuid.uuid4().hex
        with self._lock:
            if self._closed:
                raise LipsyncError("the server is shutting down", "start it again, then retry")
            if self._used() + size > total_limit:
                raise UploadTooBig(
                    f"the server's uploads would pass their limit of {total_limit} bytes on disk",
                    "wait until the queued jobs have used their uploads, then send it again",
                )
            self._reserved[upload_id] = size
        return upload_id, self.folder / f"{upload_id}{suffix}{PARTIAL_SUFFIX}"

    def _used(self) -> int:
        """Bytes of complete uploads on disk, plus those reserved by uploads in progress; hold `_lock`."""
        complete = 0
        for entry in self.folder.iterdir():
            if entry.suffix != PARTIAL_SUFFIX:
                with contextlib.suppress(OSError):  # removed meanwhile by a job that ended
                    complete += entry.stat().st_size
        return complete + sum(self._reserved.values())

    def finish(self, upload_id: str, partial: Path, name: str | None = None) -> None:
        """The bytes of `partial` are complete: the upload may now be claimed. `name` is the client's."""
        path = partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX))
        with self._lock:
            os.replace(partial, path)  # counted on disk from now on, so its reservation goes
            self._reserved.pop(upload_id, None)
            if self._closed:
                remove(path)
                raise LipsyncError("the server is shutting down", "start it again, then retry")
            self._uploads[upload_id] = _Upload(path, time.monotonic(), PurePath(upload_name(name)).name)

    def abandon(self, upload_id: str, partial: Path) -> None:
        """An upload that did not finish: its partial file and its reservation go (no-op after `finish`)."""
        with self._lock:
            self._reserved.pop(upload_id, None)
        remove(partial)

    def give_back(self, upload_id: str, path: Path, name: str) -> None:
        """Undo a `claim` for a job that was refused after all: the upload is unused again."""
        with self._lock:
            if self._closed:
                remove(path)
                return
            self._uploads[upload_id] = _Upload(path, time.monotonic(), name)

    def peek(self, upload_id: str) -> Path:
        """The file of an unused upload, left in place (a preview reads it; a job claims it later)."""
        return self._unused(upload_id).path

    def name(self, upload_id: str) -> str:
        """The file name the client gave an unused upload."""
        return self._unused(upload_id).name

    def _unused(self, upload_id: str) -> _Upload:
        self.prune()
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            raise self._unknown(upload_id)
        return upload

    def claim(self, upload_id: str) -> Path:
        """The file of an unused upload, now owned by the caller (who removes it)."""
        self.prune()
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
        if upload is None:
            raise self._unknown(upload_id)
        return upload.path

    def _unknown(self, upload_id: str) -> UnknownUpload:
        return UnknownUpload(
            f"no unused upload {upload_id!r}",
            "upload the file again with POST /api/uploads (an upload is used by one job only, and "
            f"removed when unused for {self.ttl_seconds:g} s)",
        )

    def prune(self) -> None:
        cutoff = time.monotonic() - self.ttl_seconds
        with self._lock:
            old = [key for key, upload in self._uploads.items() if upload.stored <= cutoff]
            expired = [self._uploads.pop(key) for key in old]
        for upload in expired:
            remove(upload.path)

    def bytes_on_disk(self) -> int:
        """What the upload folder holds now: unused uploads, those jobs are using, and partial ones."""
        return sum(entry.stat().st_size for entry in self.folder.iterdir() if entry.is_file())

    def __len__(self) -> int:
        with self._lock:
            return len(self._uploads)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._uploads.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


MAX_MEDIA_LISTED = 1000


def media_files(media_dir: Path | None, limit: int = MAX_MEDIA_LISTED) -> list[str]:
    """The videos, photos and audio files a client may name in the media folder, as relative POSIX paths
    (sorted; hidden files and folders left out; at most `limit`)."""
    if media_dir is None or not media_dir.is_dir():
        return []
    found: list[str] = []
    for folder, subfolders, names in os.walk(media_dir):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or PurePath(name).suffix.lower() not in UPLOAD_SUFFIXES:
                continue
            relative = (Path(folder) / name).relative_to(media_dir).as_posix()
            try:
                media_source(media_dir, relative)
            except SourceRefused:  # a symlink out of the folder, say
                continue
            found.append(relative)
            if len(found) >= limit:
                return sorted(found)
    return sorted(found)
