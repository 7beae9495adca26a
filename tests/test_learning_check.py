"""`lipsync learning-check`: a tiny recipe (the -tiny trainer configs, 2 steps each) on two short clips of
the shared media, through split, prepare, train and scoring; a rerun skips the stages; bad configs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import yaml

from lipsync.cli.main import main
from lipsync.io.video import FrameReader, probe_video
from lipsync.io.writer import VideoWriter
from lipsync.train.learning_check import run_learning_check
from lipsync.train.learning_check.controls import CopiedMouthGenerator, shuffled_audio
from lipsync.train.learning_check.recipes import STABILIZED_SYNC
from lipsync.train.learning_check.split import cut_frame
from lipsync.train.learning_check.stages import dependents

from conftest import REPO, media

pytestmark = pytest.mark.filterwarnings(
    "ignore::lipsync.train.losses.perceptual.UntrainedPerceptualWarning", "ignore::UserWarning"
)
TRAIN_CONFIGS = REPO / "configs" / "train"
CLIP_FRAMES = 50  # 40 head frames (two 0.8 s training clips) + 10 tail frames
SOURCES = ("talk_b.mp4", "talk_c.mp4")
STEPS = 2
ROWS = ("trained", "shuffled audio", "copied mouth", "real")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip_with_audio(source: Path, out: Path, frames: int) -> Path:
    """The first `frames` frames of `source`, with its audio track muxed in."""
    info = probe_video(source)
    with (
        FrameReader(info) as reader,
        VideoWriter(out, info.fps, info.width, info.height, audio_path=source) as writer,
    ):
        for frame in reader.frames(0, frames):
            writer.write(frame)
    return out


def tiny_stage_config(folder: Path, name: str, base: str, **changes: Any) -> Path:
    data = yaml.safe_load((TRAIN_CONFIGS / f"{base}.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_check_config(folder: Path, clips: list[Path], **changes: Any) -> Path:
    stages = {
        "avsyncnet": tiny_stage_config(folder, "avsyncnet", "avsyncnet-tiny"),
        "silent": tiny_stage_config(folder, "silent", "stabilized-silent-tiny"),
        "talking": tiny_stage_config(folder, "talking", "stabilized-talking-tiny"),
        # 5-frame windows: the 10-frame tails hold six of them
        "judge": tiny_stage_config(
            folder, "judge", "syncnet-tiny", frames=5, negative_min_offset=5, batch_size=4, eval_pairs=16
        ),
    }
    data: dict[str, Any] = {
        "family": "stabilized-sync",
        "clips": [str(p) for p in clips],
        "head_fraction": 0.8,
        "validation_clips": 1,
        "prepare": {"clip_seconds": 0.8, "min_clip_seconds": 0.5, "jobs": 1},
        "stages": [
            {"name": name, "config": str(path), "max_seconds": 60, "max_steps": STEPS}
            for name, path in stages.items()
        ],
        "evaluation": {"batch_size": 4, "device": "cpu"},
    }
    data.update(changes)
    path = folder / "check.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("learning-check")
    clips = [clip_with_audio(media(name), folder / name, CLIP_FRAMES) for name in SOURCES]
    config = write_check_config(folder, clips)
    out = folder / "run"
    first = run_learning_check(config, out, progress=False, say=lambda _: None)
    stage_files = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*") if p.is_file()}
    second = run_learning_check(config, out, progress=False, say=lambda _: None, score=False)
    return {"clips": clips, "out": out, "first": first, "second": second, "stage_files": stage_files}


def test_split_is_frame_exact_with_audio(check: dict[str, Any]) -> None:
    split = json.loads((check["out"] / "split" / "split.json").read_text())["clips"]
    assert [entry["name"] for entry in split] == ["talk_b", "talk_c"]
    for entry, source in zip(split, check["clips"], strict=True):
        total = probe_video(source).frame_count
        cut = cut_frame(total, 0.8)
        assert cut == round(0.8 * CLIP_FRAMES) == 40
        assert (entry["frames"], entry["cut"]) == (total, cut)
        head, tail = probe_video(Path(entry["head"])), probe_video(Path(entry["tail"]))
        assert head.frame_count + tail.frame_count == total
        assert (head.frame_count, tail.frame_count) == (cut, total - cut)
        with FrameReader(tail) as reader:
            first_tail = reader.frame(0).astype(np.float64)
        with FrameReader(probe_video(source)) as reader:
            around = [reader.frame(i).astype(np.float64) for i in (cut - 1, cut, cut + 1)]
        differences = [float(np.abs(first_tail - frame).mean()) for frame in around]
        assert int(np.argmin(differences)) == 1 and differences[1] < 2.0, differences
        for part in (head, tail):
            with av.open(str(part.path)) as container:
                assert container.streams.audio, f"{part.path} has no audio"


def test_report_has_four_rows_with_finite_trained_metrics(check: dict[str, Any]) -> None:
    out = check["out"]
    data = json.loads((out / "report.json").read_text())
    assert list(data["mean"]) == list(ROWS)
    assert set(data["per_clip"]) == {"talk_b", "talk_c"}
    for key in ("lmd", "judge_confidence", "psnr", "ssim"):
        value = data["mean"]["trained"][key]["value"]
        assert isinstance(value, float) and np.isfinite(value), (key, value)
        for clip in data["per_clip"].values():
            assert np.isfinite(clip["trained"][key]["value"])
    assert data["mean"]["real"]["lmd"]["value"] == 0.0
    assert data["mean"]["real"]["lip_sync_r"]["value"] == pytest.approx(1.0)  # the meter against itself
    assert "lip_sync_r" in data["mean"]["trained"]
    names = ["split", "prepare", "avsyncnet", "silent", "talking", "judge", "scoring"]
    assert [stage["name"] for stage in data["stages"]] == names
    assert all(stage["summary"]["steps"] == STEPS for stage in data["stages"][2:6])
    assert all(stage["seconds"] > 0 for stage in data["stages"])
    markdown = (out / "report.md").read_text()
    assert all(f"| {row} |" in markdown for row in ROWS)
    assert "| avsyncnet |" in markdown
    for row in ("trained", "shuffled-audio", "copied-mouth"):
        assert probe_video(out / "eval" / "talk_b" / f"{row}.mp4").frame_count == CLIP_FRAMES - 40


def test_a_rerun_skips_every_stage(check: dict[str, Any]) -> None:
    first, second = check["first"].stages, check["second"].stages
    assert [r.name for r in second] == ["split", "prepare", "avsyncnet", "silent", "talking", "judge"]
    assert [r.status for r in second] == ["skipped (done earlier)", "up to date"] + [
        "skipped (done earlier)"
    ] * 4
    assert [r.seconds for r in second[2:]] == [r.seconds for r in first[2:6]]
    files = check["stage_files"]
    assert files and all(path.stat().st_mtime_ns == mtime for path, mtime in files.items())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"head_fraction": 1.5}, "head_fraction"),
        ({"family": "nope"}, "family"),
        ({"evaluation": {"batch_size": 0}}, r"evaluation\.batch_size"),
        ({"prepare": {"clip_seconds": "long"}}, r"prepare\.clip_seconds"),
        ({"stages": [{"name": "avsyncnet", "config": "x.yaml"}]}, r"stages\[0\]\.config"),
        ({"stages": []}, "stages lacks"),
    ],
)
def test_a_bad_config_names_its_field(
    change: dict[str, Any], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = media("talk_c.mp4")
    config = write_check_config(tmp_path, [clip], **change)
    assert main(["learning-check", str(config), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert re.search(field, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_stage_time_box_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_check_config(tmp_path, [media("talk_c.mp4")])
    data = yaml.safe_load(config.read_text())
    data["stages"][0].pop("max_seconds")
    config.write_text(yaml.safe_dump(data))
    assert main(["learning-check", str(config), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert "time box" in capsys.readouterr().err


def test_forcing_a_stage_redoes_the_stages_that_use_it() -> None:
    assert dependents(STABILIZED_SYNC.stages, ["avsyncnet"]) == ["avsyncnet", "silent", "talking"]
    assert dependents(STABILIZED_SYNC.stages, ["silent"]) == ["silent", "talking"]
    assert dependents(STABILIZED_SYNC.stages, ["judge"]) == ["judge"]


def test_controls() -> None:
    samples = np.arange(10_000, dtype=np.float32)
    shuffled = shuffled_audio(samples, 1000, seed=41)
    assert len(shuffled) == len(samples) and sorted(shuffled.tolist()) == samples.tolist()
    assert not np.array_equal(shuffled, samples)
    assert np.array_equal(shuffled, shuffled_audio(samples, 1000, seed=41))

    class Family:
        face_size = 96

    copier = CopiedMouthGenerator(Family(), seed=1, min_distance=5)  # type: ignore[arg-type]
    sources = np.arange(12)
    for frame in range(12):
        donor = copier.donor(frame, sources)
        assert abs(int(sources[donor]) - frame) >= 5
        assert donor == copier.donor(frame, sources)  # fixed per frame
