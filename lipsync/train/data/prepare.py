"""`lipsync data prepare`: talking-face videos -> 25 fps face clips with audio, landmarks and mel.

Each source video is read twice, streaming (never held whole): once to follow the face, once to crop the
clips. Sources run in parallel worker processes (spawn: mediapipe is not fork-safe). A source is finished
when its record sources/<key>.json is written, after all its clips; a later run skips finished sources, so
an interrupted run resumes where it stopped. See docs/training-data.md.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from lipsync.config import FaceSettings
from lipsync.errors import InputError, OutputError
from lipsync.face.crop import CropBox
from lipsync.face.track import NO_BOX, FaceTrack, track_face
from lipsync.io.audio import load_audio
from lipsync.io.resample import PresentationResampler, StreamTimes, probe_stream_times, rgb_frames
from lipsync.train.data.format import (
    CLIPS_DIR,
    DATASET_FILE,
    REPORT_FILE,
    SOURCES_DIR,
    TMP_PREFIX,
    ClipMeta,
    DatasetError,
    DatasetSettings,
    Rejection,
    clip_writer,
    dataset_header,
    read_json,
    write_clip_meta,
    write_json,
)
from lipsync.train.data.mel import syncnet_mel

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})
MAX_DEFAULT_JOBS = 4
# The inference crop box (lipsync/models/musetalk/README.md, Crop box) without user tuning: training and
# inference crop alike.
PREPARE_FACE_SETTINGS = FaceSettings(bbox_shift=0, extra_margin=0)
ID_SEPARATOR = "__"  # between speaker, source name and start frame in keys and clip ids
START_FRAME_DIGITS = 6
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
RGB_CHANNELS = 3

# Rejection reasons (Rejection.reason).
UNREADABLE = "unreadable"
NO_AUDIO = "no audio"
NO_FACE = "no face"
TOO_SMALL = "too small"
TOO_SHORT = "too short"
REJECTION_REASONS = (UNREADABLE, NO_AUDIO, NO_FACE, TOO_SMALL, TOO_SHORT)

SpeakerFrom = Literal["auto", "folder", "stem"]


# --- data passed between functions ------------------------------------------------------------------


@dataclass(frozen=True)
class SourceVideo:
    """One video found under SRC_DIR."""

    path: Path
    rel: str  # path relative to SRC_DIR, with '/' separators
    key: str  # file-system-safe and unique: names sources/<key>.json and prefixes its clip ids
    speaker: str
    size: int
    mtime_ns: int


@dataclass
class SourceRecord:
    """sources/<key>.json: a finished source, its clips and rejections."""

    source: str
    key: str
    speaker: str
    size: int
    mtime_ns: int
    clips: list[ClipMeta] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    source_seconds: float = 0.0  # duration prepared (25 fps frames read)
    seconds: float = 0.0  # wall time spent on it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceRecord:
        fields = dict(data)
        fields["clips"] = [ClipMeta(**c) for c in data.get("clips", [])]
        fields["rejections"] = [Rejection(**r) for r in data.get("rejections", [])]
        return cls(**fields)

    @property
    def frames(self) -> int:
        return sum(c.frame_count for c in self.clips)


@dataclass
class PrepareReport:
    """What a run of prepare_dataset found and did (report.json)."""

    out: Path
    sources_seen: int
    sources_skipped: int  # finished by an earlier run (resumed)
    sources_done: int  # prepared by this run
    clips: int  # clips in the dataset, from every source
    clips_written: int  # by this run
    frames: int  # frames of every clip
    rejections: list[Rejection]
    seconds: float  # wall time of this run
    source_seconds_done: float  # seconds of 25 fps video read by this run
    fps: int = 25

    @property
    def hours(self) -> float:
        return self.frames / self.fps / 3600

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["hours"] = self.hours
        return data

    def format(self) -> str:
        """A human summary: counts, hours, and rejections grouped by reason."""
        lines = [
            f"{self.out}: {self.clips} clips, {self.frames} frames ({self.hours:.3f} h at {self.fps} fps)",
            f"  sources: {self.sources_seen} seen, {self.sources_done} prepared now, "
            f"{self.sources_skipped} already prepared (skipped)",
        ]
        if self.sources_done:
            rate = self.seconds / self.source_seconds_done if self.source_seconds_done else float("nan")
            lines.append(
                f"  this run: {self.clips_written} clips written in {self.seconds:.1f} s "
                f"({rate:.2f} s per second of video)"
            )
        if not self.rejections:
            lines.append("  rejections: none")
        for reason in REJECTION_REASONS:
            found = [r for r in self.rejections if r.reason == reason]
            if found:
                lines.append(f"  rejected, {reason}: {len(found)}")
                lines.extend(f"    {_describe(r, self.fps)}" for r in found)
        return "\n".join(lines)


def _describe(rejection: Rejection, fps: int) -> str:
    where = rejection.source
    if rejection.start_frame is not None and rejection.frame_count is not None:
        start, stop = rejection.start_frame, rejection.start_frame + rejection.frame_count
        where += f" frames {start}-{stop - 1} ({start / fps:.2f}-{stop / fps:.2f} s)"
    return f"{where}: {rejection.detail}"


@dataclass(frozen=True)
class SourceTask:
    source: SourceVideo
    out: Path
    settings: DatasetSettings


@dataclass(frozen=True)
class _ClipPlan:
    start: int  # first frame on the source's 25 fps timeline
    count: int


class _Rejected(Exception):
    """A whole source cannot be used; becomes one Rejection."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- finding sources --------------------------------------------------------------------------------


