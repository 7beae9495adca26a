"""The UNet training dataset: shapes, crops, audio windows equal to inference's, splits, determinism."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lipsync.config import FACE_SIZE, TRAINING_FPS, WHISPER_HIDDEN_SIZE
from lipsync.models.musetalk.audio_features import AudioFeatureStream, audio_window_start
from lipsync.train.config import DataConfig, MarginConfig, SamplingConfig, SamplingMethod, UNetTrainConfig
from lipsync.train.data.format import DatasetError, list_clips, read_clip
from lipsync.train.data.mel import mel_columns, mel_window
from lipsync.train.sampling import crop_face, face_transform, landmarks_in_face
from lipsync.train.unet_data import (
    UNetBatch,
    UNetTrainDataset,
    audio_windows,
    collate_unet,
    split_clips,
    stable_fraction,
    validation_batch,
)

from conftest import media

if TYPE_CHECKING:
    from lipsync.models.musetalk.loading import MuseTalkModels

SHARED_DATASET = "unet-data-talk_c"  # built once per session, shared with test_train_sampling.py
DONE = "DONE"
CLIP_FRAMES_2S = 40  # the 2 s clips of talk_c (5 s) are cut into three clips of 41-42 frames


def build_prepared(tmp_path_factory: pytest.TempPathFactory, models: MuseTalkModels) -> Path:
    """A dataset of talk_c.mp4 in 2 s clips with tiny-whisper features (built once per session)."""
    from lipsync.train.data.features import ensure_whisper_features
    from lipsync.train.data.format import DatasetSettings
    from lipsync.train.data.prepare import prepare_dataset

    base = tmp_path_factory.getbasetemp() / SHARED_DATASET
    out = base / "out"
    if not (base / DONE).exists():
        src = base / "src"
        src.mkdir(parents=True, exist_ok=True)
        link = src / "talk_c.mp4"
        if not link.exists():
            link.symlink_to(media("talk_c.mp4"))
        prepare_dataset(src, out, DatasetSettings(clip_seconds=2.0), jobs=1, progress=False)
        ensure_whisper_features(out, models, "tiny", progress=False)
        (base / DONE).touch()
    return out


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory: pytest.TempPathFactory, tiny_models: MuseTalkModels) -> Path:
    return build_prepared(tmp_path_factory, tiny_models)


@pytest.fixture(scope="session")
def clips(prepared_root: Path) -> list[Path]:
    found = list_clips(prepared_root)
    assert len(found) == 3
    return found


def make_config(
    frames: int = 1, window: int = 5, margin: bool = False, method: SamplingMethod = "sis"
) -> UNetTrainConfig:
    return UNetTrainConfig(
        clip_frames=frames,
        audio_window=window,
        margin=MarginConfig(enabled=margin),
        sampling=SamplingConfig(method=method),
        data=DataConfig(min_face_size=150),
    )


def reimplemented_windows(
    whisper: np.ndarray, frames: range | np.ndarray, window: int, valid: int
) -> np.ndarray:
    """The gathering rule, one whisper frame at a time: [start, start + 2T) with zeros outside [0, valid)."""
    out = np.zeros((len(frames), 10 * window, WHISPER_HIDDEN_SIZE), dtype=np.float32)
    for row, frame in enumerate(frames):
        start = audio_window_start(int(frame), Fraction(TRAINING_FPS), window)
        for j in range(2 * window):
            if 0 <= start + j < valid:
                out[row, 5 * j : 5 * j + 5] = whisper[start + j]
    return out


@pytest.mark.parametrize("window", [1, 5, 9])
@pytest.mark.parametrize("frames", [1, 16])
def test_batch_shapes_and_contents(clips: list[Path], window: int, frames: int) -> None:
    config = make_config(frames, window, margin=True)
    dataset = UNetTrainDataset(clips, config, length=4, seed=1, min_frames=CLIP_FRAMES_2S)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_unet)
    batch = next(iter(loader))
    assert isinstance(batch, UNetBatch)
    assert batch.target.shape == batch.reference.shape == (2, frames, 3, FACE_SIZE, FACE_SIZE)
    assert batch.target.dtype == batch.reference.dtype == torch.float32
    assert batch.audio.shape == (2, frames, 10 * window, WHISPER_HIDDEN_SIZE)
    assert batch.mel.shape == (2, 1, 80, mel_columns(frames))
    assert batch.mouth_landmarks.shape == (2, frames, 68, 2)
    assert batch.reference_frames.shape == (2, frames) and batch.start_frames.shape == (2,)
    assert len(batch.clip_ids) == 2
    for images in (batch.target, batch.reference):
        assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    for b in range(2):
        folder = next(c for c in clips if c.name == batch.clip_ids[b])
        clip = read_clip(folder)
        start = int(batch.start_frames[b])
        assert 0 <= start <= clip.frame_count - frames
        targets = np.arange(start, start + frames)
        refs = batch.reference_frames[b].numpy()
        assert np.all((refs >= 0) & (refs < clip.frame_count) & (np.abs(refs - targets) >= 5))
        np.testing.assert_array_equal(
            batch.mel[b, 0].numpy(), mel_window(np.asarray(clip.mel), start, frames)
        )
        assert clip.whisper is not None
        expected = reimplemented_windows(np.asarray(clip.whisper), targets, window, len(clip.whisper))
        np.testing.assert_array_equal(batch.audio[b].numpy(), expected)
        # The mouth is in the lower half of the crop, the chin near (above, with a margin) the bottom.
        points = batch.mouth_landmarks[b].numpy()
        assert np.all((points[:, 62, 1] > 128) & (points[:, 8, 1] < FACE_SIZE + 4))


def test_audio_tokens_equal_inference_gathering(clips: list[Path], tiny_models: MuseTalkModels) -> None:
    clip = read_clip(clips[0])
    assert clip.whisper is not None
    stream = AudioFeatureStream(tiny_models, np.asarray(clip.audio), Fraction(TRAINING_FPS))
    every_frame = np.arange(clip.frame_count)  # includes the first/last frames, whose windows hold zeros
    inference = stream.windows(every_frame.tolist()).float().numpy()
    ours = audio_windows(np.asarray(clip.whisper), every_frame, 5, stream.valid_frames)
    assert np.all(ours[0, :20] == 0) and np.all(ours[-1, -15:] == 0) and np.abs(ours[5]).sum() > 0
    np.testing.assert_allclose(ours, inference, rtol=1e-5, atol=1e-5)
    # The dataset gives the same tokens for its target frames.
    dataset = UNetTrainDataset(clips[:1], make_config(16), length=3, seed=2, min_frames=CLIP_FRAMES_2S)
    for index in range(3):
        sample = dataset[index]
        frames = list(range(sample.start_frame, sample.start_frame + 16))
        np.testing.assert_allclose(sample.audio.numpy(), inference[frames], rtol=1e-5, atol=1e-5)
    for window in (1, 3, 7, 9):  # other T: the same rule, checked frame by frame
        expected = reimplemented_windows(np.asarray(clip.whisper), every_frame, window, stream.valid_frames)
        np.testing.assert_array_equal(audio_windows(np.asarray(clip.whisper), every_frame, window), expected)


def test_crops_and_landmarks_follow_the_margin(clips: list[Path]) -> None:
    plain = UNetTrainDataset(clips, make_config(4), length=3, seed=3, min_frames=CLIP_FRAMES_2S)
    for index in range(3):
        sample = plain[index]
        clip = read_clip(next(c for c in clips if c.name == sample.clip_id))
        targets = np.arange(sample.start_frame, sample.start_frame + 4)
        boxes = np.asarray(clip.face_boxes)
        expected = np.stack([crop_face(clip.frames[t], boxes[t]) for t in targets])
        pixels = ((sample.target.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()
        np.testing.assert_array_equal(pixels, expected)
        refs = sample.reference_frames.numpy()
        ref_pixels = ((sample.reference.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()
        np.testing.assert_array_equal(
            ref_pixels, np.stack([crop_face(clip.frames[r], boxes[r]) for r in refs])
        )
        lm256 = landmarks_in_face(np.asarray(clip.landmarks), boxes)[targets]
        np.testing.assert_allclose(sample.mouth_landmarks.numpy(), lm256, atol=1e-4)
    # With the margin, the landmarks move with the crop: one margin for every target of a sample.
    margined = UNetTrainDataset(
        clips, make_config(4, margin=True), length=20, seed=3, min_frames=CLIP_FRAMES_2S
    )
    lifts = []
    for index in range(20):
        sample = margined[index]
        clip = read_clip(next(c for c in clips if c.name == sample.clip_id))
        targets = np.arange(sample.start_frame, sample.start_frame + 4)
        boxes = np.asarray(clip.face_boxes)
        plain_points = landmarks_in_face(np.asarray(clip.landmarks), boxes)[targets]
        ratio = sample.mouth_landmarks.numpy()[..., 1] / np.maximum(plain_points[..., 1], 1e-3)
        margin = FACE_SIZE / float(np.median(ratio)) - FACE_SIZE
        assert 0 <= margin <= 20.0 + 1e-3
        for row, t in enumerate(targets):
            points = face_transform(boxes[t], margin).points(clip.landmarks[t])
            np.testing.assert_allclose(sample.mouth_landmarks[row].numpy(), points, atol=1e-2)
        lifts.append(margin)
    assert np.std(lifts) > 1.0  # margins differ between samples


def test_determinism_by_seed_and_across_workers(clips: list[Path]) -> None:
    config = make_config(2, margin=True)
    first = UNetTrainDataset(clips, config, length=6, seed=5, min_frames=CLIP_FRAMES_2S)
    second = UNetTrainDataset(clips, config, length=6, seed=5, min_frames=CLIP_FRAMES_2S)
    other = UNetTrainDataset(clips, config, length=6, seed=6, min_frames=CLIP_FRAMES_2S)
    for index in (4, 0, 4):  # order does not matter
        a, b = first[index], second[index]
        assert (a.clip_id, a.start_frame) == (b.clip_id, b.start_frame)
        assert torch.equal(a.target, b.target) and torch.equal(a.reference, b.reference)
        assert torch.equal(a.reference_frames, b.reference_frames)
    assert any(
        (first[i].start_frame, first[i].clip_id, first[i].reference_frames.tolist())
        != (other[i].start_frame, other[i].clip_id, other[i].reference_frames.tolist())
        for i in range(6)
    )
    direct = collate_unet([first[i] for i in range(6)])
    loaded = list(DataLoader(first, batch_size=3, num_workers=2, collate_fn=collate_unet))
    assert torch.equal(torch.cat([b.target for b in loaded]), direct.target)
    assert torch.equal(torch.cat([b.reference_frames for b in loaded]), direct.reference_frames)
    assert validation_batch(clips, config, 3, seed=9, min_frames=CLIP_FRAMES_2S).clip_ids == (
        validation_batch(clips, config, 3, seed=9, min_frames=CLIP_FRAMES_2S).clip_ids
    )


def test_every_clip_is_drawn(clips: list[Path]) -> None:
    dataset = UNetTrainDataset(clips, make_config(1), length=60, seed=0)
    assert dataset.min_frames == 10  # the reference's 10 x clip_frames
    drawn = {dataset[i].clip_id for i in range(60)}
    assert drawn == {c.name for c in clips}


def test_ineligible_clips_are_skipped_with_a_count(
    clips: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_whisper = tmp_path / "no-whisper"
    shutil.copytree(clips[0], no_whisper)
    (no_whisper / "whisper.npy").unlink()
    with caplog.at_level(logging.INFO, logger="lipsync.train.unet_data"):
        dataset = UNetTrainDataset([*clips, no_whisper], make_config(1), length=5, seed=0)
    assert len(dataset.folders) == 3
    assert "3 of 4 clips used; skipped 1 no whisper.npy" in caplog.text
    big_faces = replace(make_config(1), data=DataConfig(min_face_size=231))
    sizes = [json.loads((c / "clip.json").read_text())["face_size"] for c in clips]
    dataset = UNetTrainDataset(clips, big_faces, length=5, seed=0)
    assert len(dataset.folders) == sum(s >= 231 for s in sizes) >= 1
    with pytest.raises(DatasetError, match="shorter than 160 frames"):  # the reference's 10 x 16 frames
        UNetTrainDataset(clips, make_config(16), length=5, seed=0)


def test_split_clips(prepared_root: Path, clips: list[Path]) -> None:
    train, val = split_clips(prepared_root, DataConfig())
    assert (train, val) == (clips, [])
    train, val = split_clips(prepared_root, DataConfig(val_clips=(clips[1].name,)))
    assert val == [clips[1]] and train == [clips[0], clips[2]]
    assert split_clips(prepared_root, DataConfig(val_speakers=("talk_c",))) == ([], clips)
    assert split_clips(prepared_root, DataConfig(val_fraction=1.0)) == ([], clips)
    fractions = [stable_fraction(c.name) for c in clips]
    assert all(0 <= f < 1 for f in fractions) and len(set(fractions)) == 3
    assert stable_fraction("abc") == stable_fraction("abc") == pytest.approx(0.72839, abs=1e-5)
    cut = sorted(fractions)[1]
    train, val = split_clips(prepared_root, DataConfig(val_fraction=cut + 1e-9))
    assert len(val) == 2 and {stable_fraction(c.name) for c in train} == {max(fractions)}
