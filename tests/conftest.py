"""Shared fixtures: real media from ../shared/media and tiny scaffolded weights."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from lipsync.models.generator import Generator
    from lipsync.models.musetalk.networks import MuseTalkModels
    from lipsync.train.config import SyncNetTrainConfig

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
CI_ENV = "CI"  # set (to anything) by CI services: there a missing media file fails instead of skipping

# The browser tests drive Debian's Chromium (Playwright's own browsers are not downloaded). Without it they
# are skipped, unless LIPSYNC_REQUIRE_BROWSER=1 (set by .ci/run when it installed it): then a failure.
CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER_ENV = "LIPSYNC_REQUIRE_BROWSER"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A synthetic microphone (a beep), granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
MISSING_BROWSER = f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it"
needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get(REQUIRE_BROWSER_ENV) != "1", reason=MISSING_BROWSER
)


def media(name: str) -> Path:
    """A file of the shared media next to the checkout; skipped without it, except in CI (a failure)."""
    path = MEDIA / name
    if not path.exists():
        if os.environ.get(CI_ENV):
            pytest.fail(
                f"shared media {path} is missing, and ${CI_ENV} is set: the shared media must sit next to "
                f"the checkout, in {MEDIA} (tests that need it must not silently skip in CI)",
                pytrace=False,
            )
        pytest.skip(f"shared media {path} is not available")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of tiny, randomly initialised MuseTalk-layout weights (v1 and v1.5)."""
    from lipsync.models.musetalk.weights import scaffold_weights

    root = tmp_path_factory.mktemp("tiny-weights")
    scaffold_weights(root, tiny=True)
    return root


