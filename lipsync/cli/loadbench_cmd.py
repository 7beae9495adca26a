"""`lipsync bench-live`: latency and frame rate of `lipsync serve` with 1, 2, 4 ... concurrent sessions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import get_args

from lipsync.cli.options import add_avatars_option, add_model_options, settings_from_args
from lipsync.config import TOKEN_ENV, LoadBenchPace, LoadBenchSettings

DEFAULTS = LoadBenchSettings()
DEFAULT_AUDIO = Path("../shared/media/speech_44k_stereo.wav")
DEFAULT_SESSIONS = ",".join(str(count) for count in DEFAULTS.sessions)


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench-live",
        help="concurrent WebSocket sessions against `lipsync serve`: first-frame time, fps, frame latency",
        description="Streams a speech file through N WebSocket sessions at once, for each N in --sessions, "
        "and reports time to first speech frame, speech frames per second, frame latency (p50/p95/max), "
        "dropped frames and whether every session got floor(samples * fps / 16000) speech frames. "
        "Without --url it starts the server in this process on a free loopback port.",
    )
    bench.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8765 (default: start one here)")
    bench.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"the --url server's token (default ${TOKEN_ENV})",
    )
    bench.add_argument("--avatar", help="prepared avatar to use (default: the first the server lists)")
    add_avatars_option(bench)  # these and the model options serve the in-process server
    add_model_options(bench, batch=False)
    bench.add_argument(
        "--audio",
        type=Path,
        default=DEFAULT_AUDIO,
        help=f"speech each session streams (default {DEFAULT_AUDIO})",
    )
    bench.add_argument(
        "--sessions",
        type=_session_counts,
        default=DEFAULTS.sessions,
        help=f"concurrent sessions to try, one run each (default {DEFAULT_SESSIONS})",
    )
    bench.add_argument(
        "--chunk-ms",
        type=_positive_float,
        default=DEFAULTS.chunk_ms,
        help=f"audio per WebSocket message (default {DEFAULTS.chunk_ms:g})",
    )
    bench.add_argument(
        "--pace",
        choices=get_args(LoadBenchPace),
        default=DEFAULTS.pace,
        help="send chunks as a live speaker would (default), or as fast as the socket takes them",
    )
    bench.add_argument(
        "--seconds", type=_positive_float, help="use at most this much of the audio per session"
    )
    bench.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULTS.timeout_s,
        help=f"seconds each run may take (default {DEFAULTS.timeout_s:g})",
    )
    bench.add_argument("--no-warmup", action="store_true", help="skip the short unmeasured first session")
    bench.add_argument("--json", type=Path, help="also write the report here")


def _session_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from error
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1 separated by commas, got {text!r}")
    return counts


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _progress(message: str) -> None:
    print(f"bench-live: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from lipsync.server.loadbench import LocalServerOptions, run_loadbench

    settings = LoadBenchSettings(
        sessions=args.sessions,
        chunk_ms=args.chunk_ms,
        pace=args.pace,
        seconds=args.seconds,
        timeout_s=args.timeout,
        warmup=not args.no_warmup,
    )
    local = None
    if args.url is None:
        local = LocalServerOptions(weights=args.weights, avatars=args.avatars, dub=settings_from_args(args))
    report = run_loadbench(settings, args.audio, args.avatar, args.url, args.token, local, progress=_progress)
    print(report.format())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json() + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if report.ok else 1
