"""SyncNet training: pairs from a prepared dataset of the shared media, and the trainer end to end."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lipsync.models.syncnet import SyncNetSpec, load_syncnet, lower_half
from lipsync.train.config import ConfigError, DataConfig, SyncNetTrainConfig, load_config
from lipsync.train.data.format import list_clips, read_clip
from lipsync.train.sampling import crops_to_images
from lipsync.train.stabilized_avsync import AVSyncSpec, avsync_faces
from lipsync.train.stabilized_data import family_crops
from lipsync.train.syncnet_data import (
    PairIndex,
    PairShape,
    SyncPairSource,
    SyncPairStream,
    cut_clip_faces,
    eval_pairs,
    split_sync_clips,
)
from lipsync.train.syncnet_trainer import BEST_CHECKPOINT, LAST_CHECKPOINT, STATE_DIR, train_syncnet
from lipsync.train.unet_data import read_meta

from conftest import REPO, SYNCNET_SOURCES, tiny_syncnet_config

HELD_OUT_CLIP = 1  # per speaker, the second clip (by start) is held out: every speaker is seen, that clip not
# Chance is 0.5 on balanced pairs; with 256 pairs its standard deviation is 0.031. Eight seeds of the tiny
# config scored 0.648-0.719 accuracy (mean 0.68) and AUC 0.78-0.89 (mean 0.84) on these held-out clips.
MIN_HELD_OUT_ACCURACY = 0.6
MIN_HELD_OUT_AUC = 0.72
SPEC = SyncNetSpec("wav2lip", frames=16, image_size=32, width_divisor=8)


@pytest.fixture(scope="session")
def held_out(syncnet_media: Path) -> tuple[str, ...]:
    by_speaker: dict[str, list[str]] = {}
    for folder in list_clips(syncnet_media):
        meta = read_meta(folder)
        by_speaker.setdefault(meta.speaker, []).append(meta.clip_id)
    assert len(by_speaker) == len(SYNCNET_SOURCES)
    return tuple(sorted(clips)[HELD_OUT_CLIP] for clips in by_speaker.values())


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Training results are compared with fixed numbers: keep the float summation order fixed too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_split_holds_out_clips(syncnet_media: Path, held_out: tuple[str, ...]) -> None:
    split = split_sync_clips(DataConfig(root=syncnet_media, val_clips=held_out, min_face_size=0))
    assert sorted(p.name for p in split.val) == sorted(held_out)
    assert not {p.name for p in split.train} & set(held_out)
    assert len(split.train) + len(split.val) == len(list_clips(syncnet_media))
    speakers = DataConfig(root=syncnet_media, val_speakers=("talk_c",), min_face_size=0)
    assert {read_meta(p).speaker for p in split_sync_clips(speakers).val} == {"talk_c"}
    with pytest.raises(ConfigError, match="no-such-clip"):
        split_sync_clips(DataConfig(root=syncnet_media, val_clips=("no-such-clip",)))


def test_single_identity_batches_hold_one_speaker(syncnet_media: Path) -> None:
    source = SyncPairSource(list_clips(syncnet_media), SPEC, negative_min_offset=5)
    batches = iter(SyncPairStream(source, batch_size=16, single_identity=True, seed=0))
    seen = set()
    for _ in range(12):
        batch = next(batches)
        assert batch.speaker is not None and set(batch.speakers) == {batch.speaker}
        seen.add(batch.speaker)
        assert tuple(batch.faces.shape) == (16, *SPEC.face_shape)
        assert tuple(batch.mels.shape) == (16, *SPEC.mel_shape)
        assert batch.labels.sum() == 8  # balanced
        offsets = (batch.face_starts - batch.audio_starts).abs()
        assert (offsets[batch.labels == 1] == 0).all()
        assert (offsets[batch.labels == 0] >= 5).all()
        assert float(batch.faces.min()) >= -1.0 and float(batch.faces.max()) <= 1.0
    assert len(seen) > 1  # every speaker gets batches

    mixed = iter(SyncPairStream(source, batch_size=16, single_identity=False, seed=0))
    assert any(next(mixed).speaker is None for _ in range(5))


def test_pairs_match_the_clip_arrays(syncnet_media: Path) -> None:
    """A positive pair's faces are its clip's face crops at the start frame, its mel the same window."""
    from lipsync.train.data.format import read_clip
    from lipsync.train.data.mel import mel_window
    from lipsync.train.sampling import crop_face

    source = SyncPairSource(list_clips(syncnet_media)[:1], SPEC, negative_min_offset=5)
    pair = next(p for p in eval_pairs(source, 8) if p.label == 1.0)
    faces, mel = source.pair(pair)
    clip = read_clip(source.clips[0].folder, with_whisper=False)
    crop = crop_face(clip.frames[pair.face_start], clip.face_boxes[pair.face_start])
    first = torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1
    resized = torch.nn.functional.interpolate(
        first[None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True
    )
    assert torch.allclose(faces[:3], resized[0, :, 16:], atol=1e-5)
    assert np.array_equal(mel[0].numpy(), mel_window(np.asarray(clip.mel), pair.audio_start, 16))


@pytest.mark.slow  # a learning check (hundreds of training steps): `make test-slow`
def test_tiny_syncnet_separates_held_out_pairs(
    syncnet_media: Path, held_out: tuple[str, ...], tmp_path: Path, one_thread: None
) -> None:
    """Acceptance check: a SyncNet trained for seconds to minutes on a CPU tells in-sync from
    shifted pairs on clips it did not train on, well above chance."""
    config = tiny_syncnet_config(syncnet_media, tmp_path / "run", held_out)
    result = train_syncnet(config, progress=False)

    assert result.steps == config.max_steps and result.start_step == 0
    assert (result.train_clips, result.val_clips) == (10, 4)
    assert result.val_accuracy is not None and result.val_auc is not None
    assert result.val_accuracy >= MIN_HELD_OUT_ACCURACY, result
    assert result.val_auc >= MIN_HELD_OUT_AUC, result
    assert result.samples_per_second > 0

    out = config.output_dir
    assert result.checkpoint == out / LAST_CHECKPOINT and result.best_checkpoint == out / BEST_CHECKPOINT
    model, spec = load_syncnet(result.checkpoint)
    assert spec == SPEC and not model.training
    assert load_syncnet(out / BEST_CHECKPOINT)[1] == SPEC
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / STATE_DIR / "model.safetensors").is_file()
    assert (out / "result.json").is_file()


def test_rerun_resumes_from_its_step(syncnet_media: Path, held_out: tuple[str, ...], tmp_path: Path) -> None:
    out = tmp_path / "run"
    short = tiny_syncnet_config(syncnet_media, out, held_out, max_steps=12, eval_every=6, checkpoint_every=6)
    first = train_syncnet(short, progress=False)
    assert (first.steps, first.start_step) == (12, 0)
    weights = load_syncnet(first.checkpoint)[0].state_dict()

    second = train_syncnet(dataclasses.replace(short, max_steps=20), progress=False)
    assert (second.steps, second.start_step) == (20, 12)
    moved = load_syncnet(second.checkpoint)[0].state_dict()
    assert any(not torch.equal(weights[k], moved[k]) for k in weights)

    again = train_syncnet(dataclasses.replace(short, max_steps=20), progress=False)
    assert (again.steps, again.start_step) == (20, 20)  # nothing left to do: evaluates and returns


def test_max_seconds_stops_a_run(syncnet_media: Path, held_out: tuple[str, ...], tmp_path: Path) -> None:
    config = tiny_syncnet_config(
        syncnet_media, tmp_path / "run", held_out, max_steps=100_000, max_seconds=1.0
    )
    result = train_syncnet(config, progress=False)
    assert 0 < result.steps < 100_000
    assert result.checkpoint.is_file()


def test_init_must_match_the_config(syncnet_media: Path, held_out: tuple[str, ...], tmp_path: Path) -> None:
    first = train_syncnet(
        tiny_syncnet_config(syncnet_media, tmp_path / "a", held_out, max_steps=2), progress=False
    )
    other = tiny_syncnet_config(syncnet_media, tmp_path / "b", held_out, init=first.checkpoint, image_size=48)
    with pytest.raises(ConfigError, match="init checkpoint"):
        train_syncnet(other, progress=False)
    same = tiny_syncnet_config(syncnet_media, tmp_path / "c", held_out, init=first.checkpoint, max_steps=2)
    assert train_syncnet(same, progress=False).steps == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["syncnet.yaml", "syncnet-stable.yaml"])
def test_full_size_configs_train(
    name: str, syncnet_media: Path, held_out: tuple[str, ...], tmp_path: Path
) -> None:
    """The shipped full-size configs build, start (stable: from a full-size LatentSync-layout file, as
    latentsync_syncnet.pt) and take optimiser steps; batch size and step count cut down for a CPU."""
    from lipsync.models.syncnet import StableSyncNet

    config = load_config(REPO / "configs" / "train" / name, SyncNetTrainConfig)
    init = None
    if config.kind == "stable":
        init = tmp_path / "latentsync_syncnet.pt"
        torch.save({"state_dict": StableSyncNet().state_dict(), "global_step": 0}, init)
    data = dataclasses.replace(config.data, root=syncnet_media, val_clips=held_out, val_fraction=0.0)
    data = dataclasses.replace(data, num_workers=0)
    short = dataclasses.replace(
        config, output_dir=tmp_path / "run", data=data, init=init, batch_size=2, max_steps=2, eval_pairs=4
    )
    try:
        result = train_syncnet(short, progress=False)
        assert result.steps == 2 and result.val_accuracy is not None
        assert load_syncnet(result.checkpoint)[1].kind == config.kind
    finally:  # stable: 1.5 GB per weights file, 6 GB with the optimiser state; pytest keeps tmp folders
        shutil.rmtree(tmp_path, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class PairSize:
    frames: int
    image_size: int


def old_float_faces(source: SyncPairSource, pair: PairIndex, image_size: int, avsync: bool) -> torch.Tensor:
    """(3F, S/2, S) as the pair source made them before it cached uint8 crops: the whole clip's crops turned
    into float lower halves, then the pair's window taken."""
    clip = read_clip(source.clips[pair.clip].folder, with_whisper=False)
    crops = family_crops(clip, AVSyncSpec().face_size) if avsync else cut_clip_faces(clip)
    halves = lower_half(crops_to_images(crops), image_size)
    return halves[pair.face_start : pair.face_start + source.spec.frames].flatten(0, 1)


