"""`lipsync serve`: the wire protocol, the token rule, REST, and live WebSocket sessions with tiny weights."""

from __future__ import annotations

import argparse
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lipsync.config import AUDIO_SAMPLE_RATE, ServerSettings
from lipsync.errors import LipsyncError
from lipsync.server.protocol import (
    HEADER_LENGTH,
    CloseCode,
    ProtocolError,
    decode_frame,
    decode_jpeg,
    encode_frame,
    encode_jpeg,
    float_to_pcm,
    parse_control,
    pcm_to_float,
)
from lipsync.server.run import check_bind, is_loopback

from conftest import media, still_photo

TOKEN = "s3cret-token"
LOOPBACK_URL = "http://127.0.0.1:8765"  # without a token, the server answers loopback Hosts only


def loopback_client(app: Any) -> Any:
    """A TestClient whose requests and WebSockets go to 127.0.0.1 (the default "testserver" is refused)."""
    from urllib.parse import urljoin

    from fastapi.testclient import TestClient

    client = TestClient(app, base_url=LOOPBACK_URL)
    connect = client.websocket_connect
    client.websocket_connect = lambda url, *args, **kwargs: connect(  # type: ignore[method-assign]
        urljoin(LOOPBACK_URL.replace("http", "ws", 1), url), *args, **kwargs
    )
    return client


DEADLINE_S = 20.0
STREAM_THREAD_PREFIX = "lipsync-stream-"


# --- protocol ----------------------------------------------------------------------------------------


def test_frame_message_layout_and_round_trip() -> None:
    jpeg, pcm = b"\xff\xd8jpeg\xff\xd9", bytes(range(10))
    data = encode_frame(17, 0.68, True, jpeg, pcm, dropped=3)
    (length,) = struct.unpack("<I", data[:4])
    header = json.loads(data[4 : 4 + length])
    assert header == {
        "type": "frame",
        "index": 17,
        "time": 0.68,
        "speech": True,
        "jpeg_bytes": len(jpeg),
        "audio_bytes": len(pcm),
        "dropped": 3,
    }
    assert data[4 + length :] == jpeg + pcm
    message = decode_frame(data)
    assert (message.header.index, message.header.speech, message.jpeg, message.pcm) == (17, True, jpeg, pcm)


def test_truncated_frame_message_is_rejected() -> None:
    data = encode_frame(0, 0.0, False, b"abc", b"", dropped=0)
    with pytest.raises(ProtocolError, match="announces"):
        decode_frame(data[:-1])
    with pytest.raises(ProtocolError):
        decode_frame(data[: HEADER_LENGTH.size - 1])


def test_pcm_conversion_round_trips_and_rejects_half_samples() -> None:
    samples = np.array([0.0, 0.5, -0.5, -1.0, 0.999], dtype=np.float32)
    pcm = float_to_pcm(samples)
    assert len(pcm) == 2 * len(samples)
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 16384, -16384, -32767, 32734]
    np.testing.assert_allclose(pcm_to_float(pcm), samples, atol=1 / 32767)
    every = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert float_to_pcm(pcm_to_float(every)) == every  # exact both ways
    assert float_to_pcm(np.array([2.0, -2.0])) == struct.pack("<hh", 32767, -32768)  # clipped
    with pytest.raises(ProtocolError, match="odd") as caught:
        pcm_to_float(b"\x00\x01\x02")
    assert caught.value.code == CloseCode.BAD_MESSAGE


def test_jpeg_keeps_rgb_channel_order() -> None:
    image = np.zeros((32, 48, 3), np.uint8)
    image[..., 0] = 200  # red
    decoded = decode_jpeg(encode_jpeg(image, quality=95))
    assert decoded.shape == image.shape
    assert abs(int(decoded[..., 0].mean()) - 200) < 5 and decoded[..., 2].mean() < 5


def test_control_messages() -> None:
    assert parse_control('{"type": "end"}').type == "end"
    for text in ("{nope", '{"type": "start"}', "[1, 2]"):
        with pytest.raises(ProtocolError) as caught:
            parse_control(text)
        assert caught.value.code == CloseCode.BAD_MESSAGE and "end" in caught.value.fix


# --- the token rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", "128.0.0.1"])
def test_other_addresses_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    for missing in (None, ""):
        with pytest.raises(LipsyncError) as caught:
            check_bind(host, missing)
        assert host in caught.value.problem
        assert "--token" in caught.value.fix and "LIPSYNC_TOKEN" in caught.value.fix
    check_bind(host, TOKEN)


def test_tokens_in_logged_urls_are_redacted() -> None:
    import logging

    from lipsync.server.run import RedactToken

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", f"/ws/anna?token={TOKEN}&x=1"),
        None,
    )
    assert RedactToken().filter(record)
    assert TOKEN not in record.getMessage() and "/ws/anna?token=***&x=1" in record.getMessage()