def default_jobs() -> int:
    return max(1, min(MAX_DEFAULT_JOBS, os.cpu_count() or 1))


def safe_name(text: str) -> str:
    """`text` with every run of characters other than letters, digits, '.', '_', '-' replaced by '-'."""
    return UNSAFE_NAME_CHARS.sub("-", text).strip("-.") or "x"


def find_sources(src: Path, speaker_from: SpeakerFrom = "auto") -> list[SourceVideo]:
    """Video files under `src` (recursive, hidden names skipped), sorted, with unique keys."""
    src = Path(src)
    paths = sorted(
        p
        for p in src.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(src).parts)
        and p.is_file()
    )
    found: list[tuple[Path, str, str, str]] = []
    for path in paths:
        rel = path.relative_to(src)
        nested = len(rel.parts) > 1
        use_folder = speaker_from == "folder" or (speaker_from == "auto" and nested)
        speaker = rel.parts[0] if use_folder and nested else path.stem
        below = rel.relative_to(rel.parts[0]) if use_folder and nested else rel
        name = ID_SEPARATOR.join(safe_name(part) for part in below.with_suffix("").parts)
        found.append((path, rel.as_posix(), speaker, f"{safe_name(speaker)}{ID_SEPARATOR}{name}"))
    counts: dict[str, int] = {}
    for *_, key in found:
        counts[key] = counts.get(key, 0) + 1
    sources = []
    for video, rel_posix, speaker, key in found:
        unique = key
        if counts[key] > 1:  # same name with another suffix (a.mp4, a.mov): keep the suffix
            unique = f"{key}-{safe_name(video.suffix.lstrip('.'))}"
        stat = video.stat()
        sources.append(SourceVideo(video, rel_posix, unique, speaker, stat.st_size, stat.st_mtime_ns))
    return sources


def clip_id(key: str, start_frame: int) -> str:
    return f"{key}{ID_SEPARATOR}{start_frame:0{START_FRAME_DIGITS}d}"


def _clips_of(clips_dir: Path, key: str) -> list[Path]:
    """Clip folders made from the source with this key."""
    if not clips_dir.is_dir():
        return []
    pattern = re.compile(re.escape(key + ID_SEPARATOR) + rf"\d{{{START_FRAME_DIGITS},}}")
    return [p for p in clips_dir.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]


# --- the whole dataset ------------------------------------------------------------------------------


