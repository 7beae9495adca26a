"""The FastAPI app of `lipsync serve`: REST for avatars, jobs and health; one WebSocket per live session.

See docs/streaming-protocol.md. The WebSocket handler runs two loops at once: one receives audio and control
messages, one sends frames (and asks for idle frames, paced by the wall clock, while nobody speaks). Calls
that block (loading an avatar, waiting for a frame, closing a session) run in worker threads; the session is
always closed, whichever way the socket ends.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, get_args

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.websockets import WebSocketDisconnect

from lipsync.config import AUDIO_SAMPLE_RATE, ServerSettings, SilenceMode
from lipsync.errors import LipsyncError
from lipsync.pipeline.avatar import AvatarInfo
from lipsync.pipeline.avatar_store import check_name
from lipsync.pipeline.preview import FacePreview
from lipsync.pipeline.stream import StreamFrame, StreamSession
from lipsync.server.engine import (
    DubRequest,
    JobConflict,
    MediaInput,
    PrepareRequest,
    ServerEngine,
    TooManyJobs,
    TooManySessions,
    UnknownJob,
)
from lipsync.server.hosts import HostGuard, HostRules
from lipsync.server.protocol import (
    CloseCode,
    ErrorMessage,
    ProtocolError,
    ReadyMessage,
    encode_frame,
    encode_jpeg,
    int16_to_pcm,
    parse_control,
    pcm_to_float,
)
from lipsync.server.uploads import (
    UploadTimeout,
    UploadTooBig,
    UploadTypeRefused,
    check_upload_type,
    media_files,
    media_source,
)

log = logging.getLogger(__name__)
SessionLoop = Callable[[WebSocket, StreamSession, ServerSettings], Awaitable[ErrorMessage | None]]

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_PAGE = STATIC_DIR / "index.html"
DUB_PAGE = STATIC_DIR / "dub.html"
PREVIEW_JPEG_QUALITY = 90
BEARER_SCHEME = "bearer"  # compared case-insensitively (RFC 7235: auth schemes are case-insensitive)
TOKEN_QUERY = "token"


class ApiError(LipsyncError):
    """A REST request that cannot be served; `status` is the HTTP status of the answer."""

    def __init__(self, status: int, problem: str, fix: str) -> None:
        super().__init__(problem, fix)
        self.status = status


ERROR_STATUS: dict[type[LipsyncError], int] = {
    UnknownJob: 404,
    JobConflict: 409,
    UploadTooBig: 413,
    UploadTypeRefused: 415,
    UploadTimeout: 408,
    TooManySessions: 429,
    TooManyJobs: 429,
}
DEFAULT_ERROR_STATUS = 400
REQUEST_EXAMPLES = {  # shown when a request body cannot be read
    "/api/avatars": '{"name": "anna", "source": "clips/anna.mp4", "bbox_shift": 0} '
    '(or {"name": "anna", "upload": "<id>"})',
    "/api/preview": '{"source": "clips/anna.mp4", "bbox_shift": 0, "extra_margin": 10, "face_index": 0} '
    '(or {"upload": "<id>", ...})',
    "/api/dubs": '{"video": "clips/anna.mp4", "audio": "speech/hello.wav", "bbox_shift": 0, '
    '"silence": "keep"} (or "video_upload" / "audio_upload": "<id>")',
}


class PrepareBody(BaseModel):
    """Body of POST /api/avatars."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str | None = None  # a video or photo path relative to the server's media folder
    upload: str | None = None  # or the id POST /api/uploads answered with (exactly one of the two)
    bbox_shift: int = 0
    force: bool = False  # prepare again even when a prepared avatar of this source exists


class FaceOptions(BaseModel):
    """The face options a preview or a dub may set; unset ones keep the server's settings."""

    model_config = ConfigDict(extra="forbid")

    bbox_shift: int | None = None
    extra_margin: int | None = None
    face_index: int | None = None

    def options(self) -> dict[str, Any]:
        """The options given, by DubSettings name."""
        given = {name: getattr(self, name) for name in FaceOptions.model_fields}
        return {name: value for name, value in given.items() if value is not None}


