"""Batch task files: the (video, audio, output) tasks of a YAML or CSV file, checked as a whole.

Every problem of the file is listed at once (with its task and line) before any model is loaded; relative
paths are taken from the task file's folder; every key besides the paths is a dubbing option, read as the
type of its setting in lipsync.config.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from lipsync.config import (
    BATCH_COMMAND_LEVEL_OPTIONS,
    BATCH_OPTION_MINIMUMS,
    BATCH_PATH_KEYS,
    DubSettings,
    FaceSettings,
    RuntimeSettings,
)
from lipsync.errors import LipsyncError

YAML_SUFFIXES = (".yaml", ".yml")


CSV_SUFFIXES = (".csv",)


TASK_FILE_FIX = (
    "Correct every entry listed, then run again (nothing was dubbed). Each task names `video`, `audio` "
    "and `output`; any other key is a dubbing option."
)


class TaskFileError(LipsyncError):
    """A task file that cannot be run as it is; `problems` lists every one found, each with its place."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"task file {path}: {count}:\n{listed}", TASK_FILE_FIX)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class BatchTask:
    """One dubbing job of a batch: its number in the task file (from 1), its paths and its own options."""

    index: int
    video: Path
    audio: Path
    output: Path
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # DubSettings.with_options names
    where: str = ""  # where it is written in the task file, e.g. "task 3 (line 7)"

    def __post_init__(self) -> None:
        if not self.where:
            object.__setattr__(self, "where", f"task {self.index}")


@functools.cache
def task_options() -> dict[str, Any]:
    """The options a task may set, each with its type (from the settings dataclasses in lipsync.config).
    Cached: do not change the dict it returns."""
    kinds: dict[str, Any] = {}
    for cls in (FaceSettings, RuntimeSettings, DubSettings):
        hints = get_type_hints(cls)
        kinds.update({f.name: hints[f.name] for f in fields(cls) if f.name not in ("face", "runtime")})
    return {name: kind for name, kind in kinds.items() if name not in BATCH_COMMAND_LEVEL_OPTIONS}


def parse_option(name: str, value: object, kind: Any = None) -> Any:
    """`value` (a CSV cell or a YAML scalar) as the type of option `name`; ValueError says why not."""
    kind = task_options()[name] if kind is None else kind
    if isinstance(value, bool):
        raise ValueError(
            f"{str(value).lower()} is not a value it takes (YAML reads an unquoted yes, no, on, off as "
            "true or false: quote it)"
        )
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a single value")
    text = str(value).strip()
    if get_origin(kind) is Literal:
        choices = [str(choice) for choice in get_args(kind)]
        if text not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return text
    if get_origin(kind) in (Union, types.UnionType):
        return parse_option(name, value, next(k for k in get_args(kind) if k is not type(None)))
    if kind is int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        least = BATCH_OPTION_MINIMUMS.get(name)
        if least is not None and number < least:
            raise ValueError(f"{number} is below {least}, the smallest that works")
        return number
    if kind is Fraction or kind is float:
        try:
            rational = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{text!r} is not a number") from None
        if kind is Fraction and rational <= 0:
            raise ValueError(f"{text} must be above 0")
        return rational if kind is Fraction else float(rational)
    if kind is str:
        return text
    raise TypeError(f"option {name!r} has a type task files cannot give: {kind!r}")


@dataclass(frozen=True)
class _Entry:
    """A task (or the defaults) as written in the file: where it is, and its keys and raw values."""

    where: str
    values: Mapping[str, object]
    reported: frozenset[str] = frozenset()  # missing keys already reported for the whole file (CSV header)


