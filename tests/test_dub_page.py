"""The dubbing page of `lipsync serve`, end to end in headless Chromium against a real server (tiny weights):
upload a video and a speech file, tune the box with the first-frame preview, dub, play and download."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lipsync.config import AUDIO_SAMPLE_RATE, DubSettings, RuntimeSettings
from lipsync.io.audio import load_audio
from lipsync.io.video import probe_video

from conftest import REPO, media, needs_browser, write_wav

pytestmark = needs_browser

TOKEN = "dub-page-token"
SPEECH_SECONDS = 1.0
SHIFT = 6  # arrow-key presses on the box-shift slider (1 px each)
WAIT_MS = 120_000  # generous: a loaded 2-core machine
SCREENSHOTS = REPO / "out"


@pytest.fixture(scope="module")
def server_url(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from lipsync.server.loadbench import LocalServerOptions, local_server

    options = LocalServerOptions(
        tiny_weights,
        tmp_path_factory.mktemp("avatars"),
        dub=DubSettings(runtime=RuntimeSettings(device="cpu")),
        token=TOKEN,
    )
    with local_server(options, max_sessions=1) as url:
        yield url


def _dub_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("({...window.lipsyncDub})")
    return state


def _screenshot(page: Any, folder: Path, name: str) -> None:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)
    print(f"screenshot: {SCREENSHOTS / name}")


def test_dub_page_previews_the_face_dubs_and_downloads(
    server_url: str, browser_context: Any, tmp_path: Path
) -> None:
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    speech = write_wav(tmp_path / "speech.wav", audio.samples[: round(SPEECH_SECONDS * AUDIO_SAMPLE_RATE)])
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(f"{server_url}/dub?token={TOKEN}")
        page.wait_for_function("window.lipsyncDub.defaults !== null")
        assert page.is_visible("#untrained-banner")
        assert page.is_disabled("#start")

        # The video is uploaded and previewed as soon as it is chosen.
        page.set_input_files("#video-file", str(media("talk_c.mp4")))
        page.wait_for_function("window.lipsyncDub.previews >= 1")
        first = _dub_state(page)
        first_image = page.get_attribute("#preview", "src")
        assert first["previewFaces"] == 1
        assert "1 face found" in page.text_content("#preview-info")

        # Moving the box-shift slider moves the box in a new preview: its top by twice the shift.
        page.focus("#bbox-shift")
        for _ in range(SHIFT):
            page.keyboard.press("ArrowRight")
        x1, y1, x2, y2 = first["previewBox"]
        page.wait_for_function("top => window.lipsyncDub.previewBox[1] === top", arg=y1 + 2 * SHIFT)
        assert _dub_state(page)["previewBox"] == [x1, y1 + 2 * SHIFT, x2, y2]
        assert page.text_content("#bbox-shift-value") == str(SHIFT)
        assert page.get_attribute("#preview", "src") != first_image
        _screenshot(page, tmp_path, "dub-page-preview.png")

        # Speech chosen: start, follow the progress bar to the end, then play and download.
        page.set_input_files("#audio-file", str(speech))
        assert page.is_enabled("#start")
        page.click("#start")
        page.wait_for_function("window.lipsyncDub.jobStatus === 'done' && window.lipsyncDub.resultBytes > 0")
        assert page.evaluate("document.getElementById('progress').value") == 1
        assert page.is_visible("#result") and page.is_visible("#download")
        # The browser plays it: its duration is the speech's.
        page.wait_for_function("document.getElementById('result').duration > 0")
        played = page.evaluate("document.getElementById('result').duration")
        assert abs(played - SPEECH_SECONDS) < 0.1
        assert _dub_state(page)["uploads"] == 2  # the previewed upload was used by the job, not sent again
        with page.expect_download() as download_info:
            page.click("#download")
        download = download_info.value
        assert download.suggested_filename == "talk_c-lipsync.mp4"
        saved = tmp_path / download.suggested_filename
        download.save_as(str(saved))
        info = probe_video(saved)
        assert info.frame_count == round(SPEECH_SECONDS * 25) and (info.width, info.height) == (590, 590)
        assert abs(load_audio(saved).duration_s - SPEECH_SECONDS) < 0.05
        _screenshot(page, tmp_path, "dub-page-result.png")
        assert errors == []
    finally:
        page.close()
