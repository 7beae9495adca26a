"""`lipsync learning-check` with the landmark-prior recipe: the tiny transformer and renderer configs (2 steps
each) on two short clips of the shared media, through split, prepare, train and scoring; the landmark table
against a mean mouth of the heads; the real- and predicted-landmark rows; a rerun skips the stages."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from lipsync.io.audio import load_audio
from lipsync.io.video import FrameReader, probe_video
from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS
from lipsync.models.landmark_prior.mel_windows import SequenceMelWindows
from lipsync.train.data.format import list_clips
from lipsync.train.landmark_inspect import predict_content, video_inspection
from lipsync.train.landmark_prior_clips import read_family_clip
from lipsync.train.learning_check import run_learning_check
from lipsync.train.learning_check.controls import shuffled_audio
from lipsync.train.learning_check.landmarks import mean_content
from lipsync.train.learning_check.recipes import LANDMARK_PRIOR
from lipsync.train.learning_check.stages import dependents

from conftest import REPO, media

pytestmark = pytest.mark.filterwarnings(
    "ignore::lipsync.train.losses.perceptual.UntrainedPerceptualWarning", "ignore::UserWarning"
)
TRAIN_CONFIGS = REPO / "configs" / "train"
CLIP_FRAMES = 75  # 60 head frames (two 1.2 s training clips: the transformer needs 25 frames) + 15 tail
TAIL_FRAMES = 15
SOURCES = ("talk_b.mp4", "talk_c.mp4")
STEPS = 2
DUB_ROWS = ("predicted landmarks", "real landmarks", "shuffled audio", "copied mouth", "real")
LANDMARK_TABLE = "Held-out tails: lower-jaw and lip landmarks"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip_with_audio(source: Path, out: Path, frames: int) -> Path:
    from lipsync.io.writer import VideoWriter

    info = probe_video(source)
    with (
        FrameReader(info) as reader,
        VideoWriter(out, info.fps, info.width, info.height, audio_path=source) as writer,
    ):
        for frame in reader.frames(0, frames):
            writer.write(frame)
    return out


def stage_config(folder: Path, base: str, **changes: Any) -> Path:
    data = yaml.safe_load((TRAIN_CONFIGS / f"{base}.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    path = folder / f"{base}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("learning-check-landmark-prior")
    clips = [clip_with_audio(media(name), folder / name, CLIP_FRAMES) for name in SOURCES]
    stages = {
        "landmarks": stage_config(folder, "landmarks-tiny", validate_every=STEPS, validation_samples=4),
        "renderer": stage_config(folder, "renderer-tiny", validate_every=STEPS, validation_samples=2),
    }
    data = {
        "family": "landmark-prior",
        "clips": [str(p) for p in clips],
        "head_fraction": 0.8,
        "validation_clips": 1,
        "prepare": {"clip_seconds": 1.2, "min_clip_seconds": 1.0, "jobs": 1},
        "stages": [
            {"name": name, "config": str(path), "max_seconds": 60, "max_steps": STEPS}
            for name, path in stages.items()
        ],
        "evaluation": {"batch_size": 4, "device": "cpu"},
    }
    config = folder / "check.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = folder / "run"
    first = run_learning_check(config, out, progress=False, say=lambda _: None)
    stage_files = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*") if p.is_file()}
    second = run_learning_check(config, out, progress=False, say=lambda _: None, score=False)
    return {"out": out, "first": first, "second": second, "stage_files": stage_files}


def test_report_has_the_dubbed_rows_with_finite_values(check: dict[str, Any]) -> None:
    out = check["out"]
    data = json.loads((out / "report.json").read_text())
    assert data["family"] == "landmark-prior"
    assert list(data["mean"]) == list(DUB_ROWS)
    assert set(data["per_clip"]) == {"talk_b", "talk_c"}
    for row in ("predicted landmarks", "real landmarks", "copied mouth"):
        for key in ("lmd", "psnr", "ssim"):
            value = data["mean"][row][key]["value"]
            assert isinstance(value, float) and np.isfinite(value), (row, key, value)
    assert data["mean"]["real"]["lmd"]["value"] == 0.0
    assert data["mean"]["real"]["lip_sync_r"]["value"] == pytest.approx(1.0)  # the meter against itself
    assert data["mean"]["predicted landmarks"]["judge_confidence"]["value"] is None  # no judge
    assert [s["name"] for s in data["stages"]] == ["split", "prepare", "landmarks", "renderer", "scoring"]
    assert all(stage["summary"]["steps"] == STEPS for stage in data["stages"][2:4])
    markdown = (out / "report.md").read_text()
    assert all(f"| {row} |" in markdown for row in DUB_ROWS)
    assert "judge sync" not in markdown and "LMD" in markdown
    videos = out / "eval" / "talk_b"
    frames = {}
    for row in ("predicted-landmarks", "real-landmarks"):
        info = probe_video(videos / f"{row}.mp4")
        assert info.frame_count == TAIL_FRAMES
        with FrameReader(info) as reader:
            frames[row] = np.stack(list(reader.frames()))
    assert not np.array_equal(frames["predicted-landmarks"], frames["real-landmarks"])


def test_landmark_table_against_the_heads_mean_mouth(check: dict[str, Any]) -> None:
    out = check["out"]
    table = json.loads((out / "report.json").read_text())["tables"][LANDMARK_TABLE]
    assert list(table["mean"]) == ["trained transformer", "shuffled audio", "mean mouth"]
    for clip in table["per_clip"].values():
        for row in clip.values():
            assert np.isfinite(row["l1"]["value"]) and row["l1"]["samples"] == TAIL_FRAMES
            assert row["l1_px"]["value"] == pytest.approx(128 * row["l1"]["value"])
    assert f"## {LANDMARK_TABLE}" in (out / "report.md").read_text()

    # the baseline: every frame of the prepared heads, nothing of the tails
    saved = json.loads((out / "eval" / "mean-mouth.json").read_text())
    folders = list_clips(out / "dataset")
    assert sorted(saved["head_clips"]) == sorted(f.name for f in folders)
    assert sum(saved["head_clips"].values()) <= len(SOURCES) * (CLIP_FRAMES - TAIL_FRAMES)
    heads = np.concatenate([read_family_clip(f).landmarks[..., CONTENT_POINTS] for f in folders])
    mean = np.asarray(saved["content_landmarks"])
    assert mean.shape == (2, len(CONTENT_POINTS))
    np.testing.assert_allclose(mean, np.nanmean(heads.astype(np.float64), axis=0), atol=1e-9)

    # its error on a tail, by hand
    weights = out / "stages" / "renderer" / "export"
    generator = LandmarkPriorGenerator.from_pretrained(weights, torch.device("cpu"), torch.float32)
    tail = video_inspection(out / "split" / "tails" / "talk_c.mp4", generator, TAIL_FRAMES)
    real = tail.landmarks[tail.has_face][..., CONTENT_POINTS]
    expected = float(np.abs(real - mean).mean())
    assert table["per_clip"]["talk_c"]["mean mouth"]["l1"]["value"] == pytest.approx(expected, rel=1e-6)

    # the shuffled row: the same transformer on the dubs' shuffled audio (0.2 s pieces, seed 41)
    samples = shuffled_audio(load_audio(out / "split" / "tails" / "talk_c.mp4").samples, 3200, 41)
    shuffled = dataclasses.replace(tail, mels=SequenceMelWindows.offline(samples, tail.mels.fps))
    faces = [int(f) for f in np.flatnonzero(tail.has_face)]
    transformer, references = generator.models.transformer, generator.config.landmark_references
    predicted = predict_content(transformer, shuffled, faces, references)
    expected = float(np.abs(real - predicted).mean())
    row = table["per_clip"]["talk_c"]
    assert row["shuffled audio"]["l1"]["value"] == pytest.approx(expected, rel=1e-5)
    assert row["shuffled audio"]["l1"]["value"] != row["trained transformer"]["l1"]["value"]


def test_mean_content_weighs_every_head_frame_alike() -> None:
    def clip(*values: float) -> np.ndarray:
        points = np.full((len(values), 2, 68), 7.0, np.float32)  # pose points: not averaged
        points[..., CONTENT_POINTS] = np.asarray(values, np.float32)[:, None, None]
        return points

    second = clip(0.9, 0.0)
    second[1] = np.nan  # no face
    mean = mean_content([clip(0.2, 0.4), second])
    np.testing.assert_allclose(mean, np.full((2, len(CONTENT_POINTS)), 0.5), rtol=1e-6)  # (0.2+0.4+0.9)/3
    with pytest.raises(ValueError, match="no frame"):
        mean_content([second[1:]])


def test_a_rerun_skips_every_stage(check: dict[str, Any]) -> None:
    second = check["second"].stages
    assert [r.name for r in second] == ["split", "prepare", "landmarks", "renderer"]
    assert [r.status for r in second] == ["skipped (done earlier)", "up to date"] + [
        "skipped (done earlier)"
    ] * 2
    files = check["stage_files"]
    assert files and all(path.stat().st_mtime_ns == mtime for path, mtime in files.items())


def test_forcing_the_transformer_redoes_the_renderer() -> None:
    assert dependents(LANDMARK_PRIOR.stages, ["landmarks"]) == ["landmarks", "renderer"]
    assert dependents(LANDMARK_PRIOR.stages, ["renderer"]) == ["renderer"]


def test_the_shipped_config_loads() -> None:
    from lipsync.train.learning_check.config import load_learning_check_config
    from lipsync.train.learning_check.recipes import check_stage_entries, recipe_for

    path = REPO / "configs" / "learning-check" / "landmark-prior.yaml"
    config = load_learning_check_config(path)
    entries = check_stage_entries(recipe_for(config.family), config.stages, str(path))
    assert sum(entry.max_seconds or 0 for entry in entries.values()) <= 3600
