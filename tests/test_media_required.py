"""The shared media: a missing file skips its tests locally, but fails them in CI (no silent green)."""

from __future__ import annotations

from pathlib import Path

import pytest

import conftest


def test_missing_media_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "MEDIA", tmp_path)
    monkeypatch.delenv(conftest.CI_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        conftest.media("talk_c.mp4")


@pytest.mark.parametrize("value", ["true", "1"])
def test_missing_media_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setattr(conftest, "MEDIA", tmp_path)
    monkeypatch.setenv(conftest.CI_ENV, value)
    with pytest.raises(pytest.fail.Exception) as failed:
        conftest.media("talk_c.mp4")
    assert str(tmp_path / "talk_c.mp4") in str(failed.value) and "next to the checkout" in str(failed.value)


def test_present_media_is_returned_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "talk_c.mp4").write_bytes(b"")
    monkeypatch.setattr(conftest, "MEDIA", tmp_path)
    monkeypatch.setenv(conftest.CI_ENV, "true")
    assert conftest.media("talk_c.mp4") == tmp_path / "talk_c.mp4"
