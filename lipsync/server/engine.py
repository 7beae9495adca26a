"""What `lipsync serve` holds between requests: the generator (loaded once), the avatars, sessions and jobs.

Thread-safe: the event loop, the worker threads of the stream sessions and the one prepare worker all use it.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

from lipsync.config import DubSettings, FaceSettings, RuntimeSettings, ServerSettings, StreamSettings
from lipsync.errors import LipsyncError
from lipsync.models.device import dtype_label
from lipsync.models.families import load_generator
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import Avatar, AvatarInfo, AvatarStore, prepare_avatar
from lipsync.pipeline.avatar_store import MANIFEST_NAME
from lipsync.pipeline.stream import StreamSession
from lipsync.server.protocol import encode_jpeg
from lipsync.server.uploads import UploadStore, remove

JobState = Literal["queued", "running", "done", "failed"]
PREPARE_THREAD_NAME = "lipsync-prepare"


class TooManySessions(LipsyncError):
    """All session slots are taken."""


class UnknownJob(LipsyncError):
    """No prepare job has this id."""


class JobConflict(LipsyncError):
    """A prepare job for this avatar is already queued or running."""


class TooManyJobs(LipsyncError):
    """`max_jobs` prepare jobs are already queued or running."""


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
class JobStatus:
    """A snapshot of a prepare job."""

    id: str
    name: str
    status: JobState
    progress: float  # 0.0 .. 1.0
    error: str | None


@dataclass
class _Job:
    id: str
    request: PrepareRequest
    source: Path
    status: JobState = "queued"
    progress: float = 0.0
    error: str | None = None
    finished: float | None = None  # time.monotonic() when it ended (done or failed)

    def snapshot(self) -> JobStatus:
        return JobStatus(self.id, self.request.name, self.status, self.progress, self.error)


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
        self._avatars: dict[str, tuple[int | None, Avatar]] = {}  # name -> (manifest mtime, avatar)
        self._sessions = 0
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.uploads = UploadStore(settings.upload_ttl_seconds)

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
        return self.store.list()

    def load_avatar(self, name: str) -> Avatar:
        """The avatar from the cache, or loaded (and verified) from the store; blocking, so call it from a
        worker thread. A cached avatar whose manifest changed on disk (prepared again elsewhere) is reloaded.
        """
        stamp = self._manifest_stamp(name)
        with self._load_lock:
            cached = self._avatars.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            avatar = self.store.load(name)
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

    # --- prepare jobs ---------------------------------------------------------------------------

    def prepare_settings(self, bbox_shift: int) -> DubSettings:
        return DubSettings(face=replace(self.face, bbox_shift=bbox_shift), runtime=self.runtime)

    def submit_prepare(self, request: PrepareRequest) -> JobStatus:
        """Queue a prepare job; one worker thread runs the jobs one after another.

        At most `max_jobs` jobs may be queued or running; an upload is taken by the job (and given back
        if the job is refused).
        """
        if (request.source is None) == (request.upload is None):
            raise LipsyncError("a prepare job needs a source or an upload, not both", "give exactly one")
        self.uploads.prune()
        with self._lock:
            if self._closed:
                raise LipsyncError("the server is shutting down", "start it again, then retry")
            self._forget_finished_jobs()
            active = [job for job in self._jobs.values() if job.status in ("queued", "running")]
            for job in active:
                if job.request.name == request.name:
                    raise JobConflict(
                        f"avatar {request.name!r} is already being prepared (job {job.id})",
                        f"wait until GET /api/jobs/{job.id} says done or failed, then retry",
                    )
            limit = self.settings.max_jobs
            if len(active) >= limit:
                raise TooManyJobs(
                    f"the server already has its limit of {limit} prepare jobs queued or running",
                    "wait until some of them are done or failed, then retry",
                )
            source = request.source if request.upload is None else self.uploads.claim(request.upload)
            assert source is not None
            job = _Job(uuid.uuid4().hex, request, source)
            self._jobs[job.id] = job
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=PREPARE_THREAD_NAME, daemon=True)
                self._worker.start()
            self._queue.put(job)
            return job.snapshot()

    def job(self, job_id: str) -> JobStatus:
        self.uploads.prune()
        with self._lock:
            self._forget_finished_jobs()
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(f"no job {job_id!r}", "use the id that POST /api/avatars answered with")
            return job.snapshot()

    def _forget_finished_jobs(self) -> None:
        """Drop jobs that ended over `job_ttl_seconds` ago; call with `_lock` held."""
        cutoff = time.monotonic() - self.settings.job_ttl_seconds
        old = [key for key, job in self._jobs.items() if job.finished is not None and job.finished <= cutoff]
        for key in old:
            del self._jobs[key]

    def _end(self, job: _Job, status: JobState, error: str | None = None) -> None:
        """Mark a job done or failed, and remove its upload."""
        with self._lock:
            job.status, job.error, job.finished = status, error, time.monotonic()
            if status == "done":
                job.progress = 1.0
        if job.request.upload is not None:
            remove(job.source)

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
        request = job.request
        self._update(job, status="running")

        def on_progress(fraction: float) -> None:
            self._update(job, progress=min(max(float(fraction), 0.0), 1.0))

        try:
            prepare_avatar(
                self.generator,
                self.store,
                request.name,
                job.source,
                self.prepare_settings(request.bbox_shift),
                force=request.force,
                on_progress=on_progress,
                show_bar=False,
            )
        except LipsyncError as error:
            self._end(job, "failed", str(error))
        except Exception as error:  # a bug must not kill the worker: report it on the job
            self._end(job, "failed", f"internal error: {type(error).__name__}: {error}")
        else:
            self.forget_avatar(request.name)
            self._end(job, "done")

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
            if job.request.upload is not None:
                remove(job.source)
        if worker is not None:
            self._queue.put(None)
            if wait:
                worker.join()
        self.uploads.close()
        with self._load_lock:
            self._avatars.clear()