def test_redacted_access_log_records_still_format() -> None:
    """uvicorn's access formatter unpacks the record's args: redaction must keep them a 5-tuple."""
    import io
    import logging

    from uvicorn.logging import AccessFormatter

    from lipsync.server.run import RedactToken

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    logger = logging.getLogger("uvicorn.access.test-redaction")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.addFilter(RedactToken())
    errors: list[Any] = []
    original_handle_error = handler.handleError
    handler.handleError = errors.append  # type: ignore[method-assign]
    try:
        # the call uvicorn's HTTP protocols make for each request
        logger.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/api/health?token={TOKEN}", "1.1", 200
        )
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/api/health", "1.1", 401)
    finally:
        handler.handleError = original_handle_error  # type: ignore[method-assign]
        logger.removeHandler(handler)
    assert errors == []
    lines = stream.getvalue().splitlines()
    assert lines == [
        '127.0.0.1:5000 - "GET /api/health?token=*** HTTP/1.1" 200 OK',
        '127.0.0.1:5000 - "GET /api/health HTTP/1.1" 401 Unauthorized',
    ]
    assert TOKEN not in stream.getvalue()


def serve_parser() -> argparse.ArgumentParser:
    from lipsync.cli import serve_cmd

    parser = argparse.ArgumentParser(prog="lipsync")
    serve_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_serve_command_refuses_a_public_bind_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipsync.cli import serve_cmd

    monkeypatch.delenv("LIPSYNC_TOKEN", raising=False)
    args = serve_parser().parse_args(["serve", "--host", "0.0.0.0", "--weights", str(tmp_path / "none")])
    assert (args.port, args.max_sessions, args.model_version) == (8765, 4, None)  # None: the folder's
    with pytest.raises(LipsyncError) as caught:
        serve_cmd.run(args)
    assert "--token" in caught.value.fix  # not a weights error: the check comes first


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`lipsync serve` must refuse before it loads anything: loading fails the test."""
    from lipsync.server.engine import ServerEngine

    def load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the models were loaded before the address was checked")

    monkeypatch.setattr(ServerEngine, "from_pretrained", load)
    monkeypatch.delenv("LIPSYNC_TOKEN", raising=False)


@pytest.mark.usefixtures("no_model_load")
def test_serve_refuses_a_bad_port_or_address_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lipsync.cli.main import main

    weights = ["--weights", str(tmp_path / "none")]
    for port in ("99999", "65536", "0", "-1"):
        assert main(["serve", f"--port={port}", *weights]) == 2
        err = capsys.readouterr().err
        assert f"--port {port} is not a TCP port" in err and "1 to 65535" in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), *weights]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on --host 127.0.0.1 --port {port}" in err and "another --port" in err, err
    # 192.0.2.1 (TEST-NET-1) is an address of no machine, so of not this one
    assert main(["serve", "--host", "192.0.2.1", "--token", TOKEN, "--port", str(free_port()), *weights]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on --host 192.0.2.1" in err and "address of this machine" in err, err


@pytest.mark.usefixtures("no_model_load")
def test_serve_media_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lipsync.cli.main import main

    assert serve_parser().parse_args(["serve"]).media is None
    assert serve_parser().parse_args(["serve", "--media", str(tmp_path)]).media == tmp_path
    not_a_folder = tmp_path / "file.png"
    not_a_folder.write_bytes(b"x")
    for media_dir in (tmp_path / "none", not_a_folder):
        code = main(["serve", "--media", str(media_dir), "--port", str(free_port()), "--weights", "none"])
        err = capsys.readouterr().err
        assert code == 2 and f"--media {media_dir} is not a folder" in err, err


def _interrupted(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


def _reraised_as_runtime_error(*args: Any, **kwargs: Any) -> None:
    """A library that catches Ctrl-C half-way through and raises its own error."""
    import signal

    try:
        signal.raise_signal(signal.SIGINT)
        time.sleep(DEADLINE_S)
    except KeyboardInterrupt as error:
        raise RuntimeError("loading stopped") from error


def _reraised_as_weights_error(*args: Any, **kwargs: Any) -> None:
    """The weights loader turns the RuntimeError of an interrupted torch.load into a WeightsError."""
    from lipsync.errors import WeightsError

    try:
        _reraised_as_runtime_error()
    except RuntimeError as error:
        raise WeightsError("weights file is damaged", "download it again") from error


@pytest.mark.parametrize("load", [_interrupted, _reraised_as_runtime_error, _reraised_as_weights_error])
def test_ctrl_c_while_the_models_load_stops_quietly(
    load: Callable[..., None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import signal

    from lipsync.cli.main import main
    from lipsync.server.engine import ServerEngine

    # As in a terminal: a run started in the background (SIGINT ignored) would not see the Ctrl-C at all.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(ServerEngine, "from_pretrained", load)
    monkeypatch.delenv("LIPSYNC_TOKEN", raising=False)
    try:
        code = main(["serve", "--port", str(free_port()), "--weights", str(tmp_path / "none")])
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err, err
    assert "Traceback" not in err and "fix:" not in err, err
    assert restored is signal.default_int_handler  # put back for uvicorn and others


# --- app fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_parts(tiny_generator: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, str]:
    """(models, store, name): the tiny models and a store with one avatar made from a still of talk_c.mp4.

    A still prepares in well under a second (the 125-frame clip takes many); the server treats both alike.
    """
    from lipsync.pipeline.avatar import AvatarStore, prepare_avatar

    folder = tmp_path_factory.mktemp("server-avatars")
    store = AvatarStore(folder / "avatars")
    prepare_avatar(tiny_generator, store, "still", still_photo(folder), show_bar=False)
    return tiny_generator, store, "still"


@pytest.fixture(scope="module")
def avatar_name(engine_parts: tuple[Any, Any, str]) -> str:
    return engine_parts[2]


Server = tuple[Any, Any]  # (TestClient, ServerEngine)


@pytest.fixture
def make_server(engine_parts: tuple[Any, Any, str]) -> Iterator[Callable[..., Server]]:
    """make_server(**ServerSettings overrides) -> (TestClient, ServerEngine); engines are closed after."""
    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    models, store, _ = engine_parts
    engines: list[ServerEngine] = []

    def make(**overrides: Any) -> Server:
        settings = replace(ServerSettings(), **overrides)
        engine = ServerEngine(models, store, settings)
        engines.append(engine)
        return loopback_client(create_app(engine, settings)), engine

    yield make
    for engine in engines:
        engine.close(wait=True)


def stream_threads() -> set[threading.Thread]:
    """The worker threads of live StreamSessions."""
    return {t for t in threading.enumerate() if t.name.startswith(STREAM_THREAD_PREFIX)}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(round(seconds * AUDIO_SAMPLE_RATE))).astype(np.float32)


def close_code(ws: Any) -> tuple[dict[str, Any], int]:
    """The error message, then the close code, of a socket the server is closing."""
    from starlette.websockets import WebSocketDisconnect

    error = ws.receive_json()
    with pytest.raises(WebSocketDisconnect) as caught:
        ws.receive_bytes()
    return error, caught.value.code


# --- REST --------------------------------------------------------------------------------------------


def test_health_and_avatar_list(make_server: Callable[..., Server], avatar_name: str) -> None:
    client, _ = make_server()
    health = client.get("/api/health").json()
    assert health == {
        "status": "ok",
        "device": "cpu",
        "dtype": health["dtype"],
        "sessions": 0,
        "max_sessions": 4,
        "untrained": True,
    }
    assert health["dtype"] in ("fp32", "bf16")
    (avatar,) = client.get("/api/avatars").json()["avatars"]
    assert avatar["name"] == avatar_name and avatar["problem"] is None
    assert (avatar["fps"], avatar["width"], avatar["height"], avatar["frames"]) == (25.0, 590, 590, 1)
    assert avatar["frames_with_face"] == 1 and avatar["source"].endswith("still.png") and avatar["created"]


def test_rest_token(make_server: Callable[..., Server]) -> None:
    client, _ = make_server(token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = client.get("/api/health", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"] == "missing or wrong token" and "Bearer" in answer.json()["fix"]
    assert client.get("/api/avatars", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.post("/api/avatars", json={"name": "x", "source": "/x"}).status_code == 401


def test_bearer_scheme_is_case_insensitive(make_server: Callable[..., Server], avatar_name: str) -> None:
    from lipsync.server.app import bearer_token

    client, engine = make_server(token=TOKEN)
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert bearer_token(f"{scheme} {TOKEN}") == TOKEN
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert client.get("/api/health", headers=headers).status_code == 200
        with client.websocket_connect(f"/ws/{avatar_name}", headers=headers) as ws:
            ready(ws)
    for value in ("Basic " + TOKEN, "Bearer", "Bearer ", "Bearers " + TOKEN, TOKEN):
        assert bearer_token(value) is None
    assert client.get("/api/health", headers={"Authorization": f"bearer {TOKEN}x"}).status_code == 401
    wait_until(lambda: engine.sessions == 0, "the sessions ended")


def test_page_is_served_without_a_token(make_server: Callable[..., Server]) -> None:
    from lipsync.server.app import INDEX_PAGE

    client, _ = make_server(token=TOKEN)
    page = client.get("/")
    if INDEX_PAGE.is_file():
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    else:
        assert page.status_code == 404 and "fix" in page.json()


@pytest.fixture
def fresh_server(engine_parts: tuple[Any, Any, str], tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Like make_server, with an empty avatar store of its own (new avatars stay out of the shared one)."""
    from lipsync.pipeline.avatar import AvatarStore
    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    engines: list[ServerEngine] = []

    def make(**overrides: Any) -> Server:
        settings = replace(ServerSettings(), **overrides)
        engine = ServerEngine(engine_parts[0], AvatarStore(tmp_path / "avatars"), settings)
        engines.append(engine)
        return loopback_client(create_app(engine, settings)), engine

    yield make
    for engine in engines:
        engine.close(wait=True)