def load_tasks(path: str | Path, *, report: str | Path | None = None) -> list[BatchTask]:
    """The tasks of a YAML (.yaml, .yml) or CSV (.csv) file, checked as a whole: raises TaskFileError
    listing every problem (missing paths, unknown or command-level options, bad values, two tasks writing
    one output, an output that is an input, the task file or the `report`) with its line or entry.
    Relative paths are taken from the task file's folder. Input files are not opened: a missing one fails
    its task when the batch runs, and the others go on."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in YAML_SUFFIXES + CSV_SUFFIXES:
        raise LipsyncError(
            f"task file {path} is neither YAML nor CSV",
            "name it .yaml, .yml or .csv (docs/batch.md shows both formats)",
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LipsyncError(f"task file {path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LipsyncError(f"task file {path} cannot be read ({exc})", "give a UTF-8 text file") from exc
    problems: list[str] = []
    if suffix in CSV_SUFFIXES:
        defaults, entries = None, _csv_entries(text, problems)
    else:
        defaults, entries = _yaml_entries(text, problems)
    if not entries and not problems:
        problems.append("it holds no tasks")
    base = path.absolute().parent
    common = _options(defaults, problems) if defaults is not None else {}
    tasks = []
    for index, entry in enumerate(entries, start=1):
        task = _task(index, entry, base, common, problems)
        if task is not None:
            tasks.append(task)
    problems += _clashes(tasks, path, None if report is None else Path(report))
    if problems:
        raise TaskFileError(path, sorted(problems, key=_task_order))
    return tasks


def _task_order(problem: str) -> float:
    """Problems of the file as a whole first, then each task's in file order, then the report's."""
    if problem.startswith("the report"):
        return math.inf
    number = re.match(r"task (\d+)", problem)
    return int(number.group(1)) if number else 0


def _yaml_entries(text: str, problems: list[str]) -> tuple[_Entry | None, list[_Entry]]:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        problems.append(f"not valid YAML: {exc}")
        return None, []
    defaults_node, tasks_node = None, root
    defaults: _Entry | None = None
    if isinstance(data, dict):
        unknown = sorted(str(key) for key in data if key not in ("tasks", "defaults"))
        if unknown:
            problems.append(f"unknown top-level key(s) {', '.join(unknown)}: the keys are tasks and defaults")
        assert isinstance(root, yaml.MappingNode)
        nodes = {key.value: value for key, value in root.value}
        defaults_node, tasks_node = nodes.get("defaults"), nodes.get("tasks")
        if "defaults" in data and data["defaults"] is not None:
            assert defaults_node is not None
            where = f"defaults (line {defaults_node.start_mark.line + 1})"
            if isinstance(data["defaults"], dict):
                defaults = _Entry(where, data["defaults"])
            else:
                problems.append(f"{where}: must be a mapping of option names to values")
        if "tasks" not in data:
            problems.append("no `tasks:` list")
            return defaults, []
        data = data["tasks"]
    if not isinstance(data, list):
        problems.append(
            "must be a list of tasks, or a mapping with a `tasks:` list (and optional `defaults:`)"
        )
        return defaults, []
    assert isinstance(tasks_node, yaml.SequenceNode)
    entries = []
    for number, (value, node) in enumerate(zip(data, tasks_node.value, strict=True), start=1):
        where = f"task {number} (line {node.start_mark.line + 1})"
        if isinstance(value, dict):
            entries.append(_Entry(where, {str(key): item for key, item in value.items()}))
        else:
            problems.append(f"{where}: must be a mapping with video, audio and output")
            entries.append(_Entry(where, {}))
    return defaults, entries


def _csv_entries(text: str, problems: list[str]) -> list[_Entry]:
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] | None = None
    ignored: set[str] = set()
    missing: frozenset[str] = frozenset()
    entries: list[_Entry] = []
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if header is None:
                header = cells
                problems += _header_problems(header)
                ignored = {name for name in header if not name or _option_name_problem(name)}
                missing = frozenset(key for key in BATCH_PATH_KEYS if key not in header)
                continue
            where = f"task {len(entries) + 1} (line {start})"
            if len(cells) != len(header):
                problems.append(f"{where}: {len(cells)} cells, but the header has {len(header)} columns")
                entries.append(_Entry(where, {}))
                continue
            # An empty cell means "the default": the key is left out, as is a column the header refused.
            values = {
                key: cell for key, cell in zip(header, cells, strict=True) if cell and key not in ignored
            }
            entries.append(_Entry(where, values, missing))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not valid CSV ({exc})")
    if header is None:
        problems.append("no header row (video,audio,output and any option columns)")
    return entries


def _header_problems(header: list[str]) -> list[str]:
    problems = [
        f"line 1 (header): {problem}"
        for problem in (_option_name_problem(name) for name in header if name)
        if problem is not None
    ]
    missing = [key for key in BATCH_PATH_KEYS if key not in header]
    if missing:
        problems.append(f"line 1 (header): missing column(s) {', '.join(missing)}")
    repeated = sorted({key for key in header if header.count(key) > 1})
    if repeated:
        problems.append(f"line 1 (header): column(s) named twice: {', '.join(repeated)}")
    if "" in header:
        problems.append("line 1 (header): a column without a name")
    return problems


def _options(entry: _Entry, problems: list[str], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The entry's options converted to their types; every bad one is added to `problems`."""
    known = task_options()
    options = {}
    for name, value in entry.values.items():
        if name in skip:
            continue
        if name in BATCH_PATH_KEYS:
            problems.append(f"{entry.where}: `{name}` belongs to each task, not to the defaults")
        elif (problem := _option_name_problem(name)) is not None:
            problems.append(f"{entry.where}: {problem}")
        elif value is not None and value != "":
            try:
                options[name] = parse_option(name, value, known[name])
            except ValueError as exc:
                problems.append(f"{entry.where}: `{name}`: {exc}")
    return options


