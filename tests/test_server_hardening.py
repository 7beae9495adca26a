"""`lipsync serve` under attack: foreign host names and web pages, upload abuse (types, names, sizes at once,
slow senders), avatars of another model family, server paths in errors, and what a shutdown leaves."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_server import (
    LOOPBACK_URL,
    close_code,
    engine_parts,  # noqa: F401  (a fixture)
    finish,
    loopback_client,
    ready,
    running_server,
    wait_until,
)

from lipsync.config import AUDIO_SAMPLE_RATE, UPLOAD_NAME_MAX_BYTES, ServerSettings
from lipsync.io.audio import load_audio
from lipsync.server.protocol import CloseCode

from conftest import media, still_photo, write_clip, write_png, write_wav

OCTET_STREAM = {"Content-Type": "application/octet-stream"}
ATTACKER = "rebind.attacker.example"
DEADLINE_S = 60.0

Server = tuple[Any, Any]  # (TestClient, ServerEngine)


@pytest.fixture
def server(engine_parts: tuple[Any, Any, str]) -> Iterator[Callable[..., Server]]:  # noqa: F811
    """server(**ServerSettings overrides) -> (TestClient on 127.0.0.1, ServerEngine); closed after."""
    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    engines: list[ServerEngine] = []

    def make(**overrides: Any) -> Server:
        settings = replace(ServerSettings(), **overrides)
        engine = ServerEngine(engine_parts[0], engine_parts[1], settings)
        engines.append(engine)
        return loopback_client(create_app(engine, settings)), engine

    yield make
    for engine in engines:
        engine.close(wait=True)


@pytest.fixture
def real_server(engine_parts: tuple[Any, Any, str]) -> Iterator[Callable[..., tuple[int, Any]]]:  # noqa: F811
    """real_server(**ServerSettings overrides) -> (port, engine): uvicorn on 127.0.0.1, stopped after."""
    from contextlib import ExitStack

    from lipsync.server.engine import ServerEngine

    with ExitStack() as stack:

        def start(**overrides: Any) -> tuple[int, Any]:
            settings = replace(ServerSettings(), **overrides)
            engine = ServerEngine(engine_parts[0], engine_parts[1], settings)
            stack.callback(engine.close, wait=True)
            return stack.enter_context(running_server(engine, settings)), engine

        yield start


def speech_wav(folder: Path, seconds: float = 0.6) -> Path:
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    return write_wav(folder / "hello.wav", audio.samples[: round(seconds * AUDIO_SAMPLE_RATE)])


def upload(client: Any, path: Path, name: str | None = None) -> str:
    answer = client.post(
        "/api/uploads", params={"name": name or path.name}, content=path.read_bytes(), headers=OCTET_STREAM
    )
    assert answer.status_code == 201, answer.json()
    upload_id: str = answer.json()["upload"]
    return upload_id


# --- host names and web pages --------------------------------------------------------------------------


def test_a_rebound_host_name_is_refused_without_a_token(
    real_server: Callable[..., tuple[int, Any]], tmp_path: Path
) -> None:
    import httpx

    still_photo(tmp_path)
    port, _ = real_server(media_dir=tmp_path, allowed_hosts=("lipsync.proxy.example",))
    base = f"http://127.0.0.1:{port}"
    foreign = {"Host": f"{ATTACKER}:{port}", "Origin": f"http://{ATTACKER}:{port}"}
    refused = [
        httpx.get(f"{base}/api/media", headers=foreign),
        httpx.post(f"{base}/api/preview", json={"source": "still.png"}, headers=foreign),
        httpx.post(f"{base}/api/avatars", json={"name": "x", "source": "still.png"}, headers=foreign),
        httpx.get(f"{base}/api/health", headers={"Host": ATTACKER}),
    ]
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert ATTACKER in answer.json()["error"] and "--allow-host" in answer.json()["fix"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "LOCALHOST"):
        assert httpx.get(f"{base}/api/media", headers={"Host": host}).json() == {"files": ["still.png"]}
    proxied = {"Host": "lipsync.proxy.example", "Origin": "https://lipsync.proxy.example"}
    assert httpx.get(f"{base}/api/media", headers=proxied).status_code == 200  # --allow-host


def test_a_websocket_for_a_foreign_host_name_closes_with_the_reason(
    server: Callable[..., Server], avatar_name: str
) -> None:
    client, engine = server()
    with client.websocket_connect(f"ws://{ATTACKER}:8765/ws/{avatar_name}") as ws:
        error, code = close_code(ws)
    assert code == CloseCode.FORBIDDEN and ATTACKER in error["error"] and "--allow-host" in error["fix"]
    assert engine.sessions == 0


def test_with_a_token_any_host_name_may_be_used(server: Callable[..., Server]) -> None:
    from fastapi.testclient import TestClient

    from lipsync.server.app import create_app

    _, engine = server()
    settings = replace(ServerSettings(), token="t0ken")
    client = TestClient(create_app(engine, settings), base_url="http://box.lan:8765")
    assert client.get("/api/health", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert client.get("/api/health").status_code == 401


def test_pages_of_other_sites_cannot_call_the_api(server: Callable[..., Server], avatar_name: str) -> None:
    client, engine = server(allowed_hosts=("app.example",))
    photo = media("talk_c.mp4").read_bytes()[:1000]
    foreign = {"Origin": "https://evil.example", **OCTET_STREAM}
    for origin in ("https://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:8765"):
        headers = {"Origin": origin, **OCTET_STREAM}
        answer = client.post("/api/uploads?name=a.mp4", content=photo, headers=headers)
        assert answer.status_code == 403 and origin in answer.json()["error"], (origin, answer.json())
        assert "--allow-host" in answer.json()["fix"]
    refused = client.post("/api/dubs", json={"video_upload": "x", "audio_upload": "y"}, headers=foreign)
    assert refused.status_code == 403
    assert list(engine.uploads.folder.iterdir()) == []
    with client.websocket_connect(f"/ws/{avatar_name}", headers={"Origin": "https://evil.example"}) as ws:
        error, code = close_code(ws)
    assert code == CloseCode.FORBIDDEN and "evil.example" in error["error"] and error["fix"]
    # The server's own pages, and those of an allowed host, may.
    for origin in (LOOPBACK_URL, "https://app.example"):
        headers = {"Origin": origin, **OCTET_STREAM}
        assert client.post("/api/uploads?name=a.mp4", content=photo, headers=headers).status_code == 201
    with client.websocket_connect(f"/ws/{avatar_name}", headers={"Origin": LOOPBACK_URL}) as ws:
        ready(ws)
    wait_until(lambda: engine.sessions == 0, "the session ended")
    assert client.get("/dub", headers={"Origin": "https://evil.example"}).status_code in (200, 404)


@pytest.fixture(scope="module")
def avatar_name(engine_parts: tuple[Any, Any, str]) -> str:  # noqa: F811
    return engine_parts[2]


def test_uploads_a_web_page_could_send_without_asking_are_refused(server: Callable[..., Server]) -> None:
    client, engine = server()
    body = b"x" * 100
    for content_type in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = {} if content_type is None else {"Content-Type": content_type}
        answer = client.post("/api/uploads?name=x.mp4", content=body, headers=headers)
        assert answer.status_code == 415, (content_type, answer.json())
        assert "application/octet-stream" in answer.json()["fix"]
    assert list(engine.uploads.folder.iterdir()) == []
    for content_type in ("application/octet-stream", "video/mp4"):
        answer = client.post("/api/uploads?name=x.mp4", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 201, answer.json()


def test_allow_host_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_server import serve_parser

    from lipsync.cli.main import main
    from lipsync.server.engine import ServerEngine

    args = serve_parser().parse_args(["serve", "--allow-host", "a.example", "--allow-host", "B.example:443"])
    assert args.allow_host == ["a.example", "B.example:443"]
    assert serve_parser().parse_args(["serve"]).allow_host == []

    def load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the models were loaded before --allow-host was checked")

    monkeypatch.setattr(ServerEngine, "from_pretrained", load)
    for bad in ("http://a.example/", "a b", ""):
        assert main(["serve", "--allow-host", bad, "--weights", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"--allow-host {bad!r} is not a host name" in err and "fix:" in err, err


# --- uploads ------------------------------------------------------------------------------------------


def _send_headers(port: int, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.sendall(
        f"POST /api/uploads?name=a.mp4 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def test_uploads_at_once_cannot_pass_the_total_limit(real_server: Callable[..., tuple[int, Any]]) -> None:
    port, engine = real_server(max_upload_bytes=1_000_000, max_upload_total_bytes=2_500_000)
    size = 900_000
    sockets = [_send_headers(port, size) for _ in range(4)]
    time.sleep(0.5)  # every upload has begun before any byte of a body arrives
    for sock in sockets:
        with contextlib.suppress(OSError):  # refused already: the server may have closed the connection
            sock.sendall(b"x" * size)
    answers = [_answer(sock) for sock in sockets]
    for sock in sockets:
        sock.close()
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201, 201, 413, 413], answers
    full = next(body for status, body in answers if status == 413)
    assert "2500000 bytes on disk" in full["error"] and full["fix"]
    assert engine.uploads.bytes_on_disk() == 2 * size


def test_a_stalled_or_endless_upload_is_dropped(real_server: Callable[..., tuple[int, Any]]) -> None:
    port, engine = real_server(upload_idle_seconds=0.5, upload_max_seconds=2.0)
    started = time.monotonic()
    stalled = _send_headers(port, 900_000)
    stalled.sendall(b"x" * 100)  # then silence
    status, body = _answer(stalled)
    stalled.close()
    assert status == 408 and "no bytes for 0.5 s" in body["error"] and body["fix"], body
    assert time.monotonic() - started < 10
    wait_until(lambda: list(engine.uploads.folder.iterdir()) == [], "the partial upload was removed")

    trickle = _send_headers(port, 900_000)
    started = time.monotonic()
    answer: list[tuple[int, dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: answer.append(_answer(trickle)))
    reader.start()
    while reader.is_alive() and time.monotonic() - started < 10:
        try:
            trickle.sendall(b"x" * 10)  # a few bytes, often enough never to stall
        except OSError:
            break
        time.sleep(0.1)
    reader.join(DEADLINE_S)
    trickle.close()
    assert answer and answer[0][0] == 408 and "took over 2 s" in answer[0][1]["error"], answer
    wait_until(lambda: list(engine.uploads.folder.iterdir()) == [], "the partial upload was removed")


def test_upload_names_with_folders_or_control_characters_are_refused(server: Callable[..., Server]) -> None:
    client, engine = server()
    for name in ("a\x00b.mp4", "clips/a.mp4", "..\\a.mp4", "a\nb.mp4", "a\x1b[31m.mp4", "a\x7f.mp4"):
        answer = client.post("/api/uploads", params={"name": name}, content=b"x", headers=OCTET_STREAM)
        assert answer.status_code == 400, (name, answer.json())
        assert "file name" in answer.json()["error"] and "?name=" in answer.json()["fix"]
    assert list(engine.uploads.folder.iterdir()) == []


def test_a_long_upload_name_is_shortened_and_the_dub_works(
    server: Callable[..., Server], tmp_path: Path
) -> None:
    client, _ = server()
    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", frames=4)
    long_name = "ü" * 150 + ".mp4"  # 304 bytes
    video = upload(client, clip, long_name)
    audio = upload(client, speech_wav(tmp_path, 0.2))
    job = client.post("/api/dubs", json={"video_upload": video, "audio_upload": audio}).json()["job"]
    status = finish(client, job)
    assert status["status"] == "done", status["error"]
    result: str = status["result"]
    assert result == "ü" * ((UPLOAD_NAME_MAX_BYTES - 4) // 2) + "-lipsync.mp4"
    assert client.get(f"/api/jobs/{job}/result").status_code == 200


def test_one_upload_as_video_and_audio_is_used_once_and_removed(
    server: Callable[..., Server], tmp_path: Path
) -> None:
    client, engine = server()
    both = upload(client, speech_wav(tmp_path))
    answer = client.post("/api/dubs", json={"video_upload": both, "audio_upload": both})
    assert answer.status_code == 202, answer.json()
    status = finish(client, answer.json()["job"])
    # A WAV has no picture: the job fails, names the client's file, and leaves no upload behind.
    assert status["status"] == "failed" and "hello.wav" in status["error"]
    assert list(engine.uploads.folder.iterdir()) == [] and len(engine.uploads) == 0


def test_a_dub_refused_after_taking_an_upload_gives_it_back(
    server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipsync.server.uploads import UploadStore

    client, engine = server()
    video = upload(client, still_photo(tmp_path))
    audio = upload(client, speech_wav(tmp_path))
    claim = UploadStore.claim

    def taken_meanwhile(store: UploadStore, upload_id: str) -> Path:
        if upload_id == audio:  # another request took the audio between the check and the claim
            raise store._unknown(upload_id)
        return claim(store, upload_id)

    monkeypatch.setattr(UploadStore, "claim", taken_meanwhile)
    refused = client.post("/api/dubs", json={"video_upload": video, "audio_upload": audio})
    assert refused.status_code == 400 and "/api/uploads" in refused.json()["fix"]
    monkeypatch.undo()
    assert len(engine.uploads) == 2  # the video is unused again: nothing leaks, it can still be used
    answer = client.post("/api/dubs", json={"video_upload": video, "audio_upload": audio})
    assert answer.status_code == 202, answer.json()
    assert finish(client, answer.json()["job"])["status"] == "done"
    assert list(engine.uploads.folder.iterdir()) == []


def test_errors_name_the_clients_files_not_server_paths(
    server: Callable[..., Server], tmp_path: Path
) -> None:
    media_dir = tmp_path / "media"
    (media_dir / "speech").mkdir(parents=True)
    (media_dir / "speech" / "notes.wav").write_text("not audio")
    write_clip(media("talk_c.mp4"), media_dir / "anna.mp4", frames=4)
    client, engine = server(media_dir=media_dir)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    video = upload(client, media_dir / "anna.mp4", "my video.mp4")
    audio = upload(client, broken)
    errors = []
    for request in (
        {"video_upload": video, "audio_upload": audio},
        {"video": "anna.mp4", "audio": "speech/notes.wav"},
    ):
        status = finish(client, client.post("/api/dubs", json=request).json()["job"])
        assert status["status"] == "failed"
        errors.append(status["error"])
    assert "broken.wav" in errors[0] and "speech/notes.wav" in errors[1], errors
    for error in errors:
        assert str(tmp_path) not in error and "lipsync-uploads-" not in error and "internal" not in error
        assert str(engine.uploads.folder) not in error


def test_preview_refuses_a_negative_face_index(server: Callable[..., Server], tmp_path: Path) -> None:
    still_photo(tmp_path)
    client, _ = server(media_dir=tmp_path)
    for route, body in (
        ("/api/preview", {"source": "still.png", "face_index": -1}),
        ("/api/dubs", {"video": "still.png", "audio": "still.png", "face_index": -1}),
    ):
        answer = client.post(route, json=body)
        assert answer.status_code == 400, answer.json()
        assert "face_index -1 is below 0" in answer.json()["error"] and "largest" in answer.json()["fix"]
    no_face = client.post("/api/preview", json={"source": "still.png", "face_index": 5})
    assert no_face.status_code == 400 and str(tmp_path) not in json.dumps(no_face.json())


def test_previews_at_once_wait_for_one_thread(
    real_server: Callable[..., tuple[int, Any]], tmp_path: Path
) -> None:
    import httpx

    still_photo(tmp_path)
    port, _ = real_server(media_dir=tmp_path)
    url = f"http://127.0.0.1:{port}/api/preview"
    httpx.post(url, json={"source": "still.png"}, timeout=DEADLINE_S)  # the server's threads have started
    before = threading.active_count()
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(url, json={"source": "still.png"}, timeout=DEADLINE_S), range(12))
        )
    assert [answer.status_code for answer in answers] == [200] * 12
    assert threading.active_count() - before <= 2, [t.name for t in threading.enumerate()]


# --- avatars of another model family ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stabilized_generator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lipsync.models.families import load_generator
    from lipsync.models.stabilized_sync import scaffold

    weights = tmp_path_factory.mktemp("stabilized-weights")
    scaffold(weights, tiny=True)
    return load_generator(weights, device="cpu", dtype="fp32")


def test_a_session_on_an_avatar_of_another_family_is_refused_with_the_fix(
    engine_parts: tuple[Any, Any, str],  # noqa: F811
    stabilized_generator: Any,
) -> None:
    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    _, store, name = engine_parts  # prepared for MuseTalk
    settings = ServerSettings()
    engine = ServerEngine(stabilized_generator, store, settings)
    try:
        client = loopback_client(create_app(engine, settings))
        avatar = {a["name"]: a for a in client.get("/api/avatars").json()["avatars"]}[name]
        assert "musetalk model family" in avatar["problem"] and "prepare it again" in avatar["problem"]
        with client.websocket_connect(f"/ws/{name}") as ws:
            error, code = close_code(ws)
        assert code == CloseCode.UNKNOWN_AVATAR
        assert "musetalk model family" in error["error"] and "stabilized-sync" in error["error"]
        assert "force" in error["fix"]
        wait_until(lambda: engine.sessions == 0, "the slot was given back")
        assert client.get("/api/health").json()["status"] == "ok"  # the server lives on
    finally:
        engine.close(wait=True)


# --- shutdown --------------------------------------------------------------------------------------


def test_a_shutdown_during_a_dub_job_leaves_no_results_folder(
    engine_parts: tuple[Any, Any, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tempfile

    import lipsync.server.engine as engine_module
    from lipsync.server.engine import DubRequest, MediaInput, ServerEngine

    started, release = threading.Event(), threading.Event()

    class SlowDub:
        def __init__(self, *args: Any) -> None:
            pass

        def __call__(self, video: Path, audio: Path, output: Path, **kwargs: Any) -> None:
            started.set()
            assert release.wait(DEADLINE_S)
            output.write_bytes(b"late")

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    monkeypatch.setattr(engine_module, "DubPipeline", SlowDub)
    photo = still_photo(tmp_path)
    engine = ServerEngine(engine_parts[0], engine_parts[1], ServerSettings())
    engine.submit_dub(DubRequest(MediaInput(photo), MediaInput(photo), {}))
    assert started.wait(DEADLINE_S)
    engine.close()  # as `lipsync serve` does on Ctrl-C: without waiting for the running job
    release.set()
    wait_until(lambda: not any(t.name == "lipsync-prepare" for t in threading.enumerate()), "the job ended")
    assert list(temporary.iterdir()) == []


def test_a_picture_that_claims_a_huge_size_is_refused_before_it_is_decoded(
    server: Callable[..., Server], tmp_path: Path
) -> None:
    """A 68-byte PNG claiming 65535 x 65535 in the media folder: a 400 naming the file and the limit (a dub
    job fails saying so), not a 500 with an OpenCV traceback or gigabytes of memory."""
    write_png(tmp_path / "bomb.png", 65535, 65535)
    speech_wav(tmp_path)
    client, _ = server(media_dir=tmp_path)
    preview = client.post("/api/preview", json={"source": "bomb.png"})
    assert preview.status_code == 400, preview.json()
    dub = finish(
        client, client.post("/api/dubs", json={"video": "bomb.png", "audio": "hello.wav"}).json()["job"]
    )
    assert dub["status"] == "failed"
    for error in (preview.json()["error"], dub["error"]):
        assert "bomb.png" in error and "over the limit" in error and "internal" not in error, error
        assert str(tmp_path) not in error
    assert "Scale it down" in preview.json()["fix"]
