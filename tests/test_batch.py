"""`lipsync dub-batch`: many tasks from one YAML or CSV file, resumable, one failure stops nothing, and the
tasks shared between processes under `accelerate launch`; every check on real media cut very short."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import av
import numpy as np
import pytest

from lipsync.cli.main import main
from lipsync.io.audio import load_audio
from lipsync.io.video import FrameReader, probe_video
from lipsync.models.generator import Generator
from lipsync.pipeline.batch import (
    BatchTask,
    ProcessShare,
    TaskFileError,
    default_report_path,
    gather_results,
    load_tasks,
    run_batch,
)
from lipsync.pipeline.dub import DubPipeline

from conftest import REPO, media, still_photo, write_clip, write_wav

FAST = ["--device", "cpu", "--dtype", "fp32", "-q"]
SAMPLE_RATE = 16_000
CLIP_FRAMES = 3
SHORT_SAMPLES, LONG_SAMPLES = 1_920, 3_200  # 0.12 s and 0.2 s of speech: 3 and 5 frames at 25 fps


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of tiny inputs: clips/c.mp4, clips/b.mp4 (3 frames each), speech/short.wav, speech/long.wav
    (cut from the middle of the shared speech) and still.png."""
    root = tmp_path_factory.mktemp("batch-inputs")
    (root / "clips").mkdir()
    (root / "speech").mkdir()
    write_clip(media("talk_c.mp4"), root / "clips" / "c.mp4", CLIP_FRAMES)
    write_clip(media("talk_b.mp4"), root / "clips" / "b.mp4", CLIP_FRAMES)
    speech = load_audio(media("speech_44k_stereo.wav"), SAMPLE_RATE).samples
    middle = len(speech) // 3
    write_wav(root / "speech" / "short.wav", speech[middle : middle + SHORT_SAMPLES])
    write_wav(root / "speech" / "long.wav", speech[middle : middle + LONG_SAMPLES])
    still_photo(root)
    return root


def batch_folder(inputs: Path, tmp_path: Path) -> Path:
    """A fresh folder for a task file, holding (links to) the inputs, with an empty out/ folder."""
    folder = tmp_path / "batch"
    shutil.copytree(inputs, folder, symlinks=True)
    (folder / "out").mkdir()
    return folder


def expected_frames(video: Path, samples: int) -> int:
    """floor(audio duration x video fps), from the files themselves."""
    return math.floor(Fraction(samples, SAMPLE_RATE) * probe_video(video).fps)


