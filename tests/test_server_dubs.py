"""The REST side of the dubbing page: media listing, first-frame preview, dub jobs and their results."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lipsync.config import AUDIO_SAMPLE_RATE, ServerSettings
from lipsync.io.audio import load_audio
from lipsync.io.video import probe_video
from lipsync.server.protocol import decode_jpeg

from conftest import media, still_photo, write_clip, write_wav

TOKEN = "dub-page-token"
LOOPBACK_URL = "http://127.0.0.1:8765"  # without a token, the server answers loopback Hosts only
OCTET_STREAM = {"Content-Type": "application/octet-stream"}
DEADLINE_S = 120.0
SPEECH_SECONDS = 0.6  # 15 frames at 25 fps: a dub job of a moment
SHIFT = 8  # px of bbox shift the preview test moves the box by

Server = tuple[Any, Any]  # (TestClient, ServerEngine)


@pytest.fixture
def dub_server(tiny_generator: Any, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """dub_server(**ServerSettings overrides) -> (TestClient, ServerEngine); engines are closed after."""
    from fastapi.testclient import TestClient

    from lipsync.pipeline.avatar import AvatarStore
    from lipsync.server.app import create_app
    from lipsync.server.engine import ServerEngine

    engines: list[ServerEngine] = []

    def make(**overrides: Any) -> Server:
        settings = replace(ServerSettings(), **overrides)
        engine = ServerEngine(tiny_generator, AvatarStore(tmp_path / "avatars"), settings)
        engines.append(engine)
        return TestClient(create_app(engine, settings), base_url=LOOPBACK_URL), engine

    yield make
    for engine in engines:
        engine.close(wait=True)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SPEECH_SECONDS of the shared speech as a 16 kHz WAV."""
    audio = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE)
    samples = audio.samples[: round(SPEECH_SECONDS * AUDIO_SAMPLE_RATE)]
    return write_wav(tmp_path_factory.mktemp("speech") / "hello.wav", samples)


def upload(client: Any, path: Path, headers: dict[str, str] | None = None) -> str:
    answer = client.post(
        f"/api/uploads?name={path.name}",
        content=path.read_bytes(),
        headers={**OCTET_STREAM, **(headers or {})},
    )
    assert answer.status_code == 201, answer.json()
    upload_id: str = answer.json()["upload"]
    return upload_id


def finish(client: Any, job_id: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every status seen until the job was done or failed."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_S
    while not seen or seen[-1]["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {seen[-1:]}"
        seen.append(client.get(f"/api/jobs/{job_id}", headers=headers).json())
        time.sleep(0.05)
    return seen


def test_preview_shows_the_face_box_and_mask_and_follows_bbox_shift(
    dub_server: Callable[..., Server],
) -> None:
    client, engine = dub_server()
    video_id = upload(client, media("talk_c.mp4"))

    first = client.post("/api/preview", json={"upload": video_id}).json()
    shifted = client.post("/api/preview", json={"upload": video_id, "bbox_shift": SHIFT}).json()

    assert (first["width"], first["height"], first["faces"], first["frames"]) == (590, 590, 1, 125)
    x1, y1, x2, y2 = first["box"]
    assert 0 <= x1 < x2 <= 590 and 0 <= y1 < y2 <= 590
    # The box is centred on the nose point moved down by the shift, and reaches up as far above it as the
    # chin is below it: its top moves down by twice the shift; its bottom (the chin) stays.
    assert shifted["box"] == [x1, y1 + 2 * SHIFT, x2, y2]
    image = decode_jpeg(_jpeg(first["image"]))
    assert image.shape == (590, 590, 3)
    source = _first_frame(media("talk_c.mp4"))
    changed = np.abs(image.astype(int) - source.astype(int)).max(axis=2) > 40
    rows, cols = np.nonzero(changed)
    # The overlays (box, landmarks, tinted mask) are drawn on the face, nowhere far from its box.
    assert changed[y1:y2, x1:x2].mean() > 0.1
    assert rows.min() >= y1 - 10 and rows.max() <= y2 + 10 and cols.min() >= x1 - 10 and cols.max() <= x2 + 10
    assert first["image"] != shifted["image"]
    # A preview reads an upload without using it up: a dub job can still take it.
    assert len(engine.uploads) == 1


def test_preview_errors_name_the_problem(dub_server: Callable[..., Server], tmp_path: Path) -> None:
    client, _ = dub_server(media_dir=tmp_path)
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((240, 320, 3), 127, np.uint8))
    no_face = client.post("/api/preview", json={"source": "blank.png"})
    assert no_face.status_code == 400 and "no face" in no_face.json()["error"]
    still_photo(tmp_path)
    wrong_face = client.post("/api/preview", json={"source": "still.png", "face_index": 3})
    assert wrong_face.status_code == 400 and "face_index" in (
        wrong_face.json()["error"] + wrong_face.json()["fix"]
    )
    outside = client.post("/api/preview", json={"source": "../etc/passwd"})
    assert outside.status_code == 400 and "media folder" in outside.json()["error"]
    unknown = client.post("/api/preview", json={"source": "still.png", "bbox": 3})
    assert unknown.status_code == 400 and '"bbox_shift"' in unknown.json()["fix"]


def test_dub_job_from_uploads_gives_a_video_as_long_as_the_speech(
    dub_server: Callable[..., Server], speech_wav: Path
) -> None:
    client, engine = dub_server(token=TOKEN, job_ttl_seconds=3600)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/api/dubs", json={}).status_code == 401  # the token rule applies
    video_id = upload(client, media("talk_c.mp4"), auth)
    audio_id = upload(client, speech_wav, auth)

    answer = client.post(
        "/api/dubs", json={"video_upload": video_id, "audio_upload": audio_id, "bbox_shift": 2}, headers=auth
    )
    assert answer.status_code == 202, answer.json()
    job_id = answer.json()["job"]
    early = client.get(f"/api/jobs/{job_id}/result", headers=auth)
    assert early.status_code in (409, 200)  # 409 while it runs (a fast machine may be done already)
    seen = finish(client, job_id, auth)

    status = seen[-1]
    assert status["status"] == "done", status["error"]
    assert status["kind"] == "dub" and status["progress"] == 1.0 and status["result"] == "talk_c-lipsync.mp4"
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress)
    assert list(engine.uploads.folder.iterdir()) == []  # the job removed both uploads
    result = client.get(f"/api/jobs/{job_id}/result", headers=auth)
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    assert 'filename="talk_c-lipsync.mp4"' in result.headers["content-disposition"]
    downloaded = engine.uploads.folder.parent / f"{job_id}.mp4"
    try:
        downloaded.write_bytes(result.content)
        info = probe_video(downloaded)
        assert info.frame_count == round(SPEECH_SECONDS * 25)
        assert (info.width, info.height) == (590, 590)
        assert abs(load_audio(downloaded).duration_s - SPEECH_SECONDS) < 0.05
    finally:
        downloaded.unlink()
    assert client.get(f"/api/jobs/{job_id}/result").status_code == 401