class PreviewBody(FaceOptions):
    """Body of POST /api/preview: a video or photo, by media path or upload id (exactly one)."""

    source: str | None = None
    upload: str | None = None


class DubBody(FaceOptions):
    """Body of POST /api/dubs: the video (or photo) and the speech, each by media path or upload id."""

    video: str | None = None
    video_upload: str | None = None
    audio: str | None = None
    audio_upload: str | None = None
    silence: SilenceMode | None = None

    def options(self) -> dict[str, Any]:
        options = super().options()
        if self.silence is not None:
            options["silence"] = self.silence
        return options


@dataclass(frozen=True)
class AvatarSummary:
    """One entry of GET /api/avatars."""

    name: str
    fps: float
    width: int
    height: int
    frames: int
    frames_with_face: int
    source: str
    created: str
    problem: str | None  # set when the prepared files cannot be used

    @classmethod
    def of(cls, info: AvatarInfo) -> AvatarSummary:
        return cls(
            name=info.name,
            fps=float(info.fps),
            width=info.width,
            height=info.height,
            frames=info.frame_count,
            frames_with_face=info.frames_with_face,
            source=str(info.source),
            created=info.created,
            problem=info.problem,
        )


def token_matches(expected: str | None, given: str | None) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of 'Bearer TOKEN'; the scheme in any case ('bearer', 'BEARER'), as RFC 7235 says."""
    if authorization is None:
        return None
    parts = authorization.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != BEARER_SCHEME:
        return None
    return parts[1].strip()


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "missing or wrong token",
        "send the server's token as 'Authorization: Bearer TOKEN' (WebSocket: or ?token=TOKEN in the URL)",
    )


def create_app(engine: ServerEngine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="lipsync", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HostGuard, rules=HostRules(settings.token, settings.allowed_hosts))

    async def require_token(request: Request) -> None:  # async: no worker thread per request
        if not token_matches(settings.token, bearer_token(request.headers.get("authorization"))):
            raise _unauthorized()

    @app.exception_handler(LipsyncError)
    async def lipsync_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, LipsyncError)
        status = error.status if isinstance(error, ApiError) else ERROR_STATUS.get(type(error))
        return _error_response(status or DEFAULT_ERROR_STATUS, error.problem, error.fix)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        example = REQUEST_EXAMPLES.get(request.url.path.rstrip("/"), REQUEST_EXAMPLES["/api/avatars"])
        return _error_response(DEFAULT_ERROR_STATUS, f"bad request: {problems}", f"send JSON like {example}")

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    @api.get("/health")
    async def health() -> dict[str, Any]:
        return _as_json(engine.health(settings))

    @api.get("/avatars")
    async def avatars() -> dict[str, Any]:
        infos = await anyio.to_thread.run_sync(engine.list_avatars)
        return {"avatars": [_as_json(AvatarSummary.of(info)) for info in infos]}

    @api.post("/avatars", status_code=202)
    async def prepare(body: PrepareBody) -> dict[str, Any]:
        if (body.source is None) == (body.upload is None):
            raise ApiError(
                400,
                "a prepare request needs exactly one of 'source' and 'upload'",
                'send {"name": "anna", "source": "PATH/IN/MEDIA/FOLDER.mp4"} or {"name": "anna", '
                '"upload": "<id from POST /api/uploads>"}',
            )
        check_name(body.name)
        source = None
        if body.source is not None:
            source = await anyio.to_thread.run_sync(media_source, settings.media_dir, body.source)
        request = PrepareRequest(body.name, source, body.bbox_shift, body.force, upload=body.upload)
        job = engine.submit_prepare(request)
        return {"job": job.id}

    @api.post("/uploads", status_code=201)
    async def upload(request: Request, name: str | None = None) -> dict[str, Any]:
        check_upload_type(request.headers.get("content-type"))
        limit = settings.max_upload_bytes
        too_big = UploadTooBig(
            f"the upload is over the limit of {limit} bytes",
            "send a shorter or smaller video or photo (the limit is the server's max_upload_bytes)",
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        # Without a Content-Length the upload may grow to the limit: that much room is held for it.
        reserved = int(declared) if declared is not None and declared.isdigit() else limit
        upload_id, partial = engine.uploads.begin(name, reserved, settings.max_upload_total_bytes)
        size = 0
        try:
            with partial.open("xb") as file:
                async for chunk in _timed_body(request, settings):
                    size += len(chunk)
                    if size > reserved:
                        raise too_big
                    file.write(chunk)
            engine.uploads.finish(upload_id, partial, name)
        finally:
            engine.uploads.abandon(upload_id, partial)  # nothing left to do when finished
        return {"upload": upload_id}

    @api.get("/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return _as_json(engine.job(job_id))

    @api.get("/jobs/{job_id}/result")
    async def job_result(job_id: str) -> Response:
        output = engine.job_result(job_id)
        return FileResponse(output, media_type="video/mp4", filename=output.name)

    async def media_input(path: str | None, upload: str | None, role: str) -> MediaInput:
        _exactly_one(path, upload, role)
        if path is not None:
            return MediaInput(path=await anyio.to_thread.run_sync(media_source, settings.media_dir, path))
        return MediaInput(upload=upload)

    @api.get("/dub-defaults")
    async def dub_defaults() -> dict[str, Any]:
        face = engine.face
        return {
            "bbox_shift": face.bbox_shift,
            "extra_margin": face.extra_margin,
            "face_index": face.face_index,
            "max_faces": face.max_faces,
            "silence": engine.dub_settings({}).silence,
            "silence_modes": list(get_args(SilenceMode)),
            "max_upload_bytes": settings.max_upload_bytes,
            "media_folder": settings.media_dir is not None,
            "untrained": engine.generator.untrained,
        }

    @api.get("/media")
    async def media() -> dict[str, Any]:
        files = await anyio.to_thread.run_sync(media_files, settings.media_dir)
        return {"files": files}

    @api.post("/preview")
    async def preview(body: PreviewBody) -> dict[str, Any]:
        _exactly_one(body.source, body.upload, "source")

        def make() -> tuple[FacePreview, bytes]:
            path = None if body.source is None else media_source(settings.media_dir, body.source)
            found = engine.preview(MediaInput(path, body.upload), body.options())
            return found, encode_jpeg(found.image, PREVIEW_JPEG_QUALITY)

        found, jpeg = await asyncio.wrap_future(engine.in_preview_thread(make))
        box = found.box
        return {
            "image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"),
            "width": int(found.image.shape[1]),
            "height": int(found.image.shape[0]),
            "faces": found.faces,
            "box": [box.x1, box.y1, box.x2, box.y2],
            "frames": found.frame_count,
            "fps": float(found.fps),
        }

    @api.post("/dubs", status_code=202)
    async def dub(body: DubBody) -> dict[str, Any]:
        video = await media_input(body.video, body.video_upload, "video")
        audio = await media_input(body.audio, body.audio_upload, "audio")
        job = engine.submit_dub(DubRequest(video, audio, body.options()))
        return {"job": job.id}

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        if not INDEX_PAGE.is_file():
            return _error_response(404, "the browser page is not installed", "reinstall lipsync")
        return FileResponse(INDEX_PAGE)

    @app.get("/dub", include_in_schema=False)
    async def dub_page() -> Response:
        if not DUB_PAGE.is_file():
            return _error_response(404, "the dubbing page is not installed", "reinstall lipsync")
        return FileResponse(DUB_PAGE)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.websocket("/ws/{avatar}")
    async def live(websocket: WebSocket, avatar: str) -> None:
        await websocket.accept()
        given = websocket.query_params.get(TOKEN_QUERY) or bearer_token(
            websocket.headers.get("authorization")
        )
        if not token_matches(settings.token, given):
            await _close(websocket, ErrorMessage.from_error(_unauthorized(), CloseCode.UNAUTHORIZED))
            return
        try:
            slot = engine.claim_session(settings.max_sessions)
        except TooManySessions as error:
            await _close(websocket, ErrorMessage.from_error(error, CloseCode.TOO_MANY_SESSIONS))
            return
        try:
            await _live_session(websocket, engine, settings, avatar, slot.release)
        finally:
            slot.release()

    return app


async def _timed_body(request: Request, settings: ServerSettings) -> AsyncIterator[bytes]:
    """The request body's chunks, or UploadTimeout once none came for `upload_idle_seconds` or the whole
    body took over `upload_max_seconds`: a client that stalls must not hold a connection and a file."""
    chunks = request.stream()
    deadline = time.monotonic() + settings.upload_max_seconds
    while True:
        left = deadline - time.monotonic()
        with anyio.move_on_after(max(0.0, min(settings.upload_idle_seconds, left))) as waited:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
        if waited.cancelled_caught:
            if left <= settings.upload_idle_seconds:
                problem = f"the upload took over {settings.upload_max_seconds:g} s"
            else:
                problem = f"the upload sent no bytes for {settings.upload_idle_seconds:g} s"
            raise UploadTimeout(f"{problem}; it was dropped", "send the file again over a steady connection")
        yield chunk


def _exactly_one(path: str | None, upload: str | None, role: str) -> None:
    if (path is None) == (upload is None):
        upload_field = "upload" if role == "source" else f"{role}_upload"
        raise ApiError(
            400,
            f"the {role} needs exactly one of '{role}' (a path in the media folder) and "
            f"'{upload_field}' (an upload id)",
            f'send {{"{role}": "PATH/IN/MEDIA/FOLDER"}} or {{"{upload_field}": "<id from POST '
            '/api/uploads>"}',
        )


def _as_json(item: Any) -> dict[str, Any]:
    fields: dict[str, Any] = asdict(item)
    return fields


def _error_response(status: int, problem: str, fix: str) -> JSONResponse:
    return JSONResponse({"error": problem, "fix": fix}, status_code=status)


def _internal_error(error: Exception) -> ErrorMessage:
    return ErrorMessage(
        f"internal error: {type(error).__name__}: {error}", "report this as a bug", CloseCode.INTERNAL_ERROR
    )


async def _close(websocket: WebSocket, message: ErrorMessage) -> None:
    """Send the error, then close with its code; the client may be gone already."""
    try:
        await websocket.send_text(message.to_json())
        await websocket.close(int(message.code))
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _live_session(
    websocket: WebSocket,
    engine: ServerEngine,
    settings: ServerSettings,
    name: str,
    release_slot: Callable[[], None],
) -> None:
    """Serve one session; `release_slot` is called as soon as the client is gone (or the session ends),
    before the session's threads are stopped, so that a client reconnecting at once finds a free slot.
    """
    try:
        avatar = await anyio.to_thread.run_sync(engine.load_avatar, name)
    except LipsyncError as error:
        await _close(websocket, ErrorMessage.from_error(error, CloseCode.UNKNOWN_AVATAR))
        return
    try:
        with anyio.CancelScope(shield=True):  # a session, once made, must reach the `finally` below
            session = await anyio.to_thread.run_sync(engine.open_stream, avatar, settings)
    except LipsyncError as error:
        await _close(websocket, ErrorMessage.from_error(error, CloseCode.UNKNOWN_AVATAR))
        return
    except Exception as error:  # a bug: end this session with a reason, not the server
        log.exception("live session could not start")
        await _close(websocket, _internal_error(error))
        return
    try:
        ready = ReadyMessage.create(
            name, session.fps, session.width, session.height, engine.generator.untrained
        )
        await websocket.send_text(ready.to_json())
        problem = await _run_loops(websocket, session, settings, release_slot)
        if problem is not None:
            await _close(websocket, problem)
    except WebSocketDisconnect:
        pass
    finally:
        release_slot()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(session.close)


async def _run_loops(
    websocket: WebSocket, session: StreamSession, settings: ServerSettings, ended: Callable[[], None]
) -> ErrorMessage | None:
    """Receive and send until the client leaves or breaks the protocol; the problem to report, if any.

    `ended` is called the moment either loop stops, without waiting for the other one (the send loop may be
    waiting a frame period in a worker thread).
    """
    problems: list[ErrorMessage] = []

    async with anyio.create_task_group() as group:

        async def guarded(loop: SessionLoop) -> None:
            try:
                problem = await loop(websocket, session, settings)
                if problem is not None:
                    problems.append(problem)
            except WebSocketDisconnect:
                pass
            except Exception as error:  # a bug: end this session, not the server
                log.exception("live session failed")
                problems.append(_internal_error(error))
            finally:
                ended()
                group.cancel_scope.cancel()

        group.start_soon(guarded, _receive_loop)
        group.start_soon(guarded, _send_loop)
    return problems[0] if problems else None


async def _receive_loop(
    websocket: WebSocket, session: StreamSession, settings: ServerSettings
) -> ErrorMessage | None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        try:
            data: bytes | None = message.get("bytes")
            text: str | None = message.get("text")
            size = len(data) if data is not None else len((text or "").encode("utf-8"))
            if size > settings.max_message_bytes:
                raise ProtocolError(
                    f"message of {size} bytes is over the limit of {settings.max_message_bytes}",
                    "send audio in smaller chunks (e.g. 20-200 ms each)",
                    CloseCode.MESSAGE_TOO_BIG,
                )
            if data is not None:
                _push_audio(session, data, settings)
            elif text is not None:
                parse_control(text)
                session.end_speech()
        except ProtocolError as error:
            return ErrorMessage.from_error(error, error.code)


def _push_audio(session: StreamSession, data: bytes, settings: ServerSettings) -> None:
    samples = pcm_to_float(data)
    if samples.size == 0:
        return
    waiting = session.pending_audio_seconds + samples.size / AUDIO_SAMPLE_RATE
    if waiting > settings.max_pending_audio_seconds:
        raise ProtocolError(
            f"{waiting:.2f} s of audio would be waiting to be turned into frames, over the limit of "
            f"{settings.max_pending_audio_seconds:g} s",
            "send audio at about real-time pace, not faster than the server renders it",
            CloseCode.TOO_MUCH_AUDIO,
        )
    session.push_audio(samples)


class IdlePacer:
    """When each idle frame is due on the wall clock: frame i at start + i / fps.

    Frames already sent ahead of time (a fast speech turn) make the next idle frame wait; when the stream has
    fallen behind (a slow speech turn), the clock is moved so that idle frames do not rush to catch up.
    """

    def __init__(self, fps: Fraction, start: float) -> None:
        self.fps = fps
        self.period = float(1 / fps)
        self.start = start

    def due(self, index: int) -> float:
        return self.start + float(index / self.fps)

    def catch_up(self, index: int, now: float) -> None:
        if now - self.due(index) > self.period:
            self.start = now - float(index / self.fps)


async def _send_loop(
    websocket: WebSocket, session: StreamSession, settings: ServerSettings
) -> ErrorMessage | None:
    """Send every frame as it comes; while nobody speaks and nothing is waiting, ask for idle frames.

    One idle frame is asked for at a time, when it is due on the wall clock, so idle frames flow at the
    avatar's frame rate. A client that reads slowly makes `send_bytes` wait; meanwhile the session's bounded
    buffer drops its oldest frames (counted in `dropped`) instead of growing.
    """
    pacer = IdlePacer(session.fps, time.monotonic())
    next_index = 0  # the index the next frame will have
    idle_requested = False  # an idle frame was asked for and has not arrived yet
    while True:
        wait = pacer.period
        if not idle_requested and not session.speaking:
            wait = min(wait, max(0.0, pacer.due(next_index) - time.monotonic()))
        frame = await anyio.to_thread.run_sync(session.get, wait)
        if frame is not None:
            next_index = frame.index + 1
            idle_requested = False
            await websocket.send_bytes(await _frame_message(frame, session, settings))
            continue
        if session.speaking:
            idle_requested = False
            continue
        now = time.monotonic()
        if not idle_requested and now >= pacer.due(next_index):
            pacer.catch_up(next_index, now)
            session.add_idle(1)
            idle_requested = True


async def _frame_message(frame: StreamFrame, session: StreamSession, settings: ServerSettings) -> bytes:
    jpeg = frame.encoded
    if jpeg is None:
        jpeg = await anyio.to_thread.run_sync(encode_jpeg, frame.image, settings.jpeg_quality)
    return encode_frame(
        frame.index, frame.time, frame.speech, jpeg, int16_to_pcm(frame.audio), session.dropped
    )
