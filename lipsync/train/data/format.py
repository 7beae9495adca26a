"""The prepared-dataset format: what `lipsync data prepare` writes and training reads.

OUT/
  dataset.json              format name and version, and the settings every clip was made with
  report.json               the last run: sources seen, clips written, every rejected clip and why
  sources/<key>.json        one per finished source video (lets an interrupted run resume)
  clips/<clip_id>/
    clip.json               ClipMeta
    frames.npy              (N, S, S, 3) uint8 RGB: the face box plus context on every side, S = crop_size
    face_boxes.npy          (N, 4) float32 x1, y1, x2, y2 of the face box inside frames.npy pixels
    landmarks.npy           (N, 68, 2) float32 iBUG-68 points in frames.npy pixels
    audio.npy               (N * 640,) float32 16 kHz mono speech of exactly these frames
    mel.npy                 (80, M) float32 SyncNet log-mel (Wav2Lip recipe), 80 columns per second
    whisper.npy             optional (W, 5, 384) float32 whisper-tiny hidden states of audio.npy

All frames are at 25 fps (video of any rate is resampled). The face box is MuseTalk's inference crop box
(bbox_shift 0, no extra margin), so training and inference crop faces the same way; the context around it
lets training add the stage-2 margin under the chin without going back to the video. Arrays are plain .npy
(no pickles) and are memory-mapped when read. A clip folder appears only when complete (written under a
temporary name, then renamed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipsync.config import AUDIO_SAMPLE_RATE, FACE_SIZE, TRAINING_FPS
from lipsync.errors import LipsyncError
from lipsync.io.files import TEMP_PREFIX, atomic_path

if TYPE_CHECKING:
    import numpy as np

DATASET_FORMAT = "lipsync-dataset"
DATASET_FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
REPORT_FILE = "report.json"
CLIP_FILE = "clip.json"
CLIPS_DIR = "clips"
SOURCES_DIR = "sources"
WHISPER_FILE = "whisper.npy"
CLIP_ARRAYS = ("frames", "face_boxes", "landmarks", "audio", "mel")
SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // TRAINING_FPS  # 640
# Context around the face box in the stored crop, as a fraction of the box on each side. 1/8 makes the box
# exactly FACE_SIZE (256) px of a 320 px crop, and leaves 32 px below the chin for the dynamic margin
# (stage 2 draws at most 20).
CROP_CONTEXT = 0.125
CROP_SIZE = round(FACE_SIZE * (1 + 2 * CROP_CONTEXT))  # 320
TMP_PREFIX = TEMP_PREFIX  # atomic_path's temporaries, so leftovers of both are recognised


class DatasetError(LipsyncError):
    """A prepared dataset that is missing, incomplete or of another format version."""


@dataclass(frozen=True)
class DatasetSettings:
    """How every clip of a dataset was made; a resumed run must use the same."""

    fps: int = TRAINING_FPS
    sample_rate: int = AUDIO_SAMPLE_RATE
    crop_size: int = CROP_SIZE
    crop_context: float = CROP_CONTEXT
    clip_seconds: float = 30.0  # the reference cuts 30 s clips; one whisper segment each
    min_clip_seconds: float = 1.0
    min_face_size: int = 64  # px, median face-box width in the source video


@dataclass(frozen=True)
class ClipMeta:
    clip_id: str
    speaker: str  # identity label: the sub-folder under SRC_DIR, or the file stem
    source: str  # path of the source video relative to SRC_DIR
    start_frame: int  # first frame, on the source's 25 fps timeline
    frame_count: int
    face_size: float  # median face-box width in source pixels
    whisper_weights: str | None = None  # sha256 of the whisper file whisper.npy came from


@dataclass(frozen=True)
class Rejection:
    source: str
    reason: str  # "unreadable", "no audio", "no face", "too small", "too short"
    detail: str
    start_frame: int | None = None
    frame_count: int | None = None


@dataclass
class PreparedClip:
    """One clip's arrays, memory-mapped."""

    root: Path
    meta: ClipMeta
    frames: np.ndarray
    face_boxes: np.ndarray
    landmarks: np.ndarray
    audio: np.ndarray
    mel: np.ndarray
    whisper: np.ndarray | None = field(default=None)

    @property
    def frame_count(self) -> int:
        return self.meta.frame_count


def read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}", "prepare the dataset again") from exc
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def dataset_header(settings: DatasetSettings) -> dict[str, Any]:
    return {"format": DATASET_FORMAT, "version": DATASET_FORMAT_VERSION, "settings": asdict(settings)}


def read_settings(root: Path) -> DatasetSettings:
    path = Path(root) / DATASET_FILE
    if not path.is_file():
        raise DatasetError(
            f"{root} is not a prepared dataset (no {DATASET_FILE})",
            "run `lipsync data prepare SRC_DIR OUT_DIR` first and give OUT_DIR",
        )
    header = read_json(path)
    if header.get("format") != DATASET_FORMAT or header.get("version") != DATASET_FORMAT_VERSION:
        raise DatasetError(
            f"{path} is format {header.get('format')!r} version {header.get('version')!r}, "
            f"not {DATASET_FORMAT!r} version {DATASET_FORMAT_VERSION}",
            "prepare the dataset again with this version of lipsync",
        )
    return DatasetSettings(**header["settings"])


@contextmanager
def clip_writer(root: Path, clip_id: str) -> Iterator[Path]:
    """A temporary folder to fill; renamed to clips/<clip_id> only if the block completes."""
    clips = Path(root) / CLIPS_DIR
    clips.mkdir(parents=True, exist_ok=True)
    with atomic_path(clips / clip_id) as tmp:
        tmp.mkdir()
        yield tmp


def write_clip_meta(folder: Path, meta: ClipMeta) -> None:
    write_json(folder / CLIP_FILE, asdict(meta))


def read_clip(folder: Path, with_whisper: bool = True) -> PreparedClip:
    import numpy as np  # here, not at the top: `lipsync data --help` reads DatasetSettings without numpy

    folder = Path(folder)
    meta = ClipMeta(**read_json(folder / CLIP_FILE))
    arrays: dict[str, np.ndarray] = {}
    for name in CLIP_ARRAYS:
        path = folder / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {path}: {exc}", "prepare the dataset again") from exc
    whisper_path = folder / WHISPER_FILE
    whisper = np.load(whisper_path, mmap_mode="r") if with_whisper and whisper_path.is_file() else None
    clip = PreparedClip(folder, meta, whisper=whisper, **arrays)
    if len(clip.frames) != meta.frame_count or len(clip.landmarks) != meta.frame_count:
        raise DatasetError(
            f"{folder} holds {len(clip.frames)} frames, its clip.json says {meta.frame_count}",
            "prepare the dataset again",
        )
    return clip


def list_clips(root: Path) -> list[Path]:
    """Folders of the finished clips, sorted by clip id; checks the dataset's format first."""
    read_settings(root)
    clips = Path(root) / CLIPS_DIR
    if not clips.is_dir():
        return []
    return sorted(p for p in clips.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))