@pytest.fixture(scope="session")
def tiny_models(tiny_weights: Path) -> MuseTalkModels:
    """The tiny v1.5 models on the CPU in float32 (bfloat16 is slower for such small layers)."""
    from lipsync.models.musetalk.loading import load_models

    return load_models(tiny_weights, "v15", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_generator(tiny_models: MuseTalkModels, tiny_weights: Path) -> Generator:
    """The tiny v1.5 models behind the generator interface (what every pipeline takes)."""
    from lipsync.models.musetalk.generator import MuseTalkGenerator

    return MuseTalkGenerator(tiny_models, tiny_weights)


@pytest.fixture(scope="session")
def tiny_avatars(tiny_generator: Generator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(avatars folder, name): one avatar prepared from talk_c.mp4 with the tiny v1.5 models."""
    from lipsync.pipeline.avatar import AvatarStore, prepare_avatar

    root = tmp_path_factory.mktemp("avatars")
    prepare_avatar(tiny_generator, AvatarStore(root), "talk_c", media("talk_c.mp4"), show_bar=False)
    return root, "talk_c"


@pytest.fixture(scope="session")
def family_scaffolds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny scaffolded weights (seed 0) of the stabilized-sync and landmark-prior families, by family name:
    tests copy a folder before changing it."""
    from lipsync.models import families

    folders = {}
    for name in ("stabilized-sync", "landmark-prior"):
        folders[name] = tmp_path_factory.mktemp(name)
        families.family(name).scaffold(folders[name], tiny=True)
    return folders


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium for a module's browser tests (a persistent context: downloads allowed). Module
    scope: Playwright's sync API holds an event loop in the main thread while it runs, and later tests that
    start their own (asyncio.run) must not find one."""
    required = f"{REQUIRE_BROWSER_ENV}=1 requires the browser tests to run"
    if not CHROMIUM.exists():
        pytest.fail(f"{MISSING_BROWSER}, and {required}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"the playwright package is missing (pip install -e '.[dev]'), and {required}")
        pytest.skip("the playwright package is missing (pip install -e '.[dev]')")

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1000, "height": 800},
            accept_downloads=True,
        )
        try:
            yield context
        finally:
            context.close()


def write_clip(source: Path, out: Path, frames: int) -> Path:
    """The first `frames` frames of `source` as a new H.264 file (a short, changeable test input)."""
    from lipsync.io.video import FrameReader, probe_video
    from lipsync.io.writer import VideoWriter

    info = probe_video(source)
    with FrameReader(info) as reader, VideoWriter(out, info.fps, info.width, info.height) as writer:
        for frame in reader.frames(0, frames):
            writer.write(frame)
    return out


def centre_crops(name: str, count: int, step: int = 1) -> np.ndarray:
    """(count, S, S, 3) centre crops (half the frame's shorter side) of every `step`-th frame of a clip."""
    from lipsync.io.video import FrameReader, probe_video

    with FrameReader(probe_video(media(name))) as reader:
        frames = list(reader.frames(0, count * step))[::step]
    height, width = frames[0].shape[:2]
    side = min(height, width) // 2
    top, left = (height - side) // 2, (width - side) // 2
    return np.stack([frame[top : top + side, left : left + side] for frame in frames])


PREPARED_CLIP_SECONDS = 2.6  # talk_b and talk_c (5 s each) give two clips of 62-63 frames each


@pytest.fixture(scope="session")
def prepared_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training dataset (`lipsync data prepare`) of talk_b and talk_c, two speakers, two clips each."""
    from lipsync.train.data.format import DatasetSettings
    from lipsync.train.data.prepare import prepare_dataset

    src = tmp_path_factory.mktemp("prepared-src")
    for name in ("talk_b.mp4", "talk_c.mp4"):
        (src / name).symlink_to(media(name))
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    prepare_dataset(src, out, DatasetSettings(clip_seconds=PREPARED_CLIP_SECONDS), jobs=1, progress=False)
    return out


SYNCNET_SOURCES = ("talk_a_22fps.mp4", "talk_b.mp4", "talk_c.mp4", "talk_d_mpeg4.mp4")
SYNCNET_CLIP_SECONDS = 2.0
TINY_SYNCNET_CONFIG = REPO / "configs" / "train" / "syncnet-tiny.yaml"


@pytest.fixture(scope="session")
def syncnet_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four shared talking-head videos prepared as 2 s clips (four speakers, 14 clips)."""
    from lipsync.train.data.format import DatasetSettings
    from lipsync.train.data.prepare import prepare_dataset

    src = tmp_path_factory.mktemp("syncnet-src")
    for name in SYNCNET_SOURCES:
        (src / name).symlink_to(media(name))
    out = tmp_path_factory.mktemp("syncnet-media") / "dataset"
    prepare_dataset(src, out, DatasetSettings(clip_seconds=SYNCNET_CLIP_SECONDS), progress=False)
    return out


def tiny_syncnet_config(
    root: Path, out: Path, val_clips: tuple[str, ...], **changes: object
) -> SyncNetTrainConfig:
    """configs/train/syncnet-tiny.yaml on a test dataset, holding out exactly `val_clips`."""
    import dataclasses

    from lipsync.train.config import SyncNetTrainConfig, load_config

    config = load_config(TINY_SYNCNET_CONFIG, SyncNetTrainConfig)
    data = dataclasses.replace(config.data, root=root, val_clips=val_clips, val_fraction=0.0)
    return dataclasses.replace(config, output_dir=out, data=data, **changes)  # type: ignore[arg-type]


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16_000) -> Path:
    """Mono float samples as a 16-bit WAV file (a short speech track a test can own)."""
    import wave

    from lipsync.server.protocol import float_to_pcm

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(float_to_pcm(samples))
    return path


def still_photo(folder: Path) -> Path:
    """The first frame of talk_c.mp4 as a PNG: an avatar that prepares in a moment."""
    import cv2

    from lipsync.io.video import FrameReader, probe_video

    with FrameReader(probe_video(media("talk_c.mp4"))) as reader:
        frame = next(reader.frames(0, 1))
    path = folder / "still.png"
    cv2.imwrite(str(path), frame[..., ::-1])
    return path


def write_png(path: Path, width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> Path:
    """A PNG built byte by byte: its IHDR claims width x height; its pixel data is all zero (a real,
    complete image for 1-bit grey, whose rows compress to almost nothing; a few bytes otherwise)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if bit_depth == 1 and color_type == 0:
        compressor = zlib.compressobj(9)
        row = bytes(1 + (width + 7) // 8)  # filter byte, then the row's bits
        pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    else:
        pixels = zlib.compress(bytes(16))
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path
