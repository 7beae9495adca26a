"""`lipsync dub-batch TASKS`: dub every (video, audio, output) task of a YAML or CSV file, models loaded once.

The file is checked as a whole before any model loads; a task whose output is already there is skipped (so
a stopped batch resumes); a failing task is reported and the others go on; under `accelerate launch` the
processes share the tasks and the main one writes one report. The format is in docs/batch.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lipsync.cli.options import (
    add_face_options,
    add_image_fps_option,
    add_model_options,
    add_speech_options,
    settings_from_args,
)
from lipsync.config import BATCH_REPORT_SUFFIX

if TYPE_CHECKING:
    from lipsync.pipeline.batch import ProcessShare, TaskResult

EPILOG = """\
exit codes: 0 every task done or skipped; 1 at least one task failed (the others still ran; see the
table and the report); 2 the task file, the weights or an option cannot be used (nothing was dubbed);
130/143 stopped by Ctrl-C/SIGTERM (finished outputs are kept; run again to resume).
under accelerate: accelerate launch --multi_gpu --num_processes N -m lipsync.cli.main dub-batch TASKS
(on GPUs, or on the CPU alone: the processes then talk over gloo); torchrun works too."""


def register(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser(
        "dub-batch",
        help="dub every (video, audio, output) task of a YAML or CSV file, with the models loaded once",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument(
        "tasks", type=Path, help="task file (.yaml, .yml or .csv); relative paths in it are from its folder"
    )
    batch.add_argument(
        "--report",
        type=Path,
        default=None,
        help=f"JSON report of every task (default: TASKS{BATCH_REPORT_SUFFIX} beside the task file)",
    )
    batch.add_argument(
        "--force",
        action="store_true",
        help="dub again the tasks whose output is already there (default: skip them)",
    )
    add_model_options(batch)
    add_face_options(batch)
    add_speech_options(batch)
    add_image_fps_option(batch)
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-task lines")


def run(args: argparse.Namespace) -> int:
    from lipsync.pipeline.batch import ProcessShare, default_report_path, load_tasks, run_batch
    from lipsync.pipeline.dub import UNTRAINED_LABEL, DubPipeline

    settings = settings_from_args(args)
    report_path = args.report if args.report is not None else default_report_path(args.tasks)
    tasks = load_tasks(args.tasks, report=report_path)  # every problem of the file, before the model load
    asked = processes_asked_of_accelerate()
    if asked > 1 and not _in_process_group():
        return _start_processes(asked)
    share = ProcessShare.from_environment(settings.runtime.device)

    def load() -> DubPipeline:  # once, when a task first needs it: a finished batch loads nothing
        pipeline = DubPipeline.from_pretrained(args.weights, settings=settings)
        if pipeline.generator.untrained and share.is_main:
            print(f"WARNING: {UNTRAINED_LABEL}", file=sys.stderr)
        return pipeline

    report = run_batch(
        load,
        tasks,
        force=args.force,
        share=share,
        on_result=None if args.quiet else _progress_line(len(tasks), share),
        progress=not args.quiet and share.world_size == 1,
        tasks_file=args.tasks.absolute(),
    )
    if share.is_main:
        report.write(report_path)
        print(report.table())
        print(f"report: {report_path}")
        failed = report.count("failed")
        if failed:
            print(f"{failed} task(s) failed; the others ran (the report has each error)", file=sys.stderr)
    _leave_process_group(share)
    return report.exit_code


def _progress_line(total: int, share: ProcessShare) -> Callable[[TaskResult], None]:
    prefix = f"[rank {share.rank}] " if share.world_size > 1 else ""

    def line(result: TaskResult) -> None:
        if result.status == "failed":
            detail = (result.error or "").splitlines()[0]
        else:
            detail = f"{result.frames} frames, {result.seconds:.1f} s"
        if result.note:
            detail = f"{detail}; {result.note}" if result.status == "done" else result.note
        print(f"{prefix}[{result.index}/{total}] {result.status:7} {result.output}: {detail}", flush=True)

    return line


def _leave_process_group(share: ProcessShare) -> None:
    """Wait until the main process has written the report (a launcher stops every process as soon as one
    ends with a non-zero code), then leave the group."""
    if share.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# --- accelerate launch on a machine without GPUs ------------------------------------------------------

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
NUM_PROCESSES_FLAGS = ("--num_processes", "--num-processes")


def processes_asked_of_accelerate(cmdline: list[str] | None = None) -> int:
    """The --num_processes of the `accelerate launch` that started this process, or 1.

    On a machine without GPUs, accelerate's launcher starts several processes only through mpirun (or with
    --multi_gpu): `accelerate launch --num_processes 2` starts one. Reading what was asked lets dub-batch
    start the processes itself, so the command works as written."""
    if cmdline is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        except OSError:
            return 1
        cmdline = [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]
    launcher = any(part.endswith("accelerate.commands.launch") for part in cmdline) or (
        "launch" in cmdline and any(Path(part).name == "accelerate" for part in cmdline)
    )
    if not launcher:
        return 1
    for index, part in enumerate(cmdline):
        for flag in NUM_PROCESSES_FLAGS:
            value = part.split("=", 1)[1] if part.startswith(flag + "=") else None
            if part == flag and index + 1 < len(cmdline):
                value = cmdline[index + 1]
            if value is not None and value.isdigit():
                return int(value)
    return 1


def _in_process_group() -> bool:
    return any(int(os.environ.get(name, "1") or "1") > 1 for name in WORLD_SIZE_VARIABLES)


def _start_processes(count: int) -> int:
    """Run this same command in `count` processes with torch's launcher (gloo on the CPU); its exit code."""
    import subprocess

    print(
        f"accelerate started one process for --num_processes {count} (without GPUs it starts several only "
        f"through mpirun); starting {count} here with torch.distributed.run",
        file=sys.stderr,
        flush=True,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={count}",
        "-m",
        "lipsync.cli.main",
        *sys.argv[1:],
    ]
    return subprocess.run(command, check=False).returncode
