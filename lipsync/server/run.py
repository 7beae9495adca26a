"""Starting `lipsync serve`: the bind/token rule, then uvicorn."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from lipsync.config import DEFAULT_PORT, DubSettings, ServerSettings
from lipsync.errors import LipsyncError
from lipsync.server.hosts import is_loopback, normalize_allowed

# uvicorn refuses WebSocket messages above this many bytes on its own (close 1009); one byte above the
# app's limit, so a message just over the limit still reaches the app and gets an error message first.
TRANSPORT_SLACK_BYTES = 1
TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"']+")
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")
MIN_PORT, MAX_PORT = 1, 65535


def check_bind(host: str, token: str | None) -> None:
    """Binding to anything but loopback needs a token: anyone who can reach the port could use the server."""
    if not is_loopback(host) and not token:
        raise LipsyncError(
            f"--host {host} makes the server reachable from other machines, and no token is set",
            "pass --token SECRET (or set LIPSYNC_TOKEN=SECRET); clients then send "
            "'Authorization: Bearer SECRET' (or ?token=SECRET on the WebSocket URL). "
            "Or bind to 127.0.0.1 (the default) to serve this machine only",
        )


def redact(value: object) -> object:
    """`value` with the token of any URL in it replaced by ***, if it is a string; else `value` itself."""
    return TOKEN_IN_URL.sub(r"\1***", value) if isinstance(value, str) else value


def check_port(port: int) -> None:
    """A TCP port clients can be told: 1-65535 (0 would make the system pick one nobody knows)."""
    if not MIN_PORT <= port <= MAX_PORT:
        raise LipsyncError(
            f"--port {port} is not a TCP port a client can connect to",
            f"give a port from {MIN_PORT} to {MAX_PORT} (the default is {DEFAULT_PORT})",
        )


def check_listen(host: str, port: int) -> None:
    """Bind every address `host` stands for on `port`, as uvicorn will, then let go at once.

    A host that does not resolve, an address this machine does not have, a port in use or one that needs
    privileges fails here, before the models load, instead of after.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        bound = 0
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
                try:
                    probe.bind(address)
                    bound += 1
                except OSError as error:  # asyncio skips a family the machine lacks (bpo-30945)
                    if error.errno != errno.EADDRNOTAVAIL:
                        raise
        if not bound:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except OSError as error:  # socket.gaierror (a name that does not resolve) included
        reason = error.strerror or str(error)
        raise LipsyncError(
            f"cannot listen on --host {host} --port {port}: {reason}",
            "if another server uses the port, stop it or pick another --port; ports below 1024 need "
            "administrator rights; --host must be an address of this machine (e.g. 127.0.0.1, 0.0.0.0, ::)",
        ) from error


class RedactToken(logging.Filter):
    """uvicorn logs WebSocket paths, and browsers put the token in them: keep it out of the logs.

    The token is replaced inside the message and each of its arguments, keeping the record's shape:
    uvicorn's access formatter unpacks `record.args` as (client, method, path, version, status).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: redact(arg) for key, arg in record.args.items()}
        return True


@contextmanager
def interruptible_start() -> Iterator[None]:
    """Ctrl-C while the models load stops the command as a KeyboardInterrupt (the CLI: one line, exit 130).

    A library that catches the KeyboardInterrupt half-way through an import or a load may raise its own
    error instead (and the weights loader turns some of those into a WeightsError), which would end in a
    traceback or a wrong diagnosis: an error raised after Ctrl-C was pressed is reported as the interruption.
    """
    pressed: list[int] = []

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        pressed.append(signum)
        raise KeyboardInterrupt

    # only the main thread may set handlers; an ignored SIGINT (a background job) stays ignored
    watch = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if watch:
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except Exception as error:
        if pressed:
            raise KeyboardInterrupt from error
        raise
    finally:
        if watch:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def check_media(folder: Path) -> Path:
    """The media folder, resolved (symlinks followed), or a LipsyncError if it is no folder."""
    resolved = folder.expanduser().resolve()
    if not resolved.is_dir():
        raise LipsyncError(
            f"--media {folder} is not a folder",
            "give the folder whose videos and photos clients may prepare avatars from, or leave --media "
            "out to accept uploads only",
        )
    return resolved


def uvicorn_config(app: FastAPI, settings: ServerSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws_max_size=settings.max_message_bytes + TRANSPORT_SLACK_BYTES,
        ws_per_message_deflate=False,  # JPEG and PCM hardly compress; the limit is then on plain bytes
        log_level="info",
    )


def serve(
    settings: ServerSettings,
    weights: Path,
    avatars: Path,
    dub: DubSettings,
) -> None:
    """Check the bind address, load the generator once, then serve until interrupted."""
    host = settings.host.strip()
    if host.startswith("[") and host.endswith("]"):  # a URL's [::1] is the address ::1
        host = host[1:-1]
    settings = replace(
        settings,
        host=host,
        token=settings.token or None,
        allowed_hosts=tuple(normalize_allowed(name) for name in settings.allowed_hosts),
    )
    # before anything slow: a refusal should come at once, not after the models have loaded
    check_port(settings.port)
    check_bind(settings.host, settings.token)
    check_listen(settings.host, settings.port)
    if settings.media_dir is not None:
        settings = replace(settings, media_dir=check_media(settings.media_dir))

    with interruptible_start():
        from lipsync.server.app import create_app
        from lipsync.server.engine import ServerEngine

        engine = ServerEngine.from_pretrained(weights, avatars, dub, settings)
    try:
        if engine.generator.untrained:
            print(
                "WARNING: serving with UNTRAINED scaffolded weights: the mouths are random", file=sys.stderr
            )
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(f"lipsync serve: http://{shown}:{settings.port}/ (avatars in {avatars})", file=sys.stderr)
        server = uvicorn.Server(uvicorn_config(create_app(engine, settings), settings))
        for name in UVICORN_LOGGERS:  # uvicorn sets its loggers up when the config is made
            logging.getLogger(name).addFilter(RedactToken())
        server.run()
    finally:
        engine.close()
