"""`lipsync bench-live`: latency and throughput of `lipsync serve` under concurrent WebSocket sessions.

Each session streams one speech file as PCM s16le chunks (paced in real time, or as fast as the socket
takes them), then `{"type": "end"}`, and times every speech frame that comes back. The latency of speech
frame i is its receive time minus the send time of the chunk that completed its audio slot: the chunk
holding sample floor((i + 1) * 16000 / fps) - 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, LoadBenchPace, LoadBenchSettings, ServerSettings
from lipsync.errors import LipsyncError, LoadBenchError
from lipsync.io.audio import load_audio
from lipsync.server.protocol import END_MESSAGE, decode_frame, float_to_pcm
from lipsync.server.run import TRANSPORT_SLACK_BYTES

Progress = Callable[[str], None]

LOOPBACK_HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
SERVER_POLL_S = 0.02
HTTP_TIMEOUT_S = 10.0
SESSION_RELEASE_TIMEOUT_S = 30.0  # a closed session's slot must be free again within this
MAX_FRAME_MESSAGE_BYTES = 64 << 20  # frames are a JPEG plus a little PCM; this is only a sanity bound
PCM_SAMPLE_BYTES = 2
WARMUP_SECONDS = 1.0  # audio of the unmeasured session that runs first (model warm-up)
MS_PER_S = 1000.0


# ---------------------------------------------------------------------------------------------------
# Settings (LoadBenchSettings, in lipsync.config with the other settings) and results


@dataclass(frozen=True)
class SessionResult:
    """One session's speech turn, as the client saw it."""

    session: int
    audio_samples: int
    speech_frames: int
    expected_speech_frames: int  # floor(samples * fps / 16000)
    idle_frames: int
    dropped: int  # the server's count in the last frame header
    first_frame_s: float | None  # first audio chunk sent -> first speech frame received
    turn_s: float | None  # first audio chunk sent -> last speech frame received
    latencies_s: tuple[float, ...] = field(repr=False)
    error: str | None = None

    @property
    def frame_count_ok(self) -> bool:
        return self.error is None and self.speech_frames == self.expected_speech_frames

    @property
    def frames_per_second(self) -> float:
        return self.speech_frames / self.turn_s if self.turn_s else 0.0

    @property
    def delivery_fps(self) -> float | None:
        """Speech frames per second from the first speech frame to the last. At real-time pace a session
        that keeps up shows the video's rate here, while frames_per_second stays below it: its span also
        holds the wait for the first frame's audio."""
        if self.first_frame_s is None or self.turn_s is None or self.turn_s <= self.first_frame_s:
            return None
        return (self.speech_frames - 1) / (self.turn_s - self.first_frame_s)


@dataclass(frozen=True)
class ConcurrencyResult:
    """All sessions of one concurrency level, summarised."""

    sessions: int
    wall_s: float
    first_frame_s_mean: float | None
    first_frame_s_max: float | None
    fps_per_session: float  # mean over sessions of speech frames / turn time
    fps_total: float  # all speech frames / (first audio sent -> last speech frame, over all sessions)
    delivery_fps: float | None  # mean over sessions of their rate from first to last speech frame
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    dropped: int
    speech_frames: int
    expected_speech_frames: int
    frame_count_ok: bool
    errors: tuple[str, ...]
    per_session: tuple[SessionResult, ...] = field(repr=False)

    @classmethod
    def summarise(cls, sessions: int, wall_s: float, results: Sequence[SessionRecord]) -> ConcurrencyResult:
        done = [record.result for record in results]
        first = [r.first_frame_s for r in done if r.first_frame_s is not None]
        latencies = np.array([value for r in done for value in r.latencies_s], dtype=np.float64) * MS_PER_S
        starts = [record.first_send for record in results if record.first_send is not None]
        ends = [record.last_speech for record in results if record.last_speech is not None]
        total = sum(r.speech_frames for r in done)
        delivered = [r.delivery_fps for r in done if r.delivery_fps is not None]
        span = max(ends) - min(starts) if starts and ends else 0.0
        return cls(
            sessions=sessions,
            wall_s=wall_s,
            first_frame_s_mean=float(np.mean(first)) if first else None,
            first_frame_s_max=max(first) if first else None,
            fps_per_session=float(np.mean([r.frames_per_second for r in done])) if done else 0.0,
            fps_total=total / span if span > 0 else 0.0,
            delivery_fps=float(np.mean(delivered)) if delivered else None,
            latency_p50_ms=float(np.percentile(latencies, 50)) if latencies.size else None,
            latency_p95_ms=float(np.percentile(latencies, 95)) if latencies.size else None,
            latency_max_ms=float(latencies.max()) if latencies.size else None,
            dropped=sum(r.dropped for r in done),
            speech_frames=total,
            expected_speech_frames=sum(r.expected_speech_frames for r in done),
            frame_count_ok=bool(done) and all(r.frame_count_ok for r in done),
            errors=tuple(f"session {r.session}: {r.error}" for r in done if r.error),
            per_session=tuple(done),
        )