def test_dub_job_from_media_paths_and_its_output_goes_with_the_job(
    dub_server: Callable[..., Server], speech_wav: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "media"
    (folder / "clips").mkdir(parents=True)
    write_clip(media("talk_c.mp4"), folder / "clips" / "anna.mp4", frames=8)
    (folder / "hello.wav").write_bytes(speech_wav.read_bytes())
    (folder / "notes.txt").write_text("not media")
    (folder / ".hidden.wav").write_bytes(b"")
    client, engine = dub_server(media_dir=folder, job_ttl_seconds=0.5)

    assert client.get("/api/media").json() == {"files": ["clips/anna.mp4", "hello.wav"]}
    defaults = client.get("/api/dub-defaults").json()
    assert defaults["media_folder"] is True and defaults["untrained"] is True
    assert defaults["silence"] in defaults["silence_modes"]

    answer = client.post(
        "/api/dubs", json={"video": "clips/anna.mp4", "audio": "hello.wav", "silence": "generate"}
    )
    job_id = answer.json()["job"]
    status = finish(client, job_id)[-1]
    assert status["status"] == "done", status["error"]
    output = engine.job_result(job_id)
    assert output.name == "anna-lipsync.mp4" and probe_video(output).frame_count == 15
    time.sleep(0.6)
    assert client.get(f"/api/jobs/{job_id}").status_code == 404  # forgotten after job_ttl_seconds ...
    assert not output.parent.exists()  # ... with its output
    assert (folder / "clips" / "anna.mp4").exists() and (folder / "hello.wav").exists()  # inputs untouched


def test_bad_dub_requests_are_refused_before_any_work(
    dub_server: Callable[..., Server], speech_wav: Path
) -> None:
    client, engine = dub_server()
    audio_id = upload(client, speech_wav)
    neither = client.post("/api/dubs", json={"audio_upload": audio_id})
    assert neither.status_code == 400 and "video_upload" in neither.json()["error"]
    no_media = client.post("/api/dubs", json={"video": "a.mp4", "audio_upload": audio_id})
    assert no_media.status_code == 400 and "--media" in no_media.json()["fix"]
    bad_silence = client.post(
        "/api/dubs", json={"video_upload": "x", "audio_upload": audio_id, "silence": "mute"}
    )
    assert bad_silence.status_code == 400 and "silence" in bad_silence.json()["error"]
    unknown_upload = client.post("/api/dubs", json={"video_upload": "nope", "audio_upload": audio_id})
    assert unknown_upload.status_code == 400 and "/api/uploads" in unknown_upload.json()["fix"]
    assert len(engine.uploads) == 1  # the audio upload was not taken by the refused request

    # A dub whose speech is not audio fails as a job, with the reason, and leaves no upload behind.
    video_id = upload(client, media("talk_c.mp4"))
    broken = upload(client, _text_as_wav(engine.uploads.folder.parent / "broken.wav"))
    job_id = client.post("/api/dubs", json={"video_upload": video_id, "audio_upload": broken}).json()["job"]
    status = finish(client, job_id)[-1]
    assert status["status"] == "failed" and "audio" in status["error"]
    result = client.get(f"/api/jobs/{job_id}/result")
    assert result.status_code == 409 and "failed" in result.json()["fix"]
    assert [p.name for p in engine.uploads.folder.iterdir()] == [f"{audio_id}.wav"]


def _text_as_wav(path: Path) -> Path:
    path.write_text("this is not audio")
    return path


def _jpeg(data_url: str) -> bytes:
    import base64

    prefix = "data:image/jpeg;base64,"
    assert data_url.startswith(prefix)
    return base64.b64decode(data_url[len(prefix) :])


def _first_frame(path: Path) -> np.ndarray:
    from lipsync.io.video import FrameReader

    with FrameReader(probe_video(path)) as reader:
        return reader.frame(0)