def finish(client: Any, job_id: str) -> dict[str, Any]:
    """Wait until the job is done or failed; its last status."""
    seen: list[dict[str, Any]] = []

    def finished() -> bool:
        seen.append(client.get(f"/api/jobs/{job_id}").json())
        return seen[-1].get("status") in ("done", "failed")

    wait_until(finished, "the job finished")
    return seen[-1]


def test_prepare_job_reaches_done(fresh_server: Callable[..., Server], tmp_path: Path) -> None:
    media_dir = tmp_path / "media"
    (media_dir / "people").mkdir(parents=True)
    still_photo(media_dir / "people")
    client, _ = fresh_server(media_dir=media_dir)
    answer = client.post("/api/avatars", json={"name": "photo", "source": "people/still.png"})
    assert answer.status_code == 202
    job_id = answer.json()["job"]
    seen: list[float] = []

    def finished() -> bool:
        status = client.get(f"/api/jobs/{job_id}").json()
        seen.append(status["progress"])
        return status["status"] in ("done", "failed")

    wait_until(finished, "the job finished")
    status = client.get(f"/api/jobs/{job_id}").json()
    assert status == {
        "id": job_id,
        "name": "photo",
        "status": "done",
        "progress": 1.0,
        "error": None,
        "kind": "prepare",
        "result": None,
    }
    assert seen == sorted(seen) and all(0.0 <= p <= 1.0 for p in seen)  # progress only goes up
    (avatar,) = client.get("/api/avatars").json()["avatars"]
    assert (avatar["name"], avatar["frames"], avatar["fps"]) == ("photo", 1, 25.0)
    assert avatar["source"] == str((media_dir / "people" / "still.png").resolve())