@dataclass(frozen=True)
class ServerInfo:
    url: str
    device: str
    dtype: str
    max_sessions: int
    untrained: bool


@dataclass(frozen=True)
class LoadBenchReport:
    server: ServerInfo
    avatar: str
    fps: float
    audio: str
    audio_seconds: float
    chunk_ms: float
    pace: LoadBenchPace
    runs: tuple[ConcurrencyResult, ...]

    @property
    def ok(self) -> bool:
        return all(run.frame_count_ok for run in self.runs)

    def to_json(self) -> str:
        data = asdict(self)
        for run in data["runs"]:
            for session in run["per_session"]:
                del session["latencies_s"]  # per-frame values: summarised in the run
        return json.dumps(data, indent=2)

    def format(self) -> str:
        lines = [
            f"server {self.server.url}  device {self.server.device}  dtype {self.server.dtype}"
            + ("  UNTRAINED weights" if self.server.untrained else ""),
            f"avatar {self.avatar} at {self.fps:g} fps; audio {self.audio}"
            f" ({self.audio_seconds:.2f} s per session), {self.chunk_ms:g} ms chunks, {self.pace} pace",
            "",
            _table_row(TABLE_COLUMNS),
            _table_row(tuple("-" * len(name) for name in TABLE_COLUMNS)),
        ]
        lines.extend(_table_row(_run_cells(run)) for run in self.runs)
        for run in self.runs:
            lines.extend(f"error ({run.sessions} sessions) {error}" for error in run.errors)
        return "\n".join(lines)


TABLE_COLUMNS = (
    "sessions",
    "first frame s",
    "fps/session",
    "fps total",
    "delivery fps",
    "p50 ms",
    "p95 ms",
    "max ms",
    "dropped",
    "frames",
    "count",
)
TABLE_WIDTHS = (8, 13, 11, 9, 12, 7, 7, 7, 7, 11, 5)


def _table_row(cells: Sequence[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, TABLE_WIDTHS, strict=True))


def _run_cells(run: ConcurrencyResult) -> tuple[str, ...]:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        str(run.sessions),
        number(run.first_frame_s_mean, 2),
        number(run.fps_per_session, 1),
        number(run.fps_total, 1),
        number(run.delivery_fps, 1),
        number(run.latency_p50_ms, 0),
        number(run.latency_p95_ms, 0),
        number(run.latency_max_ms, 0),
        str(run.dropped),
        f"{run.speech_frames}/{run.expected_speech_frames}",
        "ok" if run.frame_count_ok else "FAIL",
    )


# ---------------------------------------------------------------------------------------------------
# A server in this process


