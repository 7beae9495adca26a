"""`lipsync serve`: the live-avatar server (REST + WebSocket, see docs/streaming-protocol.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lipsync.cli.options import add_avatars_option, add_model_options, positive_int, settings_from_args
from lipsync.config import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, ServerSettings


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="live avatars: stream audio in over a WebSocket, get lip-synced frames back"
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only; any other needs --token)",
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help="secret clients must send (Authorization: Bearer TOKEN, or ?token= on the WebSocket); "
        f"default ${TOKEN_ENV}; required unless bound to loopback",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the server answers to besides 127.0.0.1, localhost and [::1], and whose pages "
        "may call it: a reverse proxy's public name, say (repeatable)",
    )
    add_model_options(serve, batch=False)
    add_avatars_option(serve)
    serve.add_argument(
        "--max-sessions",
        type=positive_int,
        default=ServerSettings.max_sessions,
        help=f"concurrent live sessions (default {ServerSettings.max_sessions})",
    )
    serve.add_argument(
        "--media",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder whose videos and photos clients may prepare avatars from (POST /api/avatars "
        '{"source": "PATH/RELATIVE/TO/DIR"}); nothing outside it is read. Default: none, clients then '
        "upload their files (POST /api/uploads)",
    )


def run(args: argparse.Namespace) -> int:
    from lipsync.server.run import serve

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        token=args.token or None,
        allowed_hosts=tuple(args.allow_host),
        max_sessions=args.max_sessions,
        media_dir=args.media,
    )
    serve(settings, args.weights, args.avatars, settings_from_args(args))
    return 0