def test_sources_outside_the_media_folder_get_one_answer(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    media_dir, outside = tmp_path / "media", tmp_path / "outside"
    (media_dir / "sub").mkdir(parents=True)
    outside.mkdir()
    inside_file = still_photo(media_dir)
    outside_file = still_photo(outside)
    (media_dir / "link.png").symlink_to(outside_file)
    (media_dir / "sub" / "uplink").symlink_to(outside, target_is_directory=True)
    client, _ = make_server(media_dir=media_dir)
    refused = [
        str(outside_file),  # absolute, outside
        str(inside_file),  # absolute, even inside
        "../outside/still.png",
        "sub/../../outside/still.png",
        "link.png",  # a symlink out
        "sub/uplink/still.png",  # through a symlinked folder out
        "missing.png",  # does not exist
        "../outside/missing.png",
        "sub",  # not a file
        "",
        "~/still.png",
    ]
    answers = [client.post("/api/avatars", json={"name": "anna", "source": s}) for s in refused]
    assert {answer.status_code for answer in answers} == {400}
    first = answers[0].json()
    assert all(answer.json() == first for answer in answers), [answer.json() for answer in answers]
    assert "media folder" in first["error"] and "--media" in first["fix"] and "/api/uploads" in first["fix"]
    assert str(tmp_path) not in json.dumps(first)
    bad_name = client.post("/api/avatars", json={"name": "../evil", "source": "still.png"})
    assert bad_name.status_code == 400 and "letters" in bad_name.json()["fix"]


def test_without_a_media_folder_no_server_path_is_read(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    still_photo(tmp_path)
    client, _ = make_server()
    for source in ("still.png", str(tmp_path / "still.png")):
        answer = client.post("/api/avatars", json={"name": "anna", "source": source})
        assert answer.status_code == 400 and "--media" in answer.json()["fix"], answer.json()


def test_prepare_rejects_bad_requests(make_server: Callable[..., Server], tmp_path: Path) -> None:
    client, _ = make_server(media_dir=tmp_path)
    missing = client.post("/api/avatars", json={"name": "anna", "source": "none.mp4"})
    assert missing.status_code == 400 and "media folder" in missing.json()["error"]
    bad_name = client.post("/api/avatars", json={"name": "../evil", "source": str(media("talk_c.mp4"))})
    assert bad_name.status_code == 400 and "letters" in bad_name.json()["fix"]
    no_source = client.post("/api/avatars", json={"name": "anna"})
    assert no_source.status_code == 400 and "source" in no_source.json()["error"]
    both = client.post("/api/avatars", json={"name": "anna", "source": "a.png", "upload": "x"})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]
    unknown_upload = client.post("/api/avatars", json={"name": "anna", "upload": "nope"})
    assert unknown_upload.status_code == 400 and "/api/uploads" in unknown_upload.json()["fix"]
    unknown = client.get("/api/jobs/nope")
    assert unknown.status_code == 404 and unknown.json()["fix"]


OCTET_STREAM = {"Content-Type": "application/octet-stream"}


def test_an_uploaded_still_is_prepared_and_then_removed(
    fresh_server: Callable[..., Server], tmp_path: Path
) -> None:
    client, engine = fresh_server()
    folder = engine.uploads.folder
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
    photo = still_photo(tmp_path).read_bytes()
    answer = client.post("/api/uploads?name=Me%20at%20home.PNG", content=photo, headers=OCTET_STREAM)
    assert answer.status_code == 201, answer.json()
    upload_id = answer.json()["upload"]
    (stored,) = folder.iterdir()
    assert stored.suffix == ".png" and stored.read_bytes() == photo
    job = client.post("/api/avatars", json={"name": "uploaded", "upload": upload_id})
    assert job.status_code == 202
    assert finish(client, job.json()["job"])["status"] == "done"
    (avatar,) = client.get("/api/avatars").json()["avatars"]
    assert (avatar["name"], avatar["frames"]) == ("uploaded", 1)
    assert list(folder.iterdir()) == []  # removed when the job ended
    again = client.post("/api/avatars", json={"name": "again", "upload": upload_id})
    assert again.status_code == 400 and "again" in again.json()["fix"]  # an upload serves one job

    # a failed job removes its upload too
    answer = client.post("/api/uploads?name=clip.mp4", content=b"not a video", headers=OCTET_STREAM)
    job = client.post("/api/avatars", json={"name": "broken", "upload": answer.json()["upload"]})
    assert finish(client, job.json()["job"])["status"] == "failed"
    assert list(folder.iterdir()) == []

    for name in ("notes.txt", "noext", ""):
        refused = client.post(f"/api/uploads?name={name}", content=photo, headers=OCTET_STREAM)
        assert refused.status_code == 400 and ".png" in refused.json()["fix"], name
    assert client.post("/api/uploads", content=photo, headers=OCTET_STREAM).status_code == 400
    assert list(folder.iterdir()) == []
    engine.close(wait=True)
    assert not folder.exists()  # the folder goes with the server


def test_oversized_and_stale_uploads_leave_nothing(make_server: Callable[..., Server]) -> None:
    client, engine = make_server(max_upload_bytes=1000)
    folder = engine.uploads.folder
    declared = client.post("/api/uploads?name=a.png", content=b"x" * 1001, headers=OCTET_STREAM)
    assert declared.status_code == 413 and "1000" in declared.json()["error"] and declared.json()["fix"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts while it stores
        for _ in range(5):
            yield b"x" * 400

    streamed = client.post("/api/uploads?name=a.png", content=chunks(), headers=OCTET_STREAM)
    assert streamed.status_code == 413, streamed.json()
    assert list(folder.iterdir()) == []
    fits = client.post("/api/uploads?name=a.png", content=b"x" * 1000, headers=OCTET_STREAM)
    assert fits.status_code == 201 and len(list(folder.iterdir())) == 1

    client, engine = make_server(max_upload_bytes=1000, max_upload_total_bytes=2500)  # disk use is bounded
    sizes = [
        client.post("/api/uploads?name=a.png", content=b"x" * 1000, headers=OCTET_STREAM) for _ in range(3)
    ]
    assert [answer.status_code for answer in sizes] == [201, 201, 413]
    assert "on disk" in sizes[2].json()["error"] and engine.uploads.bytes_on_disk() == 2000

    client, engine = make_server(upload_ttl_seconds=0.0)  # every upload is stale at once
    answer = client.post("/api/uploads?name=a.png", content=b"x", headers=OCTET_STREAM)
    job = client.post("/api/avatars", json={"name": "late", "upload": answer.json()["upload"]})
    assert job.status_code == 400 and "unused" in job.json()["error"]
    assert list(engine.uploads.folder.iterdir()) == []


def test_job_limit_and_finished_jobs_are_forgotten(
    fresh_server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lipsync.server.engine as engine_module

    started, release = threading.Event(), threading.Event()

    def blocked_prepare(*args: Any, **kwargs: Any) -> None:
        started.set()
        assert release.wait(DEADLINE_S)

    monkeypatch.setattr(engine_module, "prepare_avatar", blocked_prepare)
    still_photo(tmp_path)
    client, _ = fresh_server(media_dir=tmp_path, max_jobs=2, job_ttl_seconds=0.3)
    first = client.post("/api/avatars", json={"name": "one", "source": "still.png"}).json()["job"]
    assert started.wait(DEADLINE_S)  # running
    second = client.post("/api/avatars", json={"name": "two", "source": "still.png"})
    assert second.status_code == 202  # queued
    third = client.post("/api/avatars", json={"name": "three", "source": "still.png"})
    assert third.status_code == 429 and "limit of 2" in third.json()["error"] and third.json()["fix"]
    release.set()
    wait_until(
        lambda: client.get(f"/api/jobs/{second.json()['job']}").json().get("status") in ("done", None),
        "both jobs finished",
    )
    assert client.post("/api/avatars", json={"name": "three", "source": "still.png"}).status_code == 202
    wait_until(lambda: client.get(f"/api/jobs/{first}").status_code == 404, "the finished job was forgotten")
    assert "no job" in client.get(f"/api/jobs/{first}").json()["error"]


def test_a_failed_job_reports_its_error(engine_parts: tuple[Any, Any, str], tmp_path: Path) -> None:
    from lipsync.pipeline.avatar import AvatarStore
    from lipsync.server.engine import PrepareRequest, ServerEngine

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    engine = ServerEngine(engine_parts[0], AvatarStore(tmp_path / "avatars"), ServerSettings())
    try:
        job = engine.submit_prepare(PrepareRequest("notes", not_a_video))
        wait_until(lambda: engine.job(job.id).status in ("done", "failed"), "the job finished")
        status = engine.job(job.id)
        assert status.status == "failed" and status.error and "notes.mp4" in status.error
    finally:
        engine.close(wait=True)


# --- WebSocket ---------------------------------------------------------------------------------------


def ready(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = ws.receive_json()
    assert message["type"] == "ready", message
    return message


def test_speech_turn_frames_timestamps_and_audio(
    make_server: Callable[..., Server], avatar_name: str
) -> None:
    client, engine = make_server()
    audio = speech(1.3)
    pcm = float_to_pcm(audio)
    with client.websocket_connect(f"/ws/{avatar_name}") as ws:
        info = ready(ws)
        assert info == {
            "type": "ready",
            "avatar": avatar_name,
            "fps": 25.0,
            "fps_num": 25,
            "fps_den": 1,
            "width": 590,
            "height": 590,
            "sample_rate": AUDIO_SAMPLE_RATE,
            "untrained": True,
        }
        fps = Fraction(info["fps_num"], info["fps_den"])
        chunk = 2 * 1234  # odd sample counts per chunk: frames must not depend on chunking
        for start in range(0, len(pcm), chunk):
            ws.send_bytes(pcm[start : start + chunk])
        ws.send_text(json.dumps({"type": "end"}))
        frames = []
        while True:  # the turn's frames, then idle frames again
            message = decode_frame(ws.receive_bytes())
            frames.append(message)
            if not message.header.speech and any(f.header.speech for f in frames):
                break
    spoken = [f for f in frames if f.header.speech]
    assert len(spoken) == math.floor(len(audio) / AUDIO_SAMPLE_RATE * fps) == 32
    indices = [f.header.index for f in frames]
    assert indices == list(range(indices[0], indices[0] + len(frames)))  # nothing dropped, in order
    for frame in frames:
        assert frame.header.time == pytest.approx(frame.header.index / float(fps))
        assert frame.header.dropped == 0
        assert decode_jpeg(frame.jpeg).shape == (590, 590, 3)
    samples_per_frame = AUDIO_SAMPLE_RATE // 25
    assert all(f.header.audio_bytes == 2 * samples_per_frame for f in spoken)
    assert b"".join(f.pcm for f in spoken) == pcm[: 2 * samples_per_frame * len(spoken)]
    assert all(f.pcm == b"" for f in frames if not f.header.speech)
    wait_until(lambda: engine.sessions == 0, "the session ended")


def test_idle_frames_arrive_at_the_frame_rate(make_server: Callable[..., Server], avatar_name: str) -> None:
    client, _ = make_server()
    with client.websocket_connect(f"/ws/{avatar_name}") as ws:
        ready(ws)
        start = time.monotonic()
        frames = [decode_frame(ws.receive_bytes()) for _ in range(10)]
        elapsed = time.monotonic() - start
    assert [f.header.index for f in frames] == list(range(10))
    assert not any(f.header.speech for f in frames) and all(f.header.audio_bytes == 0 for f in frames)
    assert 9 / 25 * 0.8 < elapsed < 9 / 25 + 1.0  # paced by the wall clock, not as fast as possible


def test_disconnect_mid_stream_frees_the_session(
    make_server: Callable[..., Server], avatar_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipsync.pipeline.stream import StreamSession

    closed: list[StreamSession] = []
    original_close = StreamSession.close

    def close(session: StreamSession) -> None:
        closed.append(session)
        original_close(session)

    monkeypatch.setattr(StreamSession, "close", close)
    client, engine = make_server()
    before = stream_threads()
    with client.websocket_connect(f"/ws/{avatar_name}") as ws:
        ready(ws)
        ws.send_bytes(float_to_pcm(speech(3.0)))
        while not decode_frame(ws.receive_bytes()).header.speech:
            pass
        assert engine.sessions == 1 and len(stream_threads() - before) == 3
        # leaving the block disconnects while the turn's frames are still being made
    wait_until(lambda: engine.sessions == 0, "the session counter returned to 0")
    wait_until(lambda: stream_threads() <= before, "the stream threads ended")
    assert len(closed) == 1
    assert client.get("/api/health").json()["sessions"] == 0


def test_unknown_avatar_and_wrong_token_close_with_codes(
    make_server: Callable[..., Server], avatar_name: str
) -> None:
    client, engine = make_server(token=TOKEN)
    for url in (f"/ws/{avatar_name}", f"/ws/{avatar_name}?token=wrong"):
        with client.websocket_connect(url) as ws:
            error, code = close_code(ws)
        assert code == CloseCode.UNAUTHORIZED and error["type"] == "error" and "token" in error["fix"]
    with client.websocket_connect(f"/ws/nobody?token={TOKEN}") as ws:
        error, code = close_code(ws)
    assert code == CloseCode.UNKNOWN_AVATAR and "nobody" in error["error"] and error["fix"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with client.websocket_connect(f"/ws/{avatar_name}", headers=headers) as ws:
        ready(ws)
    wait_until(lambda: engine.sessions == 0, "the session ended")


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        (b"\x00" * (4096 + 2), CloseCode.MESSAGE_TOO_BIG, "over the limit"),
        (b"\x00\x01\x02", CloseCode.BAD_MESSAGE, "odd"),
        ("{not json", CloseCode.BAD_MESSAGE, "not JSON"),
        ('{"type": "start"}', CloseCode.BAD_MESSAGE, "unknown"),
        (b"\x00" * 4096, CloseCode.TOO_MUCH_AUDIO, "waiting"),
    ],
)
def test_bad_messages_close_the_session(
    make_server: Callable[..., Server], avatar_name: str, message: bytes | str, code: int, words: str
) -> None:
    # 4096 bytes = 2048 samples = 0.128 s: over the 0.1 s of audio allowed to wait
    client, engine = make_server(max_message_bytes=4096, max_pending_audio_seconds=0.1)
    with client.websocket_connect(f"/ws/{avatar_name}") as ws:
        ready(ws)
        if isinstance(message, bytes):
            ws.send_bytes(message)
        else:
            ws.send_text(message)
        while True:  # idle frames may come first
            reply = ws.receive()
            if "text" in reply:
                break
        error = json.loads(reply["text"])
        assert error["type"] == "error" and words in error["error"] and error["fix"]
        final = ws.receive()
    assert final == {"type": "websocket.close", "code": code, "reason": ""}
    wait_until(lambda: engine.sessions == 0, "the session ended")


def test_concurrent_sessions_and_the_session_limit(
    make_server: Callable[..., Server], avatar_name: str
) -> None:
    client, engine = make_server(max_sessions=4)
    audio = [speech(0.5, seed) for seed in range(4)]
    with ExitStack() as stack:
        sockets = [stack.enter_context(client.websocket_connect(f"/ws/{avatar_name}")) for _ in range(4)]
        for ws in sockets:
            ready(ws)
        assert engine.sessions == 4 and client.get("/api/health").json()["sessions"] == 4
        with client.websocket_connect(f"/ws/{avatar_name}") as fifth:
            error, code = close_code(fifth)
        assert code == CloseCode.TOO_MANY_SESSIONS and "4 sessions" in error["error"]
        assert "--max-sessions" in error["fix"]
        for ws, samples in zip(sockets, audio, strict=True):
            ws.send_bytes(float_to_pcm(samples))
            ws.send_text('{"type": "end"}')
        for ws, samples in zip(sockets, audio, strict=True):  # each session gets its own audio back
            spoken: list[bytes] = []
            while len(spoken) < 12:
                frame = decode_frame(ws.receive_bytes())
                if frame.header.speech:
                    spoken.append(frame.pcm)
            assert b"".join(spoken) == float_to_pcm(samples)[: 12 * 640 * 2]
    wait_until(lambda: engine.sessions == 0, "all sessions ended")
    with client.websocket_connect(f"/ws/{avatar_name}") as ws:  # a slot is free again
        ready(ws)


class StalledSocket:
    """A client that stops reading after the first frame until the session has made all its speech frames."""

    def __init__(self, session: Any, done: Any) -> None:
        self.session = session
        self.done = done  # cancel scope: cancelled once the speech turn is over and an idle frame came
        self.headers: list[Any] = []

    async def send_bytes(self, data: bytes) -> None:
        import anyio

        self.headers.append(decode_frame(data).header)
        if len(self.headers) == 1:
            while self.session.speaking:
                await anyio.sleep(0.01)
        elif not self.headers[-1].speech:
            self.done.cancel()


def test_a_slow_client_gets_frames_dropped_not_buffered(engine_parts: tuple[Any, Any, str]) -> None:
    import anyio

    from lipsync.server.app import _send_loop
    from lipsync.server.engine import ServerEngine

    models, store, name = engine_parts
    settings = ServerSettings(max_buffered_frames=4)
    engine = ServerEngine(models, store, settings)
    most_buffered = 0

    async def watch(session: Any) -> None:
        nonlocal most_buffered
        while True:
            most_buffered = max(most_buffered, session.buffered_frames)
            await anyio.sleep(0.002)

    async def run(session: Any) -> StalledSocket:
        with anyio.move_on_after(DEADLINE_S) as scope:
            client = StalledSocket(session, scope)
            async with anyio.create_task_group() as group:
                group.start_soon(watch, session)
                await _send_loop(client, session, settings)  # type: ignore[arg-type]
        return client

    with engine.open_stream(engine.load_avatar(name)) as session:
        session.push_audio(speech(2.0))  # 50 frames
        session.end_speech()
        client = anyio.run(run, session)
        dropped = session.dropped
    speech_frames = [h for h in client.headers if h.speech]
    assert client.headers[-1].dropped == dropped > 0 and not client.headers[-1].speech
    assert len(speech_frames) + dropped == 50  # every frame was either sent or counted as dropped
    assert most_buffered <= settings.max_buffered_frames
    indices = [h.index for h in speech_frames]
    assert indices == sorted(indices) and indices[-1] == 49  # the newest frames were kept


# --- a real server on a loopback port -----------------------------------------------------------------


@contextmanager
def running_server(engine: Any, settings: ServerSettings) -> Iterator[int]:
    import uvicorn

    from lipsync.server.app import create_app
    from lipsync.server.run import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(create_app(engine, settings), replace(settings, port=port))
    config.log_level = "warning"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn started")
        yield port
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)
        sock.close()


def test_real_server_token_oversize_and_disconnect(
    engine_parts: tuple[Any, Any, str], avatar_name: str
) -> None:
    import asyncio

    import httpx
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from lipsync.server.engine import ServerEngine

    settings = ServerSettings(token=TOKEN, max_message_bytes=8192)
    engine = ServerEngine(engine_parts[0], engine_parts[1], settings)

    async def closed_with(url: str, message: bytes | None = None) -> tuple[int | None, str]:
        async with connect(url, max_size=None) as ws:
            first = await ws.recv()
            if message is not None:
                await ws.send(message)
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as closed:
                return (closed.rcvd.code if closed.rcvd else None), str(first)

    async def leave_mid_stream(url: str) -> None:
        async with connect(url, max_size=None) as ws:
            await ws.recv()
            pcm = float_to_pcm(speech(2.0))
            for start in range(0, len(pcm), 8192):
                await ws.send(pcm[start : start + 8192])
            while not decode_frame(await ws.recv()).header.speech:  # type: ignore[arg-type]
                pass

    before = stream_threads()
    with running_server(engine, settings) as port:
        base = f"ws://127.0.0.1:{port}/ws/{avatar_name}"
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 401
        assert (
            httpx.get(
                f"http://127.0.0.1:{port}/api/health", headers={"Authorization": f"Bearer {TOKEN}"}
            ).json()["status"]
            == "ok"
        )
        code, first = asyncio.run(closed_with(f"{base}?token=nope"))
        assert code == CloseCode.UNAUTHORIZED and "token" in first
        code, first = asyncio.run(closed_with(f"{base}?token={TOKEN}", b"\x00" * 8194))  # the app's check
        assert code == CloseCode.MESSAGE_TOO_BIG and json.loads(first)["type"] == "ready"
        code, _ = asyncio.run(closed_with(f"{base}?token={TOKEN}", b"\x00" * 100_000))  # uvicorn's limit
        assert code == CloseCode.MESSAGE_TOO_BIG
        asyncio.run(leave_mid_stream(f"{base}?token={TOKEN}"))
        wait_until(lambda: engine.sessions == 0, "the session counter returned to 0")
        wait_until(lambda: stream_threads() <= before, "the stream threads ended")
    engine.close(wait=True)


def test_a_client_reconnecting_at_once_gets_its_slot_back(
    engine_parts: tuple[Any, Any, str], avatar_name: str
) -> None:
    """The slot is released when the client leaves, not after the session's threads have stopped."""
    import asyncio

    from websockets.asyncio.client import connect

    from lipsync.server.engine import ServerEngine

    settings = ServerSettings(max_sessions=1)
    engine = ServerEngine(engine_parts[0], engine_parts[1], settings)

    async def reconnect(url: str, times: int) -> list[str]:
        firsts = []
        for _ in range(times):
            async with connect(url, max_size=None) as ws:
                firsts.append(str(await ws.recv()))
        return firsts

    before = stream_threads()
    with running_server(engine, settings) as port:
        firsts = asyncio.run(reconnect(f"ws://127.0.0.1:{port}/ws/{avatar_name}", 100))
        refused = [first for first in firsts if json.loads(first)["type"] != "ready"]
        assert refused == [], f"{len(refused)} of 100 reconnects refused, e.g. {refused[0]}"
        wait_until(lambda: engine.sessions == 0, "the session counter returned to 0")
        wait_until(lambda: stream_threads() <= before, "the stream threads ended")
    engine.close(wait=True)
