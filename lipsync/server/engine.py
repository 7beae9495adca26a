"""What `lipsync serve` holds between requests: the generator (loaded once), the avatars, sessions and jobs.

Thread-safe: the event loop, the worker threads of the stream sessions and the one prepare worker all use it.
"""

from __future__ import annotations

import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar

from lipsync.config import (
    BATCH_OPTION_MINIMUMS,
    DubSettings,
    FaceSettings,
    RuntimeSettings,
    ServerSettings,
    StreamSettings,
)
from lipsync.errors import LipsyncError
from lipsync.models.device import dtype_label
from lipsync.models.families import load_generator
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import Avatar, AvatarError, AvatarInfo, AvatarStore, prepare_avatar
from lipsync.pipeline.avatar_store import MANIFEST_NAME
from lipsync.pipeline.dub import DubPipeline
from lipsync.pipeline.preview import FacePreview, preview_first_frame
from lipsync.pipeline.stream import StreamSession
from lipsync.server.protocol import encode_jpeg
from lipsync.server.uploads import UploadStore, remove

JobState = Literal["queued", "running", "done", "failed"]
JobKind = Literal["prepare", "dub"]
PREPARE_THREAD_NAME = "lipsync-prepare"  # the one worker thread that runs every job, in order
PREVIEW_THREAD_NAME = "lipsync-preview"  # the one worker thread that makes every preview, in order
RESULTS_DIR_PREFIX = "lipsync-results-"
DUB_OUTPUT_SUFFIX = "-lipsync.mp4"
# What a dub job may change per request; the model, device and dtype are the server's.
DUB_OPTIONS = frozenset({"bbox_shift", "extra_margin", "face_index", "silence"})
T = TypeVar("T")


class TooManySessions(LipsyncError):
    """All session slots are taken."""


class UnknownJob(LipsyncError):
    """No job has this id."""


class JobConflict(LipsyncError):
    """A prepare job for this avatar is already queued or running, or a result was asked for too early."""


class TooManyJobs(LipsyncError):
    """`max_jobs` jobs are already queued or running."""


@dataclass(frozen=True)
class Health:
    status: Literal["ok"]
    device: str
    dtype: str
    sessions: int
    max_sessions: int
    untrained: bool


@dataclass(frozen=True)
class PrepareRequest:
    """Prepare `name` from `source` (a path the caller has checked) or from the upload of id `upload`."""

    name: str
    source: Path | None
    bbox_shift: int = 0
    force: bool = False
    upload: str | None = None  # its file is removed when the job ends


@dataclass(frozen=True)
class MediaInput:
    """A file a job reads: a path the caller has checked, or the id of an upload (which the job takes)."""

    path: Path | None = None
    upload: str | None = None


