"""Batch dubbing: many (video, audio, output) tasks from one YAML or CSV file, the models loaded once.

    tasks = load_tasks("catalogue.yaml")  # every problem of the file at once, before any model load
    pipe = DubPipeline.from_pretrained("models")
    report = run_batch(pipe, tasks)  # done / skipped / failed per task; one failure stops nothing
    report.write(default_report_path("catalogue.yaml"))

A task whose output is already there, decoding to every frame the task makes, is skipped, so a stopped
batch resumes where it stopped; a present output that is cut short (its tail does not decode) is dubbed
again. Nothing else the user gave is deleted or overwritten, except a present output when `force` is
asked. Each task holds a lock beside its output while it runs (`.NAME.lock`), so that two runs of one task
file never dub the same task: the second skips it and says which process has it.
Under `accelerate launch` (or torchrun) every process takes its share of the tasks (task i when
(i - 1) % world_size == rank) and the results are gathered, so the main process writes one report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from lipsync.config import (
    BATCH_GATHER_TIMEOUT_S,
    BATCH_REPORT_SUFFIX,
    DeviceChoice,
)
from lipsync.errors import LipsyncError
from lipsync.io.files import atomic_path
from lipsync.pipeline.batch_tasks import BatchTask, TaskFileError, load_tasks

__all__ = [
    "BatchReport",
    "BatchTask",
    "ProcessShare",
    "TaskFileError",
    "TaskResult",
    "default_report_path",
    "load_tasks",
    "run_batch",
    "run_task",
]

if TYPE_CHECKING:
    from lipsync.pipeline.dub import DubPipeline


TaskStatus = Literal["done", "skipped", "failed"]


STATUSES: tuple[TaskStatus, ...] = ("done", "skipped", "failed")


@dataclass(frozen=True)
class TaskResult:
    """What became of one task, and which process (rank) ran it."""

    index: int
    video: Path
    audio: Path
    output: Path
    status: TaskStatus
    frames: int  # frames written (done) or found in the present output (skipped); 0 when failed
    seconds: float
    error: str | None = None
    rank: int = 0
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    note: str | None = None  # why a task was skipped or redone, when that is not the usual reason

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "video": str(self.video),
            "audio": str(self.audio),
            "output": str(self.output),
            "options": {name: _json_value(value) for name, value in self.options.items()},
            "status": self.status,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "note": self.note,
            "rank": self.rank,
        }


@dataclass(frozen=True)
class BatchReport:
    """Every task's result, in task-file order (gathered from every process under accelerate)."""

    results: tuple[TaskResult, ...]
    tasks_file: Path | None = None

    def count(self, status: TaskStatus) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def exit_code(self) -> int:
        """0 when no task failed, 1 when any did."""
        return 1 if self.count("failed") else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks_file": None if self.tasks_file is None else str(self.tasks_file),
            "counts": {status: self.count(status) for status in STATUSES},
            "exit_code": self.exit_code,
            "tasks": [result.to_json() for result in self.results],
        }

    def write(self, path: str | Path) -> Path:
        """The JSON report at `path`, replaced in one rename (a reader never sees half of it)."""
        path = Path(path)
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    def table(self) -> str:
        """A summary table: task, output, status, frames, seconds, error (its first line) or note."""
        header = ("task", "output", "status", "frames", "seconds", "error or note")
        rows = [
            (
                str(r.index),
                r.output.name,
                r.status,
                str(r.frames),
                f"{r.seconds:.1f}",
                r.error.splitlines()[0] if r.error else r.note or "",
            )
            for r in self.results
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        lines = [
            "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]])
            for row in [header, *rows]
        ]
        counts = ", ".join(f"{self.count(status)} {status}" for status in STATUSES)
        return "\n".join([*(line.rstrip() for line in lines), f"{len(self.results)} tasks: {counts}"])


@dataclass(frozen=True)
class ProcessShare:
    """Which tasks this process runs: task i when (i - 1) % world_size == rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, task: BatchTask) -> bool:
        return (task.index - 1) % self.world_size == self.rank

    @classmethod
    def from_environment(cls, device: DeviceChoice = "auto") -> ProcessShare:
        """This process's share under `accelerate launch` or torchrun (RANK, WORLD_SIZE, LOCAL_RANK set),
        or under MPI; the whole batch otherwise. With several processes it joins (or starts) their
        process group: gloo on the CPU, nccl on GPUs, where it also makes cuda:LOCAL_RANK the device
        that `device` auto or cuda resolves to."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            sizes = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
            if max(int(os.environ.get(name, "1") or "1") for name in sizes) <= 1:
                return cls()
            from accelerate import PartialState

            on_cpu = device == "cpu" or not torch.cuda.is_available()
            state = PartialState(cpu=on_cpu, timeout=timedelta(seconds=BATCH_GATHER_TIMEOUT_S))
            rank, world_size = state.process_index, state.num_processes
            local_rank = state.local_process_index
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return cls(rank, world_size, local_rank)


def default_report_path(tasks_file: str | Path) -> Path:
    """TASKS.yaml -> TASKS.yaml.report.json, beside the task file."""
    path = Path(tasks_file)
    return path.with_name(path.name + BATCH_REPORT_SUFFIX)


PipelineSource = Union["DubPipeline", Callable[[], "DubPipeline"]]


def run_batch(
    pipeline: PipelineSource,
    tasks: Sequence[BatchTask],
    *,
    force: bool = False,
    share: ProcessShare | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    progress: bool = False,
    tasks_file: Path | None = None,
) -> BatchReport:
    """Run this process's share of `tasks` with the pipeline's generator (each task's options over the
    pipeline's settings), then gather every process's results. `pipeline` may be a function that loads
    one: it is called once, when the first task needs dubbing (a batch whose outputs are all there loads
    no model). A task whose output is a readable video is skipped unless `force`; a failing task is
    reported and the others go on, but a model that cannot load stops the batch (it raises). Ctrl-C
    (KeyboardInterrupt; SIGTERM as `lipsync` handles it) stops it too; the interrupted output is not kept."""
    share = share or ProcessShare()
    loaded: list[DubPipeline] = []

    def load() -> DubPipeline:
        if not loaded:
            loaded.append(_pipeline(pipeline))
        return loaded[0]

    results = []
    for task in tasks:
        if share.owns(task):
            result = run_task(load, task, force=force, rank=share.rank, progress=progress)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return BatchReport(tuple(gather_results(results, share)), tasks_file)


def run_task(
    pipeline: PipelineSource,
    task: BatchTask,
    *,
    force: bool = False,
    rank: int = 0,
    progress: bool = False,
) -> TaskResult:
    """Dub one task, or skip it when its output is already there in full (or another run holds its lock);
    an error of the task (its inputs, its output, its options) is returned as a failure, one loading the
    model is raised."""
    started = time.perf_counter()

    def result(
        status: TaskStatus,
        frames: int = 0,
        error: str | None = None,
        note: str | None = None,
        seconds_left_out: float = 0.0,
    ) -> TaskResult:
        seconds = time.perf_counter() - started - seconds_left_out
        return TaskResult(
            task.index,
            task.video,
            task.audio,
            task.output,
            status,
            frames,
            seconds,
            error,
            rank,
            task.options,
            note,
        )

    with output_lock(task.output) as holder:
        if holder is not None:
            return result(
                "skipped",
                note=f"another run{f' (process {holder})' if holder else ''} is dubbing this output; "
                "that run reports on it",
            )
        note = None
        if os.path.lexists(task.output):
            if task.output.is_dir():
                return result(
                    "failed",
                    error=f"the output {task.output} is a folder, not a video file\n"
                    f"  fix: give the task a file name in it, e.g. {task.output / 'out.mp4'}",
                )
            present = present_video_frames(task.output)
            if present is None and not force and _has_video_track(task.output):
                present = 0  # a video cut short before its first whole frame: dubbed again below
            if present is None:
                return result(
                    "failed",
                    error=f"{task.output} is already there but is not a readable video; it was left "
                    "untouched\n  fix: move or remove it yourself if it is not needed, then run again",
                )
            if not force:
                decoded, expected = _complete_frames(task, present)
                if decoded == expected:
                    return result("skipped", decoded)
                note = (
                    f"the present output decodes to {decoded} of the {expected} frames this task makes: "
                    "dubbed again"
                )
        return _dub(pipeline, task, progress, result, note)


def _dub(
    pipeline: PipelineSource,
    task: BatchTask,
    progress: bool,
    result: Callable[..., TaskResult],
    note: str | None,
) -> TaskResult:
    from lipsync.pipeline.dub import DubPipeline

    try:  # the cheap checks first: a task whose inputs are missing needs no model
        _check_paths(task)
    except LipsyncError as exc:
        return result("failed", error=str(exc))
    loading = time.perf_counter()
    base = _pipeline(pipeline)
    loaded = time.perf_counter() - loading  # a task's seconds leave out the one model load
    try:
        settings = base.settings.with_options(**task.options)
        summary = DubPipeline(base.generator, settings)(
            task.video, task.audio, task.output, progress=progress
        )
    except Exception as exc:
        stop = _interruption(exc)
        if stop is not None:
            raise stop from None
        return result("failed", error=_describe(exc), seconds_left_out=loaded)
    return result("done", summary.frames, note=note, seconds_left_out=loaded)


LOCK_SUFFIX = ".lock"
LOCK_FILE_MODE = 0o644
PID_BYTES = 32


def lock_path(output: Path) -> Path:
    """`.NAME.lock` beside the output: held while a run works on that output."""
    return output.with_name(f".{output.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[int | None]:
    """Hold the output's lock for the block and yield None; or, when another process holds it, yield
    that process's id (0 if unknown) without waiting. The lock is an flock on `lock_path(output)`, so the
    system releases it when its process dies (a killed run's lock file is taken over, not obeyed). Where
    no lock file can be made (a missing or read-only folder) the block runs unlocked: the task's own
    checks then say what is wrong with the folder."""
    path = lock_path(output)
    fd, holder = _take_lock(path)
    if fd is None:
        yield holder
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: whoever opened this file then sees it is gone, and retries
        os.close(fd)


def _take_lock(path: Path) -> tuple[int | None, int | None]:
    """(the locked file's descriptor, None), or (None, the holder's process id or 0) when another process
    holds it, or (None, None) when no lock file can be made or locked."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, LOCK_FILE_MODE)
        except OSError:
            return None, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, PID_BYTES).decode(errors="replace").strip()
            os.close(fd)
            return None, int(holder) if holder.isdigit() else 0
        except OSError:  # a file system without locks
            os.close(fd)
            return None, None
        try:  # the holder before us may have removed the file after we opened it: retry on a new one
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, None
        except FileNotFoundError:
            pass
        os.close(fd)


def _complete_frames(task: BatchTask, present: int) -> tuple[int, int]:
    """(frames the present output decodes to, frames the task makes: one per frame period of its audio
    at the output's rate; the frames the output's index lists when the audio cannot be read)."""
    from lipsync.io.audio import frame_count_for_audio, load_audio
    from lipsync.io.video import decodable_frames

    try:
        decoded, fps = decodable_frames(task.output)
    except LipsyncError:
        decoded, fps = 0, None
    expected = present
    if fps is not None:
        with contextlib.suppress(LipsyncError):
            expected = frame_count_for_audio(load_audio(task.audio).duration, fps)
    return decoded, max(expected, 1)


def _has_video_track(path: Path) -> bool:
    """True when `path` opens as a media container with a video track (a video, if a damaged one)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except av.error.FFmpegError:
        return False


def _check_paths(task: BatchTask) -> None:
    """Raise InputError or OutputError for a missing input or an output folder that cannot be written."""
    from lipsync.io.audio import AUDIO_FIX
    from lipsync.io.files import require_file
    from lipsync.io.video import VIDEO_FIX
    from lipsync.io.writer import check_video_output

    require_file(task.video, "a video or photo", VIDEO_FIX)
    require_file(task.audio, "an audio file", AUDIO_FIX)
    check_video_output(task.output, {"video": task.video, "audio": task.audio})


def _pipeline(source: PipelineSource) -> DubPipeline:
    from lipsync.pipeline.dub import DubPipeline

    return source if isinstance(source, DubPipeline) else source()


def present_video_frames(path: Path) -> int | None:
    """Frames of the video at `path`, or None when it is not a readable video (or not a file)."""
    from lipsync.io.video import probe_video

    if not path.is_file():
        return None
    try:
        return probe_video(path).frame_count
    except Exception as exc:
        stop = _interruption(exc)
        if stop is not None:
            raise stop from None
        return None


def gather_results(results: Sequence[TaskResult], share: ProcessShare) -> list[TaskResult]:
    """Every process's results in task order; with one process, these. Several processes must share a
    torch.distributed process group (ProcessShare.from_environment joins one): every process gets them all."""
    merged = list(results)
    if share.world_size > 1:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise LipsyncError(
                f"{share.world_size} processes but no torch.distributed process group to gather results in",
                "use ProcessShare.from_environment(), which joins the launcher's process group",
            )
        parts: list[list[TaskResult] | None] = [None] * share.world_size
        dist.all_gather_object(parts, merged)
        merged = [result for part in parts for result in part or []]
    return sorted(merged, key=lambda result: result.index)


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C; SIGTERM as `lipsync` handles it) that `exc` is or was raised while
    handling: a library that re-raises the stop as its own error must not turn it into one failed task."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, LipsyncError) else f"{type(exc).__name__}: {exc}"


def _json_value(value: object) -> object:
    return str(value) if isinstance(value, Fraction) else value