def prepare_dataset(
    src: Path,
    out: Path,
    settings: DatasetSettings = DatasetSettings(),  # noqa: B008 (frozen, safe to share)
    jobs: int | None = None,
    progress: bool = True,
    speaker_from: SpeakerFrom = "auto",
) -> PrepareReport:
    """Prepare every video under `src` into the dataset `out`, resuming a previous run; see the module doc.

    speaker_from: "folder" = first sub-folder under src, "stem" = file name, "auto" = the folder for
    nested videos, else the stem. jobs: worker processes (default min(4, CPUs); 1 = in this process).
    """
    started = time.monotonic()
    src, out = Path(src), Path(out)
    _check_paths(src, out)
    _check_settings(settings)
    sources = find_sources(src, speaker_from)
    if not sources:
        raise InputError(
            f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) under {src}",
            "give the folder that holds the talking-face videos (sub-folders are searched too)",
        )
    _start_dataset(out, settings)

    records: dict[str, SourceRecord] = {}
    todo: list[SourceVideo] = []
    for source in sources:
        record = _finished_record(out, source)
        if record is None:
            todo.append(source)
        else:
            records[source.key] = record

    done = _run_sources([SourceTask(s, out, settings) for s in todo], jobs or default_jobs(), progress)
    records.update({r.key: r for r in done})

    ordered = [records[s.key] for s in sources]
    report = PrepareReport(
        out=out,
        sources_seen=len(sources),
        sources_skipped=len(sources) - len(todo),
        sources_done=len(todo),
        clips=sum(len(r.clips) for r in ordered),
        clips_written=sum(len(r.clips) for r in done),
        frames=sum(r.frames for r in ordered),
        rejections=[rej for r in ordered for rej in r.rejections],
        seconds=time.monotonic() - started,
        source_seconds_done=sum(r.source_seconds for r in done),
        fps=settings.fps,
    )
    write_json(out / REPORT_FILE, report.to_json())
    return report


def _check_settings(settings: DatasetSettings) -> None:
    if not 0 < settings.min_clip_seconds <= settings.clip_seconds:
        raise DatasetError(
            f"clips of at most {settings.clip_seconds:g} s with at least {settings.min_clip_seconds:g} s "
            "cannot be made",
            "give --min-clip-seconds more than 0 and at most --clip-seconds",
        )


def _check_paths(src: Path, out: Path) -> None:
    if not src.is_dir():
        what = "is a file, not a folder" if src.exists() else "does not exist"
        raise InputError(f"source folder {src} {what}", "give the folder that holds the videos to prepare")
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or src_real in out_real.parents:
        raise OutputError(
            f"output folder {out} is inside the source folder {src}",
            "put the prepared dataset outside SRC_DIR (SRC_DIR is never modified)",
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file", "give a folder (new, or a dataset to resume)")


def _start_dataset(out: Path, settings: DatasetSettings) -> None:
    """Create or check dataset.json and remove what an interrupted run left half-written."""
    header = dataset_header(settings)
    path = out / DATASET_FILE
    if path.exists():
        existing = read_json(path)
        if existing != header:
            raise DatasetError(
                f"{out} was prepared with other settings or format: {_differences(existing, header)}",
                "prepare into a new OUT_DIR, or give the same settings as before to resume",
            )
    else:
        if out.exists() and any(p.name != REPORT_FILE for p in out.iterdir()):
            raise DatasetError(
                f"{out} is not empty and has no {DATASET_FILE}", "give a new or empty folder as OUT_DIR"
            )
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, header)
    for folder in (out, out / CLIPS_DIR, out / SOURCES_DIR):
        folder.mkdir(exist_ok=True)
        for leftover in folder.glob(f"{TMP_PREFIX}*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _differences(existing: dict[str, Any], wanted: dict[str, Any]) -> str:
    """'name: before -> now' for each differing header entry (settings compared one by one)."""
    old_settings, new_settings = existing.get("settings") or {}, wanted["settings"]
    changes = [
        f"{name}: {old_settings.get(name)!r} -> {new_settings.get(name)!r}"
        for name in sorted(set(old_settings) | set(new_settings))
        if old_settings.get(name) != new_settings.get(name)
    ]
    changes += [
        f"{name}: {existing.get(name)!r} -> {wanted[name]!r}"
        for name in wanted
        if name != "settings" and existing.get(name) != wanted[name]
    ]
    return ", ".join(changes)


def _record_path(out: Path, key: str) -> Path:
    return out / SOURCES_DIR / f"{key}.json"


def _finished_record(out: Path, source: SourceVideo) -> SourceRecord | None:
    """The source's record if it matches the file as it is now and all its clips are present."""
    path = _record_path(out, source.key)
    if not path.is_file():
        return None
    try:
        record = SourceRecord.from_json(read_json(path))
    except (DatasetError, TypeError, KeyError):
        return None
    if (record.source, record.size, record.mtime_ns) != (source.rel, source.size, source.mtime_ns):
        return None
    if not all((out / CLIPS_DIR / c.clip_id).is_dir() for c in record.clips):
        return None
    return record


def _run_sources(tasks: list[SourceTask], jobs: int, progress: bool) -> list[SourceRecord]:
    bar = tqdm(total=len(tasks), desc="preparing", unit="video", disable=not progress)
    records: list[SourceRecord] = []
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                records.append(prepare_source(task))
                bar.update()
            return records
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(tasks)), mp_context=context, initializer=_init_worker
        ) as pool:
            pending: set[Future[SourceRecord]] = {pool.submit(prepare_source, t) for t in tasks}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        records.append(future.result())
                        bar.update()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return records
    finally:
        bar.close()


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core


