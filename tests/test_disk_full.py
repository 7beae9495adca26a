"""A full disk: dubbing and preparing give the usual error and fix, leave nothing behind, and a server job
that hits it leaves the server serving. The disk fills by injection: the write calls fail with ENOSPC."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lipsync.cli.main import main
from lipsync.config import ServerSettings
from lipsync.errors import OutputError
from lipsync.io import writer
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import AvatarError, AvatarStore, prepare_avatar
from lipsync.pipeline.dub import DubPipeline

from conftest import media, still_photo

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingContainer:
    """An output container whose disk is full after `room` packets."""

    def __init__(self, container: Any, room: int) -> None:
        self._container, self._room = container, room

    def mux(self, packets: Any) -> None:
        self._room -= 1
        if self._room < 0:
            raise NO_SPACE
        self._container.mux(packets)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


@pytest.fixture
def full_disk_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def fill(room: int) -> None:
        real_open = writer.av.open

        def open_output(*args: Any, **kwargs: Any) -> Any:  # only the output fills up; inputs read fine
            opened = real_open(*args, **kwargs)
            return FillingContainer(opened, room) if kwargs.get("mode") == "w" else opened

        monkeypatch.setattr(writer.av, "open", open_output)

    return fill


def test_a_dub_on_a_full_disk_fails_clearly_and_leaves_nothing(
    tiny_generator: Generator, full_disk_after: Callable[[int], None], tmp_path: Path
) -> None:
    full_disk_after(5)
    out = tmp_path / "out" / "dub.mp4"
    out.parent.mkdir()
    with pytest.raises(OutputError, match="No space left on device") as error:
        DubPipeline(tiny_generator)(
            still_photo(tmp_path), media("speech_44k_stereo.wav"), out, progress=False
        )
    assert "Free some space" in error.value.fix
    assert list(out.parent.iterdir()) == []


def test_the_command_line_says_so_without_a_traceback(
    tiny_weights: Path,
    full_disk_after: Callable[[int], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    full_disk_after(5)
    inputs = [str(still_photo(tmp_path)), str(media("speech_44k_stereo.wav"))]
    out = tmp_path / "out.mp4"
    assert main(["dub", *inputs, "-o", str(out), "--weights", str(tiny_weights), "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: Could not write" in err and "fix: Free some space" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.png"]


def test_preparing_on_a_full_disk_fails_clearly_and_keeps_nothing(
    tiny_generator: Generator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = still_photo(tmp_path)
    store = AvatarStore(tmp_path / "avatars")

    def no_space(*args: object) -> None:
        raise NO_SPACE

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(AvatarError, match="cannot reserve") as error:
        prepare_avatar(tiny_generator, store, "me", source, show_bar=False)
    assert "free some disk space" in error.value.fix
    assert list(store.root.iterdir()) == []  # no partial folder either


def test_too_little_free_space_is_refused_before_writing(
    tiny_generator: Generator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    store = AvatarStore(tmp_path / "avatars")
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    with pytest.raises(AvatarError, match=r"needs \d+ MB and .* has 0 MB free"):
        prepare_avatar(tiny_generator, store, "me", media("talk_c.mp4"), show_bar=False)
    assert list(store.root.iterdir()) == []


def test_a_server_job_that_fills_the_disk_leaves_the_server_serving(
    tiny_generator: Generator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lipsync.server.engine import PrepareRequest, ServerEngine

    engine = ServerEngine(tiny_generator, AvatarStore(tmp_path / "avatars"), ServerSettings())
    real = os.posix_fallocate
    try:
        monkeypatch.setattr(os, "posix_fallocate", lambda *args: (_ for _ in ()).throw(NO_SPACE))
        failed = engine.submit_prepare(PrepareRequest("full", still_photo(tmp_path)))
        while engine.job(failed.id).status in ("queued", "running"):
            time.sleep(0.02)
        status = engine.job(failed.id)
        assert status.status == "failed" and status.error is not None and "cannot reserve" in status.error
        monkeypatch.setattr(os, "posix_fallocate", real)  # space was freed
        done = engine.submit_prepare(PrepareRequest("fine", still_photo(tmp_path)))
        while engine.job(done.id).status in ("queued", "running"):
            time.sleep(0.02)
        assert engine.job(done.id).status == "done" and engine.health().status == "ok"
        assert [info.name for info in engine.list_avatars()] == ["fine"]
    finally:
        engine.close(wait=True)
