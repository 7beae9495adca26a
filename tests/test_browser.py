"""The page `lipsync serve` serves, end to end in headless Chromium against a real server (tiny weights).

Needs Debian's /usr/bin/chromium (Playwright's own browsers are not downloaded). Without it the tests are
skipped, unless LIPSYNC_REQUIRE_BROWSER=1, which makes a missing browser a failure.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings
from lipsync.io.audio import load_audio

from conftest import REPO, media, needs_browser

SPEECH = "speech_44k_stereo.wav"
SCREENSHOT_COPY = REPO / "out" / "browser-screenshot.png"
IDLE_FRAMES_BEFORE_SPEECH = 3
TOKEN = "browser-test-token"
MIC_SECONDS = 1.0
WAIT_MS = 90_000  # generous: a loaded 2-core machine renders the tiny model at ~10 fps
BLANK_SPREAD = 16  # a canvas whose channel values span less than this counts as blank

pytestmark = needs_browser


@dataclass(frozen=True)
class LivePage:
    page: Any  # playwright.sync_api.Page
    avatar: str
    errors: list[str]


@pytest.fixture(scope="module")
def server_url(tiny_weights: Path, tiny_avatars: tuple[Path, str]) -> Iterator[str]:
    from lipsync.server.loadbench import LocalServerOptions, local_server

    avatars_root, _ = tiny_avatars
    options = LocalServerOptions(
        tiny_weights, avatars_root, dub=DubSettings(runtime=RuntimeSettings(device="cpu"))
    )
    with local_server(options, max_sessions=2) as url:
        yield url


@pytest.fixture(scope="module")
def token_server_url(tiny_weights: Path, tiny_avatars: tuple[Path, str]) -> Iterator[str]:
    from lipsync.server.loadbench import LocalServerOptions, local_server

    avatars_root, _ = tiny_avatars
    options = LocalServerOptions(
        tiny_weights, avatars_root, dub=DubSettings(runtime=RuntimeSettings(device="cpu")), token=TOKEN
    )
    with local_server(options, max_sessions=1) as url:
        yield url


@pytest.fixture
def live_page(server_url: str, browser_context: Any, tiny_avatars: tuple[Path, str]) -> Iterator[LivePage]:
    """The page, connected to the avatar, with a few idle frames received."""
    _, avatar = tiny_avatars
    page = browser_context.new_page()
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", on_console)
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{server_url}/")
    page.wait_for_selector(f"#avatar-select option[value='{avatar}']", state="attached")
    page.select_option("#avatar-select", avatar)
    page.click("#connect")
    page.wait_for_function(
        f"window.lipsyncStats.connected && window.lipsyncStats.idleFrames >= {IDLE_FRAMES_BEFORE_SPEECH}"
    )
    try:
        yield LivePage(page, avatar, errors)
    finally:
        page.close()


def _stats(page: Any) -> dict[str, Any]:
    stats: dict[str, Any] = page.evaluate("({...window.lipsyncStats})")
    return stats


def _wait_for_turn_end(page: Any, turns: int) -> dict[str, Any]:
    """Until the turn's end was sent, idle frames resumed after it and every speech frame was shown."""
    page.wait_for_function(
        """turns => {
            const s = window.lipsyncStats;
            return s.sendsCompleted === turns && s.speechFrames > 0 && s.lastIndex > s.lastSpeechIndex
                && s.speechFramesShown === s.speechFrames;
        }""",
        arg=turns,
    )
    return _stats(page)


def _canvas_spread(page: Any) -> int:
    """max - min over all channel values of the canvas pixels (0 for a blank canvas)."""
    spread: int = page.evaluate(
        """() => {
            const canvas = document.getElementById("canvas");
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let low = 255, high = 0;
            for (let i = 0; i < data.length; i += 4) {
                for (let c = 0; c < 3; c++) {
                    low = Math.min(low, data[i + c]);
                    high = Math.max(high, data[i + c]);
                }
            }
            return high - low;
        }"""
    )
    return spread


def _fps(stats: dict[str, Any]) -> Fraction:
    return Fraction(stats["ready"]["fps_num"], stats["ready"]["fps_den"])


def test_page_streams_a_speech_file_and_shows_every_frame(live_page: LivePage, tmp_path: Path) -> None:
    page = live_page.page
    speech = media(SPEECH)
    duration = load_audio(speech).duration  # exact: source samples / source rate

    page.set_input_files("#audio-file", str(speech))
    page.click("#send")
    stats = _wait_for_turn_end(page, turns=1)

    fps = _fps(stats)
    # The page decodes at 16 kHz, so it sends floor(duration * 16000) samples and gets floor(duration * fps)
    # speech frames back.
    assert stats["audioSamplesSent"] == math.floor(duration * AUDIO_SAMPLE_RATE)
    assert stats["speechFrames"] == math.floor(duration * fps)
    assert stats["speechFramesShown"] == stats["speechFrames"]
    assert stats["audioSamplesScheduled"] == math.floor(stats["speechFrames"] * AUDIO_SAMPLE_RATE / fps)
    assert stats["idleFramesBeforeSpeech"] >= IDLE_FRAMES_BEFORE_SPEECH
    assert stats["dropped"] == 0
    assert stats["ready"]["avatar"] == live_page.avatar
    assert stats["ready"]["untrained"] is True
    assert page.is_visible("#untrained-banner")
    assert "UNTRAINED" in page.text_content("#untrained-banner")
    shown, counted = page.evaluate(
        "[document.getElementById('frames-received').textContent, window.lipsyncStats.framesReceived]"
    )
    assert shown == str(counted)
    assert _canvas_spread(page) >= BLANK_SPREAD
    assert live_page.errors == []

    screenshot = tmp_path / "browser-screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    SCREENSHOT_COPY.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"browser screenshot: {screenshot} (copied to {SCREENSHOT_COPY})")


def test_microphone_streams_a_turn(live_page: LivePage) -> None:
    page = live_page.page
    assert page.is_visible("#mic"), "the microphone button is shown on localhost"
    page.click("#mic")
    page.wait_for_function(f"window.lipsyncStats.audioSamplesSent >= {MIC_SECONDS * AUDIO_SAMPLE_RATE}")
    page.click("#mic")
    stats = _wait_for_turn_end(page, turns=1)

    assert stats["speechFrames"] == math.floor(stats["audioSamplesSent"] * _fps(stats) / AUDIO_SAMPLE_RATE)
    assert stats["speechFramesShown"] == stats["speechFrames"]
    assert live_page.errors == []


def test_page_uses_the_token_in_its_url(token_server_url: str, browser_context: Any) -> None:
    page = browser_context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(f"{token_server_url}/")
        page.wait_for_function("document.getElementById('error').textContent.includes('token')")
        assert page.is_disabled("#connect")

        page.goto(f"{token_server_url}/?token={TOKEN}")
        page.wait_for_selector("#avatar-select option[value]:not([value=''])", state="attached")
        page.click("#connect")
        page.wait_for_function("window.lipsyncStats.connected && window.lipsyncStats.idleFrames >= 1")
    finally:
        page.close()