# --- one source -------------------------------------------------------------------------------------


def prepare_source(task: SourceTask) -> SourceRecord:
    """Prepare one source video: write its clips, then its record; returns the record."""
    started = time.monotonic()
    source, out, settings = task.source, task.out, task.settings
    for old in _clips_of(out / CLIPS_DIR, source.key):  # an earlier, interrupted attempt
        shutil.rmtree(old, ignore_errors=True)
    record = SourceRecord(source.rel, source.key, source.speaker, source.size, source.mtime_ns)
    try:
        _prepare_clips(source, out, settings, record)
    except _Rejected as rejected:
        record.rejections.append(Rejection(source.rel, rejected.reason, rejected.detail))
    record.seconds = time.monotonic() - started
    write_json(_record_path(out, source.key), record.to_json())
    return record


def _open_streams(path: Path) -> StreamTimes:
    try:
        times = probe_stream_times(path)
    except InputError as exc:
        raise _Rejected(UNREADABLE, exc.problem) from exc
    if times.audio_start is None:
        raise _Rejected(NO_AUDIO, "no audio track")
    return times


def _resampled(
    path: Path, times: StreamTimes, audio_samples: int, settings: DatasetSettings
) -> PresentationResampler:
    return PresentationResampler(path, times, settings.fps, settings.sample_rate, audio_samples)