@dataclass(frozen=True)
class DubRequest:
    """Dub `video` with the speech in `audio`; `options` are DubSettings options by name (DUB_OPTIONS)."""

    video: MediaInput
    audio: MediaInput
    options: dict[str, Any]


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job."""

    id: str
    name: str
    status: JobState
    progress: float  # 0.0 .. 1.0
    error: str | None
    kind: JobKind = "prepare"
    result: str | None = None  # a dub job's output file name, once done


@dataclass
class _Job:
    id: str
    kind: JobKind
    name: str
    inputs: dict[str, Path]  # role -> file the job reads
    uploads: tuple[Path, ...]  # the uploaded files among `inputs`, removed when the job ends
    prepare: PrepareRequest | None = None
    dub: DubSettings | None = None
    output: Path | None = None  # a dub job's output (its folder is the job's own)
    status: JobState = "queued"
    progress: float = 0.0
    error: str | None = None
    finished: float | None = None  # time.monotonic() when it ended (done or failed)
    shown: dict[str, str] = field(default_factory=dict)  # server path -> the name the client knows it by

    def snapshot(self) -> JobStatus:
        result = self.output.name if self.output is not None and self.status == "done" else None
        return JobStatus(self.id, self.name, self.status, self.progress, self.error, self.kind, result)


class SessionSlot:
    """One claimed session slot. `release` gives it back; calls after the first do nothing."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class ServerEngine:
    """Models, avatar store and cache, the session count, and the background prepare jobs.

    `settings` are the defaults of the methods that take limits; the app passes its own.
    """

    def __init__(
        self,
        generator: Generator,
        store: AvatarStore,
        settings: ServerSettings,
        runtime: RuntimeSettings | None = None,
        face: FaceSettings | None = None,
    ) -> None:
        self.generator = generator
        self.face = face or FaceSettings()
        self.store = store
        self.settings = settings
        self.runtime = runtime or RuntimeSettings()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._preview_lock = threading.Lock()
        self._avatars: dict[str, tuple[int | None, Avatar]] = {}  # name -> (manifest mtime, avatar)
        self._sessions = 0
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._results: Path | None = None  # dub outputs, one folder per job
        self.uploads = UploadStore(settings.upload_ttl_seconds)
        # One thread makes every preview: requests made at once wait in its queue, not in threads of their own
        self._previews = ThreadPoolExecutor(1, thread_name_prefix=PREVIEW_THREAD_NAME)

    @classmethod
    def from_pretrained(
        cls, weights: Path, avatars: Path, dub: DubSettings, settings: ServerSettings
    ) -> ServerEngine:
        """Load the generator of a weights folder (`dub` says which family, version, device and dtype)."""
        runtime = dub.runtime
        generator = load_generator(weights, dub.model, dub.version, runtime.device, runtime.dtype)
        return cls(generator, AvatarStore(avatars), settings, runtime, dub.face)

    # --- health and avatars ---------------------------------------------------------------------

    @property
    def sessions(self) -> int:
        with self._lock:
            return self._sessions

    def health(self, settings: ServerSettings | None = None) -> Health:
        settings = settings or self.settings
        return Health(
            status="ok",
            device=str(self.generator.device),
            dtype=dtype_label(self.generator.dtype),
            sessions=self.sessions,
            max_sessions=settings.max_sessions,
            untrained=self.generator.untrained,
        )

    def list_avatars(self) -> list[AvatarInfo]:
        """The store's avatars; one prepared for another model family has `problem` set (it cannot speak)."""
        return [
            replace(info, problem=self._other_family(info.family))
            if info.problem is None and info.family and info.family != self.generator.family
            else info
            for info in self.store.list()
        ]

    def _other_family(self, family: str) -> str:
        return (
            f"it was prepared for the {family} model family, and this server runs {self.generator.family}: "
            'prepare it again on this server (POST /api/avatars with "force": true)'
        )

    def load_avatar(self, name: str) -> Avatar:
        """The avatar from the cache, or loaded (and verified) from the store; blocking, so call it from a
        worker thread. A cached avatar whose manifest changed on disk (prepared again elsewhere) is reloaded.
        An avatar prepared for another model family raises AvatarError: this server's model cannot use it.
        """
        stamp = self._manifest_stamp(name)
        with self._load_lock:
            cached = self._avatars.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            avatar = self.store.load(name)
            if avatar.family != self.generator.family:
                raise AvatarError(
                    f"avatar {name!r} cannot speak here: {self._other_family(avatar.family)}",
                    f'prepare it again: POST /api/avatars {{"name": "{name}", "source": "VIDEO", '
                    f'"force": true}} (or `lipsync avatar prepare VIDEO --name {name} --force` with this '
                    f"server's weights), or start the server with weights of the {avatar.family} family",
                )
            self._avatars[name] = (stamp, avatar)
            return avatar

    def _manifest_stamp(self, name: str) -> int | None:
        try:
            return (self.store.path(name) / MANIFEST_NAME).stat().st_mtime_ns
        except OSError:
            return None

    def forget_avatar(self, name: str) -> None:
        """Drop a cached avatar (it was prepared again); sessions using it keep their copy."""
        with self._load_lock:
            self._avatars.pop(name, None)

    # --- sessions -------------------------------------------------------------------------------

    def claim_session(self, limit: int | None = None) -> SessionSlot:
        """Take one of `limit` (default: `max_sessions`) slots, or raise TooManySessions.

        The caller releases the slot as soon as its client is gone, before the session's threads have
        stopped: a client that reconnects at once must find its slot free. A session still stopping then
        finishes at most the one batch its device stage holds, so a reconnect overlaps by that much only.
        """
        limit = self.settings.max_sessions if limit is None else limit
        with self._lock:
            if self._sessions >= limit:
                raise TooManySessions(
                    f"the server already runs its limit of {limit} sessions",
                    "close another session and try again, or start the server with a higher --max-sessions",
                )
            self._sessions += 1
        return SessionSlot(self._release_session)

    def _release_session(self) -> None:
        with self._lock:
            self._sessions -= 1

    @contextmanager
    def session_slot(self, limit: int | None = None) -> Iterator[SessionSlot]:
        """A claimed slot (see `claim_session`), released on leaving the block if not before."""
        slot = self.claim_session(limit)
        try:
            yield slot
        finally:
            slot.release()

    @staticmethod
    def stream_settings(settings: ServerSettings) -> StreamSettings:
        """A slow client must not make the server buffer without bound: full buffers drop frames."""
        return replace(settings.stream, drop_when_full=True, max_buffered_frames=settings.max_buffered_frames)

    def open_stream(self, avatar: Avatar, settings: ServerSettings | None = None) -> StreamSession:
        """A new stream session whose frames come JPEG-encoded (on its compose thread)."""
        settings = settings or self.settings
        encode = partial(encode_jpeg, quality=settings.jpeg_quality)
        return StreamSession(self.generator, avatar, self.stream_settings(settings), encode_image=encode)

    # --- first-frame preview --------------------------------------------------------------------

    def preview(self, media: MediaInput, options: dict[str, Any]) -> FacePreview:
        """The first-frame preview of a media path or an (unused, kept) upload; blocking, one at a time.
        Errors name the file as the client knows it, never by its path on the server."""
        settings = self.dub_settings(options)
        if media.upload is None:
            source = _path(media)
            shown = {str(source): self._media_name(source)}
        else:
            source = self.uploads.peek(media.upload)
            shown = {str(source): self.uploads.name(media.upload)}
        with self._preview_lock:
            try:
                return preview_first_frame(self.generator, source, settings.face, settings.image_fps)
            except LipsyncError as error:
                error.problem, error.fix = (
                    self._for_client(error.problem, shown),
                    self._for_client(error.fix, shown),
                )
                error.args = (error.problem,)
                raise

    def in_preview_thread(self, work: Callable[[], T]) -> Future[T]:
        """Run `work` on the one preview thread (after the previews asked for before it)."""
        return self._previews.submit(work)

    def _media_name(self, path: Path) -> str:
        """A media folder file as the client names it: its path relative to the folder."""
        media_dir = self.settings.media_dir
        if media_dir is not None:
            try:
                return path.relative_to(media_dir.resolve()).as_posix()
            except (OSError, ValueError):
                pass
        return path.name

    def _for_client(self, text: str, shown: dict[str, str]) -> str:
        """`text` with every server path in it replaced by the name the client knows it by: the client's
        own file name of an upload, a media file's path relative to the media folder."""
        for path, name in sorted(shown.items(), key=lambda item: -len(item[0])):
            text = text.replace(path, name)
        folders = [str(self.uploads.folder)]
        if self._results is not None:
            folders.append(str(self._results))
        media_dir = self.settings.media_dir
        if media_dir is not None:
            folders += [str(media_dir.resolve())] + ([str(media_dir)] if media_dir.is_absolute() else [])
        for folder in folders:
            text = re.sub(re.escape(folder) + r"/?", "", text)
        return text

    # --- jobs: prepare an avatar, dub a video ----------------------------------------------------

    def prepare_settings(self, bbox_shift: int) -> DubSettings:
        return DubSettings(face=replace(self.face, bbox_shift=bbox_shift), runtime=self.runtime)

    def dub_settings(self, options: dict[str, Any]) -> DubSettings:
        """The server's settings with a dub request's options applied; a bad option raises LipsyncError."""
        unknown = sorted(set(options) - DUB_OPTIONS)
        if unknown:
            raise LipsyncError(
                f"unknown dub option(s): {', '.join(unknown)}",
                f"send only {', '.join(sorted(DUB_OPTIONS))} (the model and device are the server's)",
            )
        for name, value in options.items():
            least = BATCH_OPTION_MINIMUMS.get(name)
            if least is not None and value < least:
                raise LipsyncError(
                    f"{name} {value} is below {least}, the smallest that works",
                    "face_index 0 is the largest face, 1 the next largest, ..."
                    if name == "face_index"
                    else f"give {name} {least} or more",
                )
        return DubSettings(face=self.face, runtime=self.runtime).with_options(**options)

    def submit_prepare(self, request: PrepareRequest) -> JobStatus:
        """Queue a prepare job (one worker thread runs all jobs, one after another).

        At most `max_jobs` jobs may be queued or running; an upload is taken by the job (and given back
        if the job is refused).
        """
        if (request.source is None) == (request.upload is None):
            raise LipsyncError("a prepare job needs a source or an upload, not both", "give exactly one")
        media = {"source": MediaInput(request.source, request.upload)}

        def conflict(active: list[_Job]) -> None:
            for job in active:
                if job.kind == "prepare" and job.name == request.name:
                    raise JobConflict(
                        f"avatar {request.name!r} is already being prepared (job {job.id})",
                        f"wait until GET /api/jobs/{job.id} says done or failed, then retry",
                    )

        return self._submit("prepare", request.name, media, conflict, prepare=request)

    def submit_dub(self, request: DubRequest) -> JobStatus:
        """Queue a dub job: its output goes to a folder of its own, removed when the job is forgotten."""
        settings = self.dub_settings(request.options)
        media = {"video": request.video, "audio": request.audio}
        for role, given in media.items():
            if (given.path is None) == (given.upload is None):
                raise LipsyncError(
                    f"a dub job needs its {role} as a media path or an upload, not both",
                    f"give exactly one of '{role}' and '{role}_upload'",
                )
        return self._submit("dub", "", media, lambda active: None, dub=settings)

    def _submit(
        self,
        kind: JobKind,
        name: str,
        media: dict[str, MediaInput],
        conflict: Callable[[list[_Job]], None],
        **request: Any,
    ) -> JobStatus:
        self.uploads.prune()
        with self._lock:
            if self._closed:
                raise LipsyncError("the server is shutting down", "start it again, then retry")
            self._forget_finished_jobs()
            active = [job for job in self._jobs.values() if job.status in ("queued", "running")]
            conflict(active)
            limit = self.settings.max_jobs
            if len(active) >= limit:
                raise TooManyJobs(
                    f"the server already has its limit of {limit} jobs queued or running",
                    "wait until some of them are done or failed, then retry",
                )
            names = {  # role -> the file name the client knows; raises before any upload is taken
                role: self.uploads.name(given.upload) if given.upload is not None else _path(given).name
                for role, given in media.items()
            }
            inputs: dict[str, Path] = {}
            claimed: dict[str, Path] = {}  # upload id -> its file; one upload may serve two roles
            try:
                for role, given in media.items():
                    if given.upload is None:
                        inputs[role] = _path(given)
                    else:
                        if given.upload not in claimed:
                            claimed[given.upload] = self.uploads.claim(given.upload)
                        inputs[role] = claimed[given.upload]
                job = _Job(uuid.uuid4().hex, kind, name, inputs, tuple(claimed.values()), **request)
                if kind == "dub":
                    stem = PurePath(names["video"]).stem or "dub"
                    job.name = names["video"]
                    job.output = self._results_folder() / job.id / f"{stem}{DUB_OUTPUT_SUFFIX}"
                    job.shown[str(job.output)] = job.output.name
            except BaseException:  # refused after all: the uploads are unused again
                by_path = {path: upload_id for upload_id, path in claimed.items()}
                for role, path in inputs.items():
                    if path in by_path:
                        self.uploads.give_back(by_path.pop(path), path, names[role])
                raise
            for role, path in inputs.items():
                given = media[role]
                job.shown[str(path)] = names[role] if given.upload is not None else self._media_name(path)
            self._jobs[job.id] = job
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=PREPARE_THREAD_NAME, daemon=True)
                self._worker.start()
            self._queue.put(job)
            return job.snapshot()

    def _results_folder(self) -> Path:
        """The private (0700) folder of dub outputs, made on first use; call with `_lock` held."""
        if self._results is None:
            self._results = Path(tempfile.mkdtemp(prefix=RESULTS_DIR_PREFIX))
        return self._results

    def job(self, job_id: str) -> JobStatus:
        self.uploads.prune()
        with self._lock:
            self._forget_finished_jobs()
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(
                    f"no job {job_id!r}",
                    "use the id that POST /api/avatars or /api/dubs answered with (finished jobs are "
                    f"forgotten after {self.settings.job_ttl_seconds:g} s)",
                )
            return job.snapshot()

    def job_result(self, job_id: str) -> Path:
        """The output file of a finished dub job."""
        status = self.job(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
            output = job.output if job is not None else None
        if status.kind != "dub" or output is None:
            raise UnknownJob(f"job {job_id!r} is not a dub job", "only dub jobs have a result to download")
        if status.status != "done":
            raise JobConflict(
                f"job {job_id!r} is {status.status}, not done",
                "wait until GET /api/jobs/ID says done"
                + (f" (it failed: {status.error})" if status.status == "failed" else ""),
            )
        return output

    def _forget_finished_jobs(self) -> None:
        """Drop jobs that ended over `job_ttl_seconds` ago, with their outputs; call with `_lock` held."""
        cutoff = time.monotonic() - self.settings.job_ttl_seconds
        old = [key for key, job in self._jobs.items() if job.finished is not None and job.finished <= cutoff]
        for key in old:
            _remove_output(self._jobs.pop(key))

    def _end(self, job: _Job, status: JobState, error: str | None = None) -> None:
        """Mark a job done or failed, and remove its uploads (and a failed job's output folder)."""
        with self._lock:
            job.status, job.error, job.finished = status, error, time.monotonic()
            if status == "done":
                job.progress = 1.0
        for path in job.uploads:
            remove(path)
        if status == "failed":
            _remove_output(job)

    def _update(self, job: _Job, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.status == "queued":  # not failed by close()
                self._run_job(job)

    def _run_job(self, job: _Job) -> None:
        self._update(job, status="running")

        def on_progress(fraction: float) -> None:
            self._update(job, progress=min(max(float(fraction), 0.0), 1.0))

        try:
            if job.prepare is not None:
                self._prepare(job, job.prepare, on_progress)
            else:
                self._dub(job, on_progress)
        except LipsyncError as error:
            self._end(job, "failed", self._for_client(str(error), job.shown))
        except Exception as error:  # a bug must not kill the worker: report it on the job
            problem = self._for_client(f"internal error: {type(error).__name__}: {error}", job.shown)
            self._end(job, "failed", problem)
        else:
            self._end(job, "done")

    def _prepare(self, job: _Job, request: PrepareRequest, on_progress: Callable[[float], None]) -> None:
        prepare_avatar(
            self.generator,
            self.store,
            request.name,
            job.inputs["source"],
            self.prepare_settings(request.bbox_shift),
            force=request.force,
            on_progress=on_progress,
            show_bar=False,
        )
        self.forget_avatar(request.name)

    def _dub(self, job: _Job, on_progress: Callable[[float], None]) -> None:
        assert job.output is not None and job.dub is not None
        job.output.parent.mkdir(mode=0o700)
        pipeline = DubPipeline(self.generator, job.dub)
        pipeline(
            job.inputs["video"], job.inputs["audio"], job.output, progress=False, on_progress=on_progress
        )

    def close(self, wait: bool = False) -> None:
        """Stop taking jobs; queued ones fail. With `wait`, also wait for the running one."""
        with self._lock:
            self._closed = True
            worker = self._worker
            queued = [job for job in self._jobs.values() if job.status == "queued"]
            for job in queued:  # under the lock, so that the worker skips them
                job.status, job.error = "failed", "the server shut down before the job started"
                job.finished = time.monotonic()
        for job in queued:
            for path in job.uploads:
                remove(path)
        if worker is not None:
            self._queue.put(None)
            if wait:
                worker.join()
        self._previews.shutdown(wait=wait, cancel_futures=True)
        self.uploads.close()
        with self._lock:
            results, self._results = self._results, None
        # Removed even under a running job, which then fails: the process may end before that job does,
        # and nothing of the results may outlive the server.
        if results is not None:
            shutil.rmtree(results, ignore_errors=True)
        with self._load_lock:
            self._avatars.clear()


def _path(given: MediaInput) -> Path:
    assert given.path is not None, "a media input is a path or an upload"
    return given.path


def _remove_output(job: _Job) -> None:
    if job.output is not None:
        shutil.rmtree(job.output.parent, ignore_errors=True)