def _option_name_problem(name: str) -> str | None:
    """Why `name` is no option a task may set; None when it is one (or a path key)."""
    if name in BATCH_PATH_KEYS or name in task_options():
        return None
    if name in BATCH_COMMAND_LEVEL_OPTIONS:
        return (
            f"`{name}` changes the loaded model, so it is set once for the whole batch on the command line, "
            "not per task"
        )
    return f"unknown option `{name}`; a task may set: {', '.join(sorted(task_options()))}"


def _task(
    index: int, entry: _Entry, base: Path, common: Mapping[str, Any], problems: list[str]
) -> BatchTask | None:
    from lipsync.io.writer import video_suffix_problem

    paths: dict[str, Path] = {}
    for key in BATCH_PATH_KEYS:
        value = entry.values.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if entry.values and key not in entry.reported:  # each problem is reported once
                problems.append(f"{entry.where}: no `{key}`")
        elif not isinstance(value, str):
            problems.append(f"{entry.where}: `{key}` must be a file path, got {value!r}")
        elif key == "output" and value.strip().endswith(("/", os.sep)):
            problems.append(f"{entry.where}: output {value.strip()} names a folder; give a file name in it")
        else:
            paths[key] = base / Path(value.strip()).expanduser()
            if key == "output" and (suffix_problem := video_suffix_problem(paths[key])) is not None:
                problems.append(f"{entry.where}: output {value.strip()}: {suffix_problem}")
    options = {**common, **_options(entry, problems, skip=BATCH_PATH_KEYS)}
    if len(paths) < len(BATCH_PATH_KEYS):
        return None
    return BatchTask(index, paths["video"], paths["audio"], paths["output"], options, entry.where)


def _clashes(tasks: Sequence[BatchTask], tasks_file: Path, report: Path | None) -> list[str]:
    """Two writers of one file, or a writer of a file that is read: every such pair, in task order."""
    writers = [(task.where, task.output) for task in tasks]
    readers = [
        (f"the {role} of {task.where}", getattr(task, role)) for task in tasks for role in ("video", "audio")
    ]
    readers.append(("the task file", tasks_file))
    if report is not None:
        writers.append(("the report", report))
    problems = []
    seen: dict[object, str] = {}
    for where, path in writers:
        for key in _file_keys(path):
            if key in seen and seen[key] != where:
                problems.append(f"{where}: writes {path}, which {seen[key]} writes too")
                break
        else:
            for key in _file_keys(path):
                seen[key] = where
    read: dict[object, str] = {}
    for what, path in readers:
        for key in _file_keys(path):
            read.setdefault(key, what)
    for where, path in writers:
        source = next((read[key] for key in _file_keys(path) if key in read), None)
        if source is not None:
            problems.append(f"{where}: writes {path}, which is {source}: inputs are never overwritten")
    if report is not None:
        problems += _report_problems(report)
    return problems


def _file_keys(path: Path) -> Iterator[object]:
    """What makes two paths one file: the same resolved path, or (when it exists) the same inode."""
    yield ("path", str(path.resolve()))
    try:
        stat = path.stat()
    except OSError:
        return
    yield ("inode", stat.st_dev, stat.st_ino)


def _report_problems(report: Path) -> list[str]:
    if report.is_dir():
        return [f"the report {report} is a folder; give a file name (--report PATH)"]
    folder = report.absolute().parent
    if not folder.is_dir():
        return [f"the report's folder {folder} does not exist"]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"the report's folder {folder} is not writable"]
    return []