def _decoded(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The frames, with a decoding failure turned into this source's rejection."""
    try:
        yield from frames
    except InputError as exc:
        raise _Rejected(UNREADABLE, exc.problem) from exc


def _prepare_clips(source: SourceVideo, out: Path, settings: DatasetSettings, record: SourceRecord) -> None:
    streams = _open_streams(source.path)
    try:
        audio = load_audio(source.path, settings.sample_rate).samples
    except InputError as exc:
        raise _Rejected(UNREADABLE, f"audio cannot be read: {exc.problem}") from exc

    resampler = _resampled(source.path, streams, len(audio), settings)
    track = track_face(
        _decoded(rgb_frames(resampler.frames())), PREPARE_FACE_SETTINGS, streams.width, streams.height
    )
    record.source_seconds = track.frame_count / settings.fps
    if track.frame_count == 0:
        raise _Rejected(UNREADABLE, "no frames could be decoded (or the audio is shorter than a frame)")
    if track.faces_found == 0:
        raise _Rejected(NO_FACE, f"no face in any of {track.frame_count} frames")

    plans = _plan_clips(source.rel, track, settings, record.rejections)
    if not plans:
        return
    second_pass = _resampled(source.path, streams, len(audio), settings)
    frames = enumerate(_decoded(rgb_frames(second_pass.frames())))
    aligned = audio[resampler.audio_skip :]
    for plan in plans:
        record.clips.append(_write_clip(source, out, settings, plan, track, frames, aligned))


def _face_runs(track: FaceTrack) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive frames with the face."""
    present = (track.boxes[:, 0] != NO_BOX).astype(np.int8)
    edges = np.diff(np.concatenate([[0], present, [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def _plan_clips(
    rel: str, track: FaceTrack, settings: DatasetSettings, rejections: list[Rejection]
) -> list[_ClipPlan]:
    """Cut each run of face frames into clips of at most clip_seconds, of nearly equal length."""
    max_frames = max(1, math.floor(settings.clip_seconds * settings.fps))
    min_frames = max(1, math.ceil(settings.min_clip_seconds * settings.fps))
    plans: list[_ClipPlan] = []
    for start, stop in _face_runs(track):
        length = stop - start
        if length < min_frames:
            rejections.append(
                Rejection(rel, TOO_SHORT, f"{length} frames with the face, under {min_frames}", start, length)
            )
            continue
        widths = track.boxes[start:stop, 2] - track.boxes[start:stop, 0]
        median = float(np.median(widths))
        if median < settings.min_face_size:
            rejections.append(
                Rejection(
                    rel,
                    TOO_SMALL,
                    f"median face width {median:.0f} px, under {settings.min_face_size}",
                    start,
                    length,
                )
            )
            continue
        pieces = math.ceil(length / max_frames)
        edges = [start + round(i * length / pieces) for i in range(pieces + 1)]
        for a, b in itertools.pairwise(edges):
            if b - a < min_frames:
                rejections.append(Rejection(rel, TOO_SHORT, f"{b - a} frames, under {min_frames}", a, b - a))
            else:
                plans.append(_ClipPlan(a, b - a))
    return plans


def crop_with_context(
    frame: np.ndarray, box: CropBox, context: float, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box plus `context` of its width/height on each side (black outside the frame), resized to
    (size, size, 3); returns (crop, origin (x, y) in frame pixels, scale (x, y) frame -> crop)."""
    margin_x, margin_y = round(box.width * context), round(box.height * context)
    x0, y0 = box.x1 - margin_x, box.y1 - margin_y
    x1, y1 = box.x2 + margin_x, box.y2 + margin_y
    height, width = frame.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        region = frame[y0:y1, x0:x1]
    else:
        region = np.zeros((y1 - y0, x1 - x0, RGB_CHANNELS), dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            region[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    shrinking = region.shape[0] > size or region.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    crop = cv2.resize(region, (size, size), interpolation=interpolation)
    origin = np.array([x0, y0], dtype=np.float64)
    scale = np.array([size / (x1 - x0), size / (y1 - y0)], dtype=np.float64)
    return crop, origin, scale


def _write_clip(
    source: SourceVideo,
    out: Path,
    settings: DatasetSettings,
    plan: _ClipPlan,
    track: FaceTrack,
    frames: Iterator[tuple[int, np.ndarray]],
    audio: np.ndarray,
) -> ClipMeta:
    """Read the plan's frames from `frames` (skipping earlier ones) and write the clip folder."""
    size = settings.crop_size
    samples_per_frame = settings.sample_rate // settings.fps
    cid = clip_id(source.key, plan.start)
    face_boxes = np.zeros((plan.count, 4), dtype=np.float32)
    landmarks = np.zeros((plan.count, track.points.shape[1], 2), dtype=np.float32)
    with clip_writer(out, cid) as folder:
        pixels = np.lib.format.open_memmap(
            folder / "frames.npy", mode="w+", dtype=np.uint8, shape=(plan.count, size, size, RGB_CHANNELS)
        )
        for index, frame in frames:
            if index < plan.start:
                continue
            row = index - plan.start
            box = track.box(index)
            if box is None:
                raise AssertionError(f"frame {index} of a planned clip has no face box")
            crop, origin, scale = crop_with_context(frame, box, settings.crop_context, size)
            pixels[row] = crop
            corners = np.array([[box.x1, box.y1], [box.x2, box.y2]], dtype=np.float64)
            face_boxes[row] = ((corners - origin) * scale).reshape(-1)
            landmarks[row] = (track.points[index] - origin) * scale
            if row == plan.count - 1:
                break
        else:
            raise _Rejected(
                UNREADABLE, f"the second decoding pass ended before frame {plan.start + plan.count}"
            )
        pixels.flush()
        del pixels
        clip_audio = np.ascontiguousarray(
            audio[plan.start * samples_per_frame : (plan.start + plan.count) * samples_per_frame],
            dtype=np.float32,
        )
        np.save(folder / "face_boxes.npy", face_boxes)
        np.save(folder / "landmarks.npy", landmarks)
        np.save(folder / "audio.npy", clip_audio)
        np.save(folder / "mel.npy", syncnet_mel(clip_audio))
        widths = (
            track.boxes[plan.start : plan.start + plan.count, 2]
            - track.boxes[plan.start : plan.start + plan.count, 0]
        )
        meta = ClipMeta(
            clip_id=cid,
            speaker=source.speaker,
            source=source.rel,
            start_frame=plan.start,
            frame_count=plan.count,
            face_size=float(np.median(widths)),
        )
        write_clip_meta(folder, meta)
    return meta


__all__ = [
    "NO_AUDIO",
    "NO_FACE",
    "REJECTION_REASONS",
    "TOO_SHORT",
    "TOO_SMALL",
    "UNREADABLE",
    "VIDEO_SUFFIXES",
    "PrepareReport",
    "SourceRecord",
    "SourceTask",
    "SourceVideo",
    "crop_with_context",
    "default_jobs",
    "find_sources",
    "prepare_dataset",
    "prepare_source",
]