def read_report(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    assert isinstance(report, dict)
    return report


def frames_of(path: Path) -> np.ndarray:
    info = probe_video(path)
    with FrameReader(info) as reader:
        return np.stack(list(reader.frames(0, info.frame_count)))


YAML_TASKS = """\
defaults:
  silence: generate
tasks:
  - {video: clips/c.mp4, audio: speech/short.wav, output: out/plain.mp4}
  - {video: clips/c.mp4, audio: speech/short.wav, output: out/shifted.mp4, bbox_shift: 6}
  - {video: clips/b.mp4, audio: speech/missing.wav, output: out/broken.mp4}
  - {video: clips/b.mp4, audio: speech/long.wav, output: out/long.mp4}
"""


def test_yaml_batch_dubs_reports_a_failure_and_resumes(
    tiny_weights: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = batch_folder(inputs, tmp_path)
    tasks_file = folder / "tasks.yaml"
    tasks_file.write_text(YAML_TASKS)
    args = ["dub-batch", str(tasks_file), "--weights", str(tiny_weights), *FAST]

    assert main(args) == 1  # one task failed; the others ran
    out = capsys.readouterr().out
    assert "3 done, 0 skipped, 1 failed" in out
    outputs = {name: folder / "out" / f"{name}.mp4" for name in ("plain", "shifted", "long")}
    assert not (folder / "out" / "broken.mp4").exists()
    c_clip, b_clip = folder / "clips" / "c.mp4", folder / "clips" / "b.mp4"
    assert probe_video(outputs["plain"]).frame_count == expected_frames(c_clip, SHORT_SAMPLES)
    assert probe_video(outputs["shifted"]).frame_count == expected_frames(c_clip, SHORT_SAMPLES)
    assert probe_video(outputs["long"]).frame_count == expected_frames(b_clip, LONG_SAMPLES)
    # The per-task option reached that task only: the shifted crop gives other pixels.
    assert not np.array_equal(frames_of(outputs["plain"]), frames_of(outputs["shifted"]))

    report = read_report(default_report_path(tasks_file))
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert report["exit_code"] == 1
    entries = report["tasks"]
    assert [entry["index"] for entry in entries] == [1, 2, 3, 4]
    assert [entry["status"] for entry in entries] == ["done", "done", "failed", "done"]
    for entry in entries:
        assert set(entry) >= {"index", "video", "audio", "output", "status", "frames", "seconds", "error"}
    assert entries[0]["video"] == str(c_clip) and entries[0]["output"] == str(outputs["plain"])
    assert entries[1]["options"] == {"silence": "generate", "bbox_shift": 6}
    assert entries[3]["frames"] == expected_frames(b_clip, LONG_SAMPLES)
    assert "missing.wav" in entries[2]["error"] and entries[2]["frames"] == 0
    assert all(entry["error"] is None for entry in entries if entry["status"] == "done")

    # Run again: the finished outputs are skipped, untouched; the failure is reported again.
    before = {name: (path.stat().st_ino, path.stat().st_mtime_ns) for name, path in outputs.items()}
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "0 done, 3 skipped, 1 failed" in captured.out
    assert "UNTRAINED" not in captured.err  # the model was not even loaded: no task needed it
    assert {name: (path.stat().st_ino, path.stat().st_mtime_ns) for name, path in outputs.items()} == before
    again = read_report(default_report_path(tasks_file))["tasks"]
    assert [entry["status"] for entry in again] == ["skipped", "skipped", "failed", "skipped"]
    assert [entry["frames"] for entry in again] == [entry["frames"] for entry in entries]
    assert "missing.wav" in again[2]["error"]


def test_csv_batch_converts_options_keeps_what_is_there_and_force_redoes(
    tiny_weights: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = batch_folder(inputs, tmp_path)
    tasks_file = folder / "tasks.csv"
    tasks_file.write_text(
        "video,audio,output,bbox_shift,image_fps,silence\n"
        "still.png,speech/long.wav,out/photo.mp4,,10,generate\n"  # empty cell: the default bbox_shift
        "clips/c.mp4,speech/short.wav,out/taken.mp4,2,,\n"
    )
    taken = folder / "out" / "taken.mp4"
    taken.write_bytes(b"not a video, but someone's file")  # an unreadable output is never overwritten
    report_path = tmp_path / "custom-report.json"
    args = ["dub-batch", str(tasks_file), "--weights", str(tiny_weights), "--report", str(report_path), *FAST]

    assert main(args) == 1
    photo = folder / "out" / "photo.mp4"
    assert probe_video(photo).fps == 10  # image_fps, a Fraction option, reached the task
    assert probe_video(photo).frame_count == math.floor(Fraction(LONG_SAMPLES, SAMPLE_RATE) * 10)
    assert taken.read_bytes() == b"not a video, but someone's file"
    report = read_report(report_path)
    assert not default_report_path(tasks_file).exists()
    assert [entry["status"] for entry in report["tasks"]] == ["done", "failed"]
    assert report["tasks"][0]["options"] == {"image_fps": "10", "silence": "generate"}
    assert "not a readable video" in report["tasks"][1]["error"]
    assert "remove" in report["tasks"][1]["error"]

    # --force redoes a present output (a new file renamed into place), still not the unreadable one.
    inode = photo.stat().st_ino
    assert main([*args, "--force"]) == 1
    assert photo.stat().st_ino != inode
    assert taken.read_bytes() == b"not a video, but someone's file"
    assert [entry["status"] for entry in read_report(report_path)["tasks"]] == ["done", "failed"]
    assert "done" in capsys.readouterr().out


def test_every_problem_of_a_task_file_is_listed_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "c.wav").write_bytes(b"the user's audio")
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(
        "tasks:\n"
        "  - {video: a.mp4, audio: a.wav, output: out/a.mp4, bbox_shift: abc}\n"  # line 2: bad value
        "  - {video: b.mp4, audio: b.wav, output: out/a.mp4}\n"  # line 3: the same output as task 1
        "  - {video: c.mp4, audio: c.wav, output: c.wav}\n"  # line 4: its output is its audio
        "  - {video: d.mp4, audio: d.wav, output: out/d.mp4, device: cuda}\n"  # line 5: command level
        "  - {video: e.mp4, output: out/e.mp4, mouth: 3}\n"  # line 6: no audio, unknown option
        "  - {video: f.mp4, audio: f.wav, output: out/f.mp4, batch_size: 0, silence: maybe}\n"  # line 7
    )
    missing_weights = tmp_path / "no-weights"
    assert main(["dub-batch", str(tasks_file), "--weights", str(missing_weights), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "fix:" in err
    assert "9 problems" in err
    for expected in (
        "task 1 (line 2): `bbox_shift` (--bbox-shift): 'abc' is not a whole number",
        "task 2 (line 3): writes",
        "which task 1 (line 2) writes too",
        "task 3 (line 4): writes",
        "task 3 (line 4): output c.wav: the suffix .wav names no container lipsync writes",
        "the audio of task 3 (line 4)",
        "task 4 (line 5): `device` (--device) changes the loaded model",
        "task 5 (line 6): no `audio`",
        "task 5 (line 6): unknown option `mouth`",
        "task 6 (line 7): `batch_size` (--batch-size): 0 is below 1",
        "task 6 (line 7): `silence` (--silence): 'maybe' is not one of: keep, generate",
    ):
        assert expected in err
    assert "no-weights" not in err  # stopped before the model load
    assert (tmp_path / "c.wav").read_bytes() == b"the user's audio"
    assert not default_report_path(tasks_file).exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_csv_values_take_the_settings_types_and_problems_name_their_lines(tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.csv"
    tasks_file.write_text(
        "video,audio,output,bbox_shift,image_fps,silence,face_index\n"
        "v1.mp4,a1.wav,o1.mp4,-3,30000/1001,keep,\n"
        "\n"
        "sub/v2.png, /abs/a2.wav ,o2.mp4,,,,1\n"
    )
    first, second = load_tasks(tasks_file)
    assert first.options == {"bbox_shift": -3, "image_fps": Fraction(30000, 1001), "silence": "keep"}
    assert isinstance(first.options["bbox_shift"], int)
    assert second.options == {"face_index": 1}
    assert second.video == tmp_path / "sub" / "v2.png" and second.audio == Path("/abs/a2.wav")
    assert (first.index, second.index, second.where) == (1, 2, "task 2 (line 4)")

    tasks_file.write_text("video,output,model,dtype\nv.mp4,o.mp4,musetalk,\nv2.mp4,o2.mp4,,fp16,extra\n")
    with pytest.raises(TaskFileError) as caught:
        load_tasks(tasks_file)
    problems = caught.value.problems
    assert any("line 1 (header): missing column(s) audio" in problem for problem in problems)
    assert any("line 1 (header): `model` changes the loaded model" in problem for problem in problems)
    assert any("task 2 (line 3): 5 cells, but the header has 4 columns" in problem for problem in problems)
    assert sum("`model`" in problem for problem in problems) == 1  # a bad column is reported once
    assert not any("no `audio`" in problem for problem in problems)  # nor is a missing one, per row

    report = tmp_path / "r.json"
    tasks_file.write_text(f"video,audio,output\n{report},a.wav,{tasks_file}\n")
    with pytest.raises(TaskFileError) as caught:
        load_tasks(tasks_file, report=report)
    assert "which is the task file" in str(caught.value)
    assert "the report: writes" in str(caught.value) and "which is the video of task 1" in str(caught.value)


def fake_dub(calls: list[str]) -> Any:
    """A stand-in for DubPipeline.__call__: records the output name; `boom*` raise, `stop*` is Ctrl-C."""

    def call(self: DubPipeline, source: Path, audio: Path, output: Path, **kwargs: object) -> object:
        calls.append(Path(output).name)
        if Path(output).name.startswith("boom"):
            raise RuntimeError("a surprise deep in a library")
        if Path(output).name.startswith("stop"):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise OSError("a library re-raised the stop as its own error") from None
        return SimpleNamespace(frames=3)

    return call


def test_run_batch_goes_on_after_a_failure_skips_present_outputs_and_stops_on_ctrl_c(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(DubPipeline, "__call__", fake_dub(calls))
    pipeline = DubPipeline(cast(Generator, None))
    present = tmp_path / "present.mp4"
    shutil.copy(inputs / "clips" / "c.mp4", present)
    video, audio = inputs / "clips" / "c.mp4", inputs / "speech" / "short.wav"
    tasks = [
        BatchTask(1, video, audio, tmp_path / "boom.mp4"),
        BatchTask(2, video, audio, tmp_path / "fine.mp4", {"bbox_shift": 2}),
        BatchTask(3, video, audio, present),
    ]
    seen = []
    report = run_batch(pipeline, tasks, on_result=seen.append)
    assert [r.status for r in report.results] == ["failed", "done", "skipped"]
    assert report.results[0].error == "RuntimeError: a surprise deep in a library"
    assert report.results[2].frames == CLIP_FRAMES
    assert seen == list(report.results) and report.exit_code == 1
    assert calls == ["boom.mp4", "fine.mp4"]
    assert "1 done, 1 skipped, 1 failed" in report.table()

    calls.clear()
    assert [r.status for r in run_batch(pipeline, tasks[1:], force=True).results] == ["done", "done"]
    assert calls == ["fine.mp4", "present.mp4"]

    # The pipeline may come from a loader, called once and only when a task needs dubbing.
    loads: list[int] = []

    def loader() -> DubPipeline:
        loads.append(1)
        return pipeline

    assert [r.status for r in run_batch(loader, tasks[2:]).results] == ["skipped"] and loads == []
    assert [r.status for r in run_batch(loader, tasks, force=True).results] == ["failed", "done", "done"]
    assert loads == [1]

    # Ctrl-C (or SIGTERM) ends the batch, even when a library turned it into another error.
    calls.clear()
    stop = [BatchTask(1, video, audio, tmp_path / "stop.mp4"), BatchTask(2, video, audio, tmp_path / "x.mp4")]
    with pytest.raises(KeyboardInterrupt):
        run_batch(pipeline, stop)
    assert calls == ["stop.mp4"]

    # Two processes: each runs every other task; with one, the results come back in task order.
    shares = [ProcessShare(rank, 2) for rank in (0, 1)]
    assert [[t.index for t in tasks if share.owns(t)] for share in shares] == [[1, 3], [2]]
    assert [r.index for r in gather_results(list(reversed(report.results)), ProcessShare())] == [1, 2, 3]


def test_accelerate_launch_shares_the_tasks_and_writes_one_report(
    tiny_weights: Path, inputs: Path, tmp_path: Path
) -> None:
    folder = batch_folder(inputs, tmp_path)
    tasks_file = folder / "tasks.yaml"
    tasks_file.write_text(
        "- {video: clips/c.mp4, audio: speech/short.wav, output: out/1.mp4}\n"
        "- {video: clips/b.mp4, audio: speech/short.wav, output: out/2.mp4}\n"
        "- {video: clips/b.mp4, audio: speech/short.wav, output: out/3.mp4}\n"
        "- {video: clips/c.mp4, audio: speech/short.wav, output: out/4.mp4}\n"
    )
    # As a user writes it. Without GPUs accelerate itself starts one process; dub-batch sees the 2 asked
    # of it and starts them with torch's launcher (with --multi_gpu accelerate starts both itself).
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--num_processes", "2", "-m", "lipsync.cli.main"]
    batch = [
        "dub-batch",
        str(tasks_file),
        "--weights",
        str(tiny_weights),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launch, *batch], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = read_report(default_report_path(tasks_file))
    assert report["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    assert [(entry["index"], entry["rank"]) for entry in report["tasks"]] == [(1, 0), (2, 1), (3, 0), (4, 1)]
    for entry in report["tasks"]:
        assert probe_video(Path(entry["output"])).frame_count == entry["frames"] > 0
    # Each task ran once, in the process that owned it; the main process alone printed the table.
    for index, rank in ((1, 0), (2, 1), (3, 0), (4, 1)):
        assert result.stdout.count(f"[{index}/4] done") == 1
        assert f"[rank {rank}] [{index}/4] done" in result.stdout
    assert result.stdout.count("4 tasks: 4 done, 0 skipped, 0 failed") == 1
    assert sorted(path.name for path in folder.iterdir() if path.suffix == ".json") == [
        "tasks.yaml.report.json"
    ]


@pytest.mark.parametrize(
    ("cmdline", "asked"),
    [
        (["/venv/bin/accelerate", "launch", "--num_processes", "2", "-m", "lipsync.cli.main"], 2),
        (["python", "-m", "accelerate.commands.launch", "--num-processes=3", "x.py"], 3),
        (["/venv/bin/accelerate", "launch", "-m", "lipsync.cli.main", "dub-batch", "t.yaml"], 1),
        (["bash", "-c", "lipsync dub-batch --num_processes 4"], 1),  # not accelerate's launcher
    ],
)
def test_the_processes_asked_of_accelerate_are_read_from_its_command_line(
    cmdline: list[str], asked: int
) -> None:
    from lipsync.cli.batch_cmd import processes_asked_of_accelerate

    assert processes_asked_of_accelerate(cmdline) == asked


def test_ctrl_c_stops_the_command_without_a_report(
    tiny_weights: Path, inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(DubPipeline, "__call__", fake_dub(calls))
    folder = batch_folder(inputs, tmp_path)
    tasks_file = folder / "tasks.yaml"
    tasks_file.write_text(
        "- {video: clips/c.mp4, audio: speech/short.wav, output: out/stop.mp4}\n"
        "- {video: clips/c.mp4, audio: speech/short.wav, output: out/next.mp4}\n"
    )
    assert main(["dub-batch", str(tasks_file), "--weights", str(tiny_weights), *FAST]) == 130
    assert calls == ["stop.mp4"]  # the batch stopped: the next task did not start
    assert not default_report_path(tasks_file).exists()


def test_a_present_output_that_does_not_decode_in_full_is_dubbed_again(
    tiny_weights: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = batch_folder(inputs, tmp_path)
    tasks_file = folder / "tasks.yaml"
    tasks_file.write_text("- {video: clips/b.mp4, audio: speech/long.wav, output: out/long.mp4}\n")
    args = ["dub-batch", str(tasks_file), "--weights", str(tiny_weights), *FAST]
    assert main(args) == 0
    output = folder / "out" / "long.mp4"
    expected = expected_frames(folder / "clips" / "b.mp4", LONG_SAMPLES)
    assert len(frames_of(output)) == expected
    # The first part of the result, as an interrupted copy leaves it: its index still lists every frame.
    complete = output.read_bytes()
    capsys.readouterr()
    for kept in (len(complete) * 9 // 10, len(complete) // 2):  # index kept, frames missing
        output.write_bytes(complete[:kept])
        with av.open(str(output)) as container:
            assert container.streams.video[0].frames == expected
        assert decoded_frames(output) < expected

        assert main(args) == 0
        out = capsys.readouterr().out
        assert "1 done, 0 skipped, 0 failed" in out and f"of the {expected} frames this task makes" in out
        assert decoded_frames(output) == expected
        entry = read_report(default_report_path(tasks_file))["tasks"][0]
        assert entry["status"] == "done" and "dubbed again" in entry["note"]
    assert main(args) == 0  # now complete: skipped
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out


def decoded_frames(path: Path) -> int:
    """Frames that decode, up to the first that does not."""
    count = 0
    with av.open(str(path)) as container:
        frames = container.decode(video=0)
        while True:
            try:
                next(frames)
            except (StopIteration, av.error.FFmpegError):
                return count
            count += 1


HOLD_LOCK = """\
import sys
from pathlib import Path
from lipsync.pipeline.batch import output_lock
with output_lock(Path(sys.argv[1])) as holder:
    print("held" if holder is None else f"busy {holder}", flush=True)
    sys.stdin.read()
"""


def test_a_task_another_run_is_dubbing_is_left_to_it_and_a_dead_runs_lock_is_taken_over(
    tiny_weights: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = batch_folder(inputs, tmp_path)
    tasks_file = folder / "tasks.yaml"
    tasks_file.write_text(
        "- {video: clips/c.mp4, audio: speech/short.wav, output: out/held.mp4}\n"
        "- {video: clips/c.mp4, audio: speech/short.wav, output: out/free.mp4}\n"
    )
    held, free = folder / "out" / "held.mp4", folder / "out" / "free.mp4"
    args = ["dub-batch", str(tasks_file), "--weights", str(tiny_weights), *FAST]
    other_run = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(held)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other_run.stdout is not None and other_run.stdout.readline().strip() == "held"
        assert main(args) == 0
        out = capsys.readouterr().out
        assert f"another run (process {other_run.pid}) is dubbing this output" in out
        assert "1 done, 1 skipped, 0 failed" in out
        assert not held.exists() and probe_video(free).frame_count > 0
        entries = read_report(default_report_path(tasks_file))["tasks"]
        assert [entry["status"] for entry in entries] == ["skipped", "done"]
        assert f"process {other_run.pid}" in entries[0]["note"]
    finally:
        other_run.kill()  # as SIGKILL leaves it: the lock file stays, naming a process that is gone
        other_run.communicate(timeout=30)
    lock = folder / "out" / ".held.mp4.lock"
    assert lock.read_text() == str(other_run.pid)

    assert main(args) == 0
    assert "1 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert probe_video(held).frame_count == probe_video(free).frame_count
    assert sorted(path.name for path in (folder / "out").iterdir()) == ["free.mp4", "held.mp4"]


def test_an_output_that_is_a_folder_or_has_a_suffix_that_is_not_written_says_so(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(DubPipeline, "__call__", fake_dub(calls))
    folder = tmp_path / "dub.mp4"
    folder.mkdir()
    task = BatchTask(1, inputs / "clips" / "c.mp4", inputs / "speech" / "short.wav", folder)
    (result,) = run_batch(DubPipeline(cast(Generator, None)), [task]).results
    assert result.status == "failed" and calls == []
    assert result.error is not None and f"the output {folder} is a folder" in result.error
    assert f"fix: give the task a file name in it, e.g. {folder / 'out.mp4'}" in result.error

    tasks_file = tmp_path / "tasks.csv"
    tasks_file.write_text("video,audio,output\nv.mp4,a.wav,x.avi\n")
    with pytest.raises(TaskFileError, match=r"task 1 \(line 2\): output x.avi: the suffix .avi names no"):
        load_tasks(tasks_file)