@pytest.mark.parametrize(
    ("spec", "avsync", "cached_uint8"),
    [
        (AVSyncSpec(tiny=True), True, True),  # 96 px crops: 27 KB a frame against 301 KB of float input
        (PairSize(5, 192), False, True),  # 256 px crops: 196 KB against 221 KB
        (SPEC, False, False),  # 6 KB of float input against 196 KB of crops: the float input is kept
    ],
)
def test_batches_from_the_cache_equal_the_float_path_exactly(
    syncnet_media: Path, spec: PairShape, avsync: bool, cached_uint8: bool
) -> None:
    folders = list_clips(syncnet_media)[:3]
    faces = avsync_faces(AVSyncSpec()) if avsync else None
    source = SyncPairSource(folders, spec, negative_min_offset=5, faces=faces)
    pairs = eval_pairs(source, 12)
    batch = source.batch(pairs)

    expected = torch.stack([old_float_faces(source, p, spec.image_size, avsync) for p in pairs])
    assert batch.faces.dtype == torch.float32
    assert torch.equal(batch.faces, expected)
    assert torch.equal(source.pair(pairs[0])[0], expected[0])

    cached = [entry[0] for entry in source._cache.values()]
    assert len(cached) == len({p.clip for p in pairs})
    if cached_uint8:
        assert all(isinstance(f, np.ndarray) and f.dtype == np.uint8 for f in cached)
    else:
        assert all(isinstance(f, torch.Tensor) and f.dtype == torch.float32 for f in cached)
    assert source.cached_bytes == sum(
        (f.nbytes if isinstance(f, np.ndarray) else f.numel() * 4) + mel.nbytes
        for f, mel in source._cache.values()
    )


