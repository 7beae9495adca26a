"""Starting `lipsync serve`: the bind/token rule, then uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from lipsync.config import DubSettings, ServerSettings
from lipsync.errors import LipsyncError

LOOPBACK_NAMES = frozenset({"localhost"})
# uvicorn refuses WebSocket messages above this many bytes on its own (close 1009); one byte above the
# app's limit, so a message just over the limit still reaches the app and gets an error message first.
TRANSPORT_SLACK_BYTES = 1
TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"']+")
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost" are reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
    settings = replace(settings, token=settings.token or None)
    check_bind(settings.host, settings.token)  # before anything slow: a refusal should come at once

    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    engine = ServerEngine.from_pretrained(weights, avatars, dub, settings)
    try:
        if engine.generator.untrained:
            print(
                "WARNING: serving with UNTRAINED scaffolded weights: the mouths are random", file=sys.stderr
            )
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(f"lipsync serve: http://{host}:{settings.port}/ (avatars in {avatars})", file=sys.stderr)
        server = uvicorn.Server(uvicorn_config(create_app(engine, settings), settings))
        for name in UVICORN_LOGGERS:  # uvicorn sets its loggers up when the config is made
            logging.getLogger(name).addFilter(RedactToken())
        server.run()
    finally:
        engine.close()
