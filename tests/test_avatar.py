"""Prepared avatars: speaking equals dubbing, stale caches rebuild, corrupt ones are reported."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import DubSettings, FaceSettings, RuntimeSettings
from lipsync.errors import NoFaceError, OutputError
from lipsync.io.video import probe_video
from lipsync.io.writer import VideoWriter
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar import AvatarError, AvatarStore, load_fresh_avatar, prepare_avatar
from lipsync.pipeline.dub import DubPipeline
from lipsync.pipeline.speak import SpeakPipeline

from conftest import media, write_clip

BATCH = RuntimeSettings(device="cpu", batch_size=8)


@pytest.fixture
def written_frames(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Digests of every frame any VideoWriter writes, in order (exact, unlike decoding the H.264)."""
    digests: list[str] = []
    original = VideoWriter.write

    def record(self: VideoWriter, frame: np.ndarray) -> None:
        digests.append(hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest())
        original(self, frame)

    monkeypatch.setattr(VideoWriter, "write", record)
    yield digests


SHORT = 20  # frames in the test's own clips: enough for every behaviour, quick to prepare


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(media("talk_c.mp4"), tmp_path_factory.mktemp("clips") / "short.mp4", SHORT)


@pytest.fixture
def own_clip(short_clip: Path, tmp_path: Path) -> Path:
    """A copy of the short clip the test may change."""
    return Path(shutil.copy(short_clip, tmp_path / "clip.mp4"))


def test_speaking_from_an_avatar_equals_dubbing(
    tiny_generator: Generator, own_clip: Path, written_frames: list[str], tmp_path: Path
) -> None:
    # 5 s of speech over a 0.8 s clip: the output cycles forwards and backwards through it six times,
    # with pauses in the speech where the source mouth is kept.
    speech = media("speech_44k_stereo.wav")
    settings = DubSettings(runtime=BATCH)
    DubPipeline(tiny_generator, settings)(own_clip, speech, tmp_path / "dub.mp4", progress=False)
    dubbed = list(written_frames)
    written_frames.clear()

    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(tiny_generator, store, "me", own_clip, settings, show_bar=False)
    avatar, rebuilt = load_fresh_avatar(tiny_generator, store, "me")
    summary = SpeakPipeline(tiny_generator, settings)(avatar, speech, tmp_path / "speak.mp4", progress=False)
    assert rebuilt is None
    assert summary.frames == len(dubbed) == 125
    assert written_frames == dubbed
    assert len(set(dubbed)) > 100  # the frames really differ from one another


def test_an_up_to_date_avatar_is_not_rebuilt(
    tiny_generator: Generator, own_clip: Path, tmp_path: Path
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    first = prepare_avatar(tiny_generator, store, "me", own_clip, show_bar=False)
    again = prepare_avatar(tiny_generator, store, "me", own_clip, show_bar=False)
    assert (first.rebuilt, again.rebuilt, again.reason) == (True, False, "up to date")
    assert first.info.frame_count == probe_video(own_clip).frame_count == SHORT
    assert [p.name for p in store.root.iterdir()] == ["me"]  # no temporary folders left


def test_a_changed_source_or_option_rebuilds_without_asking(
    tiny_generator: Generator, own_clip: Path, tmp_path: Path
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(tiny_generator, store, "me", own_clip, show_bar=False)
    boxes_before = np.load(store.path("me") / "boxes.npy")

    shifted = DubSettings(face=FaceSettings(bbox_shift=8))
    result = prepare_avatar(tiny_generator, store, "me", own_clip, shifted, show_bar=False)
    assert result.rebuilt and "bbox_shift" in result.reason
    assert not np.array_equal(np.load(store.path("me") / "boxes.npy"), boxes_before)

    write_clip(media("talk_b.mp4"), own_clip, 5)  # same path, other content
    avatar, reason = load_fresh_avatar(tiny_generator, store, "me", show_bar=False)
    assert reason is not None and "changed" in reason
    assert avatar.info.width == 844  # talk_b's frames now
    assert store.read_manifest("me")["recipe"]["face"]["bbox_shift"] == 8  # its options were kept


def test_a_failed_rebuild_keeps_the_old_avatar(
    tiny_generator: Generator, own_clip: Path, tmp_path: Path
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(tiny_generator, store, "me", own_clip, show_bar=False)
    faceless = tmp_path / "faceless.mp4"
    with VideoWriter(faceless, 25, 64, 64) as writer:
        for _ in range(5):
            writer.write(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(NoFaceError):
        prepare_avatar(tiny_generator, store, "me", faceless, show_bar=False)
    assert store.load("me").info.width == 590
    assert [p.name for p in store.root.iterdir()] == ["me"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
        (lambda folder: (folder / "latents.npy").unlink(), "latents.npy cannot be read"),
        (lambda folder: _truncate(folder / "frames.npy"), "frames.npy"),
        (lambda folder: _flip_a_byte(folder / "masks.npy"), "masks.npy does not match its checksum"),
        (lambda folder: _set_format_version(folder, 99), "format version 99"),
    ],
)
def test_a_damaged_avatar_is_reported(
    tiny_generator: Generator, own_clip: Path, tmp_path: Path, damage: object, message: str
) -> None:
    store = AvatarStore(tmp_path / "avatars")
    prepare_avatar(tiny_generator, store, "me", own_clip, show_bar=False)
    damage(store.path("me"))  # type: ignore[operator]
    with pytest.raises(AvatarError) as caught:
        store.load("me")
    assert message in caught.value.problem
    assert "lipsync avatar prepare" in caught.value.fix
    if message.startswith(("manifest", "format")):
        assert message in (store.list()[0].problem or "")  # `avatar list` shows it too
    repaired = prepare_avatar(tiny_generator, store, "me", own_clip, show_bar=False)
    assert repaired.rebuilt and "unusable" in repaired.reason
    assert store.load("me").info.frame_count == SHORT


def test_unknown_and_badly_named_avatars(tmp_path: Path) -> None:
    store = AvatarStore(tmp_path)
    with pytest.raises(AvatarError, match="no avatar called 'nobody'"):
        store.load("nobody")
    with pytest.raises(AvatarError, match="not a usable avatar name"):
        store.path("../escape")


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_format_version(folder: Path, version: int) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_speaking_into_a_container_that_is_not_written_is_refused_before_any_work(
    tiny_generator: Generator, tiny_avatars: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    avatar = AvatarStore(tiny_avatars[0]).load(tiny_avatars[1])
    loaded: list[Path] = []
    monkeypatch.setattr("lipsync.pipeline.speak.load_audio", lambda path, rate: loaded.append(path))
    with pytest.raises(OutputError, match=r"the suffix \.avi names no container lipsync writes") as caught:
        SpeakPipeline(tiny_generator)(
            avatar, media("speech_44k_stereo.wav"), tmp_path / "x.avi", progress=False
        )
    assert caught.value.fix == "Name it e.g. x.mp4."
    assert loaded == [] and list(tmp_path.iterdir()) == []