class ThreadedServer:
    """uvicorn serving `app` from a background thread on an ephemeral loopback port.

    A context manager; inside it, `url` is `http://127.0.0.1:PORT`.
    """

    def __init__(self, app: Any, max_message_bytes: int = ServerSettings().max_message_bytes) -> None:
        config = uvicorn.Config(
            app, log_level="warning", ws_max_size=max_message_bytes + TRANSPORT_SLACK_BYTES
        )
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> ThreadedServer:
        # Bound here, so the port is known before uvicorn starts and no other process can take it.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((LOOPBACK_HOST, 0))
        self.url = f"http://{LOOPBACK_HOST}:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="lipsync-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise LoadBenchError(
                    f"the in-process server on {self.url} did not start",
                    "see the log above; check --weights and --avatars",
                )
            time.sleep(SERVER_POLL_S)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(SERVER_STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()


@dataclass(frozen=True)
class LocalServerOptions:
    """How to start the in-process server when no --url is given."""

    weights: Path
    avatars: Path
    dub: DubSettings = field(default_factory=DubSettings)  # model family, version, device, dtype
    token: str | None = None  # clients must send it, as with `lipsync serve --token`


@contextlib.contextmanager
def local_server(options: LocalServerOptions, max_sessions: int) -> Iterator[str]:
    """Load the generator, serve it on an ephemeral loopback port, yield the base URL."""
    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    defaults = ServerSettings()
    settings = replace(
        defaults, port=0, token=options.token, max_sessions=max(max_sessions, defaults.max_sessions)
    )
    engine = ServerEngine.from_pretrained(options.weights, options.avatars, options.dub, settings)
    try:
        with ThreadedServer(create_app(engine, settings), settings.max_message_bytes) as server:
            yield server.url
    finally:
        engine.close()


# ---------------------------------------------------------------------------------------------------
# REST helpers


def _get_json(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        raise LoadBenchError(f"GET {url} answered HTTP {error.code}", _http_fix(error.code)) from error
    except (urllib.error.URLError, OSError) as error:
        raise LoadBenchError(
            f"cannot reach {url}: {error}", "start `lipsync serve` or check --url"
        ) from error


def _http_fix(status: int) -> str:
    if status == HTTP_UNAUTHORIZED:
        return "pass the server's token with --token (or LIPSYNC_TOKEN)"
    return "check --url: it should point at a running `lipsync serve`"


HTTP_UNAUTHORIZED = 401


def server_info(url: str, token: str | None) -> ServerInfo:
    health = _get_json(f"{url}/api/health", token)
    return ServerInfo(
        url=url,
        device=str(health["device"]),
        dtype=str(health["dtype"]),
        max_sessions=int(health["max_sessions"]),
        untrained=bool(health["untrained"]),
    )


def active_sessions(url: str, token: str | None) -> int:
    return int(_get_json(f"{url}/api/health", token)["sessions"])


def wait_for_sessions(url: str, token: str | None, at_most: int) -> None:
    """Until the server runs at most `at_most` sessions."""
    deadline = time.monotonic() + SESSION_RELEASE_TIMEOUT_S
    while (running := active_sessions(url, token)) > at_most:
        if time.monotonic() > deadline:
            raise LoadBenchError(
                f"the server still runs {running} sessions {SESSION_RELEASE_TIMEOUT_S:g} s after a run",
                "check the server log: closed sessions should free their slots",
            )
        time.sleep(SERVER_POLL_S)


def choose_avatar(url: str, token: str | None, wanted: str | None) -> str:
    """`wanted`, checked against GET /api/avatars; without it, the first avatar listed."""
    names = [str(entry["name"]) for entry in _get_json(f"{url}/api/avatars", token)["avatars"]]
    if wanted is None:
        if not names:
            raise LoadBenchError(
                f"the server at {url} has no prepared avatars", "prepare one with POST /api/avatars"
            )
        return names[0]
    if wanted not in names:
        raise LoadBenchError(
            f"the server at {url} has no avatar {wanted!r} (it has: {', '.join(names) or 'none'})",
            "pass one of those with --avatar, or prepare it first",
        )
    return wanted


def websocket_url(url: str, avatar: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path.rstrip('/')}/ws/{urllib.parse.quote(avatar, safe='')}"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


# ---------------------------------------------------------------------------------------------------
# One session


@dataclass
class SessionRecord:
    """What a session's sender and receiver write down while it runs."""

    session: int
    chunk_samples: int
    audio_samples: int
    fps: Fraction = Fraction(0)
    send_times: list[float] = field(default_factory=list)  # per chunk
    speech_times: list[float] = field(default_factory=list)  # per speech frame of the turn
    speech_slots: list[int] = field(default_factory=list)  # turn frame number of each speech frame
    idle_frames: int = 0
    dropped: int = 0
    dropped_at_turn_start: int | None = None
    end_sent: bool = False
    last_speech_index: int = -1
    turn_done: bool = False
    error: str | None = None

    @property
    def first_send(self) -> float | None:
        return self.send_times[0] if self.send_times else None

    @property
    def last_speech(self) -> float | None:
        return self.speech_times[-1] if self.speech_times else None

    @property
    def expected_frames(self) -> int:
        return (self.audio_samples * self.fps.numerator) // (AUDIO_SAMPLE_RATE * self.fps.denominator)

    def chunk_completing(self, frame: int) -> int:
        """Index of the chunk holding the last sample of turn frame `frame`'s audio slot."""
        end_sample = ((frame + 1) * AUDIO_SAMPLE_RATE * self.fps.denominator) // self.fps.numerator
        last_chunk = len(self.send_times) - 1
        return min(max(end_sample - 1, 0) // self.chunk_samples, last_chunk)

    def latencies(self) -> tuple[float, ...]:
        if not self.send_times:
            return ()
        return tuple(
            received - self.send_times[self.chunk_completing(slot)]
            for slot, received in zip(self.speech_slots, self.speech_times, strict=True)
        )

    @property
    def result(self) -> SessionResult:
        first_send = self.first_send or 0.0
        started = self.first_send is not None and bool(self.speech_times)
        return SessionResult(
            session=self.session,
            audio_samples=self.audio_samples,
            speech_frames=len(self.speech_times),
            expected_speech_frames=self.expected_frames,
            idle_frames=self.idle_frames,
            dropped=self.dropped,
            first_frame_s=self.speech_times[0] - first_send if started else None,
            turn_s=self.speech_times[-1] - first_send if started else None,
            latencies_s=self.latencies(),
            error=self.error,
        )


async def _read_ready(connection: ClientConnection) -> Fraction:
    message = await connection.recv()
    if isinstance(message, bytes):
        raise LoadBenchError("the server sent a frame before its ready message", "check the server version")
    fields = json.loads(message)
    if fields.get("type") == "error":
        raise LoadBenchError(str(fields.get("error")), str(fields.get("fix", "")))
    if fields.get("type") != "ready":
        raise LoadBenchError(f"expected a ready message, got {message[:80]!r}", "check the server version")
    return Fraction(int(fields["fps_num"]), int(fields["fps_den"]))


async def _send_audio(
    connection: ClientConnection, record: SessionRecord, pcm: bytes, chunk_seconds: float, pace: LoadBenchPace
) -> None:
    chunk_bytes = record.chunk_samples * PCM_SAMPLE_BYTES
    start = time.perf_counter()
    for number, offset in enumerate(range(0, len(pcm), chunk_bytes)):
        if pace == "realtime":
            await asyncio.sleep(max(0.0, start + number * chunk_seconds - time.perf_counter()))
        record.send_times.append(time.perf_counter())
        await connection.send(pcm[offset : offset + chunk_bytes])
    await connection.send(json.dumps({"type": END_MESSAGE}))
    record.end_sent = True


def _on_frame(record: SessionRecord, data: bytes, received: float) -> None:
    header = decode_frame(data).header
    record.dropped = header.dropped
    if header.speech:
        if record.dropped_at_turn_start is None:
            record.dropped_at_turn_start = header.dropped
        # Frames the server dropped before this one still took their slot of the turn.
        record.speech_slots.append(len(record.speech_times) + header.dropped - record.dropped_at_turn_start)
        record.speech_times.append(received)
        record.last_speech_index = header.index
        return
    record.idle_frames += 1
    # Idle frames resume once the turn's last speech frame went out.
    if record.end_sent and record.speech_times and header.index > record.last_speech_index:
        record.turn_done = True


async def _receive_frames(connection: ClientConnection, record: SessionRecord) -> None:
    while not record.turn_done:
        message = await connection.recv()
        received = time.perf_counter()
        if isinstance(message, bytes):
            _on_frame(record, message, received)
            continue
        fields = json.loads(message)
        if fields.get("type") == "error":
            raise LoadBenchError(str(fields.get("error")), str(fields.get("fix", "")))


async def _stream(
    record: SessionRecord, url: str, avatar: str, token: str | None, pcm: bytes, settings: LoadBenchSettings
) -> None:
    """Stream `pcm` through one WebSocket session, writing down what happens in `record`."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with connect(
            websocket_url(url, avatar),
            additional_headers=headers,
            max_size=MAX_FRAME_MESSAGE_BYTES,
            compression=None,
            proxy=None,
            max_queue=None,
        ) as connection:
            record.fps = await _read_ready(connection)
            chunk_seconds = settings.chunk_samples / AUDIO_SAMPLE_RATE
            sender = asyncio.create_task(_send_audio(connection, record, pcm, chunk_seconds, settings.pace))
            receiver = asyncio.create_task(_receive_frames(connection, record))
            try:
                done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # raises the task's exception, if any
                await asyncio.gather(sender, receiver)
            finally:
                for task in (sender, receiver):
                    task.cancel()
                await asyncio.gather(sender, receiver, return_exceptions=True)
    except LipsyncError as error:
        record.error = error.problem
    except ConnectionClosed as error:
        record.error = f"the server closed the connection ({error})"
    except OSError as error:
        record.error = f"cannot connect to {url}: {error}"


def _new_record(number: int, pcm: bytes, settings: LoadBenchSettings) -> SessionRecord:
    return SessionRecord(number, settings.chunk_samples, len(pcm) // PCM_SAMPLE_BYTES)


async def run_concurrency(
    url: str, avatar: str, token: str | None, sessions: int, pcm: bytes, settings: LoadBenchSettings
) -> ConcurrencyResult:
    """`sessions` sessions at once, each streaming `pcm`; bounded by `settings.timeout_s`."""
    start = time.perf_counter()
    records = [_new_record(number, pcm, settings) for number in range(sessions)]
    streams = (_stream(record, url, avatar, token, pcm, settings) for record in records)
    try:
        await asyncio.wait_for(asyncio.gather(*streams), settings.timeout_s)
    except asyncio.TimeoutError:
        for record in records:
            if record.error is None and not record.turn_done:
                record.error = f"the turn did not finish within --timeout {settings.timeout_s:g} s"
    return ConcurrencyResult.summarise(sessions, time.perf_counter() - start, records)


# ---------------------------------------------------------------------------------------------------
# The whole benchmark


def load_pcm(audio: Path, seconds: float | None) -> bytes:
    samples = load_audio(audio, AUDIO_SAMPLE_RATE).samples
    if seconds is not None:
        samples = samples[: math.floor(seconds * AUDIO_SAMPLE_RATE)]
    return float_to_pcm(samples)


def run_against(
    url: str,
    avatar: str | None,
    token: str | None,
    audio: Path,
    settings: LoadBenchSettings,
    progress: Progress | None = None,
) -> LoadBenchReport:
    """Run every concurrency level against the server at `url`; `progress` hears what starts."""
    say = progress or _silent
    url = url.rstrip("/")
    info = server_info(url, token)
    name = choose_avatar(url, token, avatar)
    pcm = load_pcm(audio, settings.seconds)
    others = active_sessions(url, token)  # sessions of other clients, left alone
    if settings.warmup:
        say(f"warm-up: 1 session, {WARMUP_SECONDS:g} s of audio")
        _warm_up(url, name, token, pcm, settings)
    runs = []
    for sessions in settings.sessions:
        # A closed session frees its slot shortly after the socket closes, not at once.
        wait_for_sessions(url, token, others)
        say(f"{sessions} session{'s' if sessions > 1 else ''} at once, {settings.pace} pace")
        runs.append(asyncio.run(run_concurrency(url, name, token, sessions, pcm, settings)))
    return LoadBenchReport(
        server=info,
        avatar=name,
        fps=_avatar_fps(url, token, name),
        audio=str(audio),
        audio_seconds=len(pcm) / PCM_SAMPLE_BYTES / AUDIO_SAMPLE_RATE,
        chunk_ms=settings.chunk_samples * MS_PER_S / AUDIO_SAMPLE_RATE,
        pace=settings.pace,
        runs=tuple(runs),
    )


def _warm_up(url: str, avatar: str, token: str | None, pcm: bytes, settings: LoadBenchSettings) -> None:
    """One short unmeasured session, fast-paced: the first network calls of a process are slow."""
    warmup = replace(settings, sessions=(1,), pace="fast", warmup=False)
    head = pcm[: round(WARMUP_SECONDS * AUDIO_SAMPLE_RATE) * PCM_SAMPLE_BYTES]
    run = asyncio.run(run_concurrency(url, avatar, token, 1, head, warmup))
    if run.errors:
        raise LoadBenchError(f"the warm-up {run.errors[0]}", "fix that first; see the server log")


def _silent(message: str) -> None:
    pass


def _avatar_fps(url: str, token: str | None, name: str) -> float:
    for entry in _get_json(f"{url}/api/avatars", token)["avatars"]:
        if entry["name"] == name:
            return float(entry["fps"])
    return 0.0


def run_loadbench(
    settings: LoadBenchSettings,
    audio: Path,
    avatar: str | None = None,
    url: str | None = None,
    token: str | None = None,
    local: LocalServerOptions | None = None,
    progress: Progress | None = None,
) -> LoadBenchReport:
    """Against `url`, or against a server started in this process from `local`."""
    if url is not None:
        return run_against(url, avatar, token, audio, settings, progress)
    if local is None:
        raise LoadBenchError(
            "no server to benchmark", "pass --url of a running server, or --weights and --avatars"
        )
    if progress is not None:
        chosen = " ".join(filter(None, (local.dub.model, local.dub.version)))
        weights = f"{local.weights} ({chosen})" if chosen else str(local.weights)
        progress(f"starting a server here: {weights}, avatars in {local.avatars}")
    with local_server(local, max(settings.sessions)) as local_url:
        return run_against(local_url, avatar, local.token, audio, settings, progress)