def test_the_face_cache_stays_within_its_bytes_counts_hits_and_starts_empty_in_a_worker(
    syncnet_media: Path,
) -> None:
    spec = AVSyncSpec(tiny=True)
    folders = list_clips(syncnet_media)
    whole = SyncPairSource(folders, spec, negative_min_offset=5, faces=avsync_faces(spec))
    for clip in range(len(whole)):
        whole._load(clip)
    one_clip = max(whole.cached_bytes // len(whole), 1)
    assert (whole.hits, whole.misses) == (0, len(whole))
    whole._load(0)
    assert whole.hits == 1 and whole.hit_rate == pytest.approx(1 / (len(whole) + 1))

    limit = 3 * one_clip
    small = SyncPairSource(folders, spec, negative_min_offset=5, cache_bytes=limit, faces=avsync_faces(spec))
    for clip in range(len(small)):
        small._load(clip)
        assert small.cached_bytes <= limit + one_clip  # clips differ a little in length
    assert 1 < len(small._cache) < len(small)

    worker = pickle.loads(pickle.dumps(whole))
    assert (len(worker._cache), worker.cached_bytes, worker.hits, worker.misses) == (0, 0, 0, 0)
    assert worker.hit_rate is None


def test_the_face_cache_size_is_a_config_field_the_trainer_uses(
    syncnet_media: Path, held_out: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipsync.train import syncnet_trainer

    assert SyncNetTrainConfig().face_cache_bytes == 1 << 30
    for name in ("avsyncnet.yaml", "syncnet.yaml", "syncnet-stable.yaml"):
        shipped = load_config(REPO / "configs" / "train" / name, SyncNetTrainConfig)
        assert shipped.face_cache_bytes == 1 << 30
    written = tmp_path / "cache.yaml"
    written.write_text("face_cache_bytes: 12345\n", encoding="utf-8")
    assert load_config(written, SyncNetTrainConfig).face_cache_bytes == 12345

    sizes: list[int] = []

    class Recording(SyncPairSource):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sizes.append(self.cache_bytes)

    monkeypatch.setattr(syncnet_trainer, "SyncPairSource", Recording)
    config = tiny_syncnet_config(syncnet_media, tmp_path / "run", held_out, max_steps=1)
    train_syncnet(dataclasses.replace(config, face_cache_bytes=12345), progress=False)
    assert sizes == [12345, 12345]  # the training and the held-out pairs' sources
    with pytest.raises(ConfigError, match="face_cache_bytes is 0"):
        train_syncnet(dataclasses.replace(config, face_cache_bytes=0), progress=False)
