"""`lipsync bench-live`: concurrent sessions against an in-process server with tiny weights."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import pytest

from lipsync.cli import loadbench_cmd
from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings
from lipsync.server.loadbench import (
    LoadBenchError,
    LoadBenchSettings,
    LocalServerOptions,
    SessionRecord,
    SessionResult,
    run_loadbench,
    websocket_url,
)

from conftest import media

SPEECH = "speech_44k_stereo.wav"
AUDIO_SECONDS = 1.0


def test_bench_live_counts_and_times_every_speech_frame(
    tiny_weights: Path, tiny_avatars: tuple[Path, str], tmp_path: Path
) -> None:
    avatars_root, name = tiny_avatars
    settings = LoadBenchSettings(
        sessions=(1, 2), chunk_ms=40, pace="fast", seconds=AUDIO_SECONDS, timeout_s=60, warmup=False
    )
    local = LocalServerOptions(
        tiny_weights, avatars_root, dub=DubSettings(runtime=RuntimeSettings(device="cpu"))
    )
    report = run_loadbench(settings, media(SPEECH), avatar=name, local=local)

    assert report.avatar == name
    assert report.server.untrained
    assert report.audio_seconds == AUDIO_SECONDS
    fps = Fraction(report.fps).limit_denominator(1001)
    frames_per_session = int(AUDIO_SECONDS * fps)
    assert [run.sessions for run in report.runs] == [1, 2]
    for run in report.runs:
        assert run.errors == ()
        assert run.frame_count_ok
        assert run.speech_frames == run.expected_speech_frames == run.sessions * frames_per_session
        assert len(run.per_session) == run.sessions
        assert run.first_frame_s_mean is not None and run.first_frame_s_mean > 0
        assert (
            run.latency_p50_ms is not None
            and run.latency_p95_ms is not None
            and run.latency_max_ms is not None
        )
        assert 0 < run.latency_p50_ms <= run.latency_p95_ms <= run.latency_max_ms
        assert run.fps_per_session > 0 and run.fps_total > 0
        assert run.delivery_fps is not None and run.delivery_fps > run.fps_per_session
        for session in run.per_session:
            assert len(session.latencies_s) == session.speech_frames
    assert report.ok

    table = report.format()
    assert "p95 ms" in table and "delivery fps" in table and "FAIL" not in table
    saved = json.loads(report.to_json())
    assert [run["frame_count_ok"] for run in saved["runs"]] == [True, True]


def test_delivery_rate_counts_from_the_first_speech_frame_to_the_last() -> None:
    def result(frames: int, first: float | None, turn: float | None) -> SessionResult:
        return SessionResult(0, 16000, frames, frames, 0, 0, first, turn, ())

    kept_up = result(26, 0.5, 1.5)  # 26 frames a second apart, the first 0.5 s after the audio began
    assert kept_up.delivery_fps == 25.0 and kept_up.frames_per_second == pytest.approx(17.33, abs=0.01)
    assert result(1, 0.5, 0.5).delivery_fps is None and result(0, None, None).delivery_fps is None


def test_frame_latency_is_timed_from_the_chunk_that_completes_its_audio() -> None:
    record = SessionRecord(session=0, chunk_samples=640, audio_samples=3200, fps=Fraction(25))
    record.send_times = [10.0, 10.04, 10.08, 10.12, 10.16]
    assert [record.chunk_completing(frame) for frame in range(5)] == [0, 1, 2, 3, 4]
    record = SessionRecord(session=0, chunk_samples=1600, audio_samples=3200, fps=Fraction(25))
    record.send_times = [0.0, 0.1]
    # Frame 2's slot ends at sample 1919 (in chunk 1); frame 1's at 1279 (chunk 0).
    assert [record.chunk_completing(frame) for frame in range(5)] == [0, 0, 1, 1, 1]
    record = SessionRecord(
        session=0, chunk_samples=640, audio_samples=AUDIO_SAMPLE_RATE, fps=Fraction(30000, 1001)
    )
    assert record.expected_frames == 29


def test_cli_options_and_errors() -> None:
    parser = argparse.ArgumentParser(prog="lipsync")
    loadbench_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench-live", "--sessions", "1,3", "--pace", "fast", "--seconds", "2"])
    assert args.sessions == (1, 3) and args.pace == "fast" and args.seconds == 2.0
    with pytest.raises(SystemExit):
        parser.parse_args(["bench-live", "--sessions", "0,2"])
    with pytest.raises(LoadBenchError):
        LoadBenchSettings(chunk_ms=0)
    assert websocket_url("https://example.org/base/", "anna b") == "wss://example.org/base/ws/anna%20b"


def test_unreachable_server_is_a_clear_error() -> None:
    settings = LoadBenchSettings(sessions=(1,), warmup=False)
    with pytest.raises(LoadBenchError, match="cannot reach"):
        run_loadbench(settings, media(SPEECH), url="http://127.0.0.1:9")
