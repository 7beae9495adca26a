"""How stable a sync expert's true-pair similarity is: the robustness analysis of the stabilized-sync
paper (its Fig. 6, App. A), as `lipsync eval-sync-robustness`.

For every expert (the stabilized-sync family's AVSyncNet, or the project's Wav2Lip-style SyncNet) and
every window of F consecutive frames of the chosen clips, the similarity the expert gives the faces and
their own audio (clamp(cos, 0, 1) of the two embeddings: its sync probability, AVSIM for AVSyncNet) is
measured

* with the audio window moved by k frames against the faces (`shift`: the mel window starts at frame
  t + k; positive k: the audio comes from later than the faces);
* with the faces scaled, rotated or translated about the crop's centre (`scale`, `rotation` in degrees,
  positive counter-clockwise; `translation_x` / `translation_y` in percent of the crop, positive right /
  down), applied with OpenCV's warpAffine (bilinear, border replicate) to the face crops exactly as the
  expert's training cuts them (the Wav2Lip-style SyncNet: the 256 px face box; AVSyncNet: the family
  crop at its face size), before the expert's own resize and lower half.

Each curve point is the mean, spread (population standard deviation) and count of the per-window
similarities. Every window is scored at every value: windows start where every shifted audio window
still lies inside the clip, evenly spread over each clip. The identity values (shift 0, scale 1, angle 0,
offset 0) are the expert's plain similarity on the untransformed windows.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lipsync import __version__
from lipsync.errors import InputError, WeightsError
from lipsync.eval.networks.weights import is_untrained_file
from lipsync.eval.sync_robustness_settings import (
    AXIS_LABELS,
    DEFAULT_BATCH,
    DEFAULT_CLIPS,
    DEFAULT_VAL_FRACTION,
    DEFAULT_WINDOWS_PER_CLIP,
    GEOMETRIC,
    IDENTITY,
    TRANSFORMS,
    Ranges,
    Transform,
)
from lipsync.io.files import atomic_path
from lipsync.models.stabilized_sync.avsyncnet import AVSyncNet, prepare_lips
from lipsync.models.syncnet import SyncNet, SyncNetSpec, load_syncnet, prepare_faces, sync_probability
from lipsync.train.config import DataConfig
from lipsync.train.data.format import DatasetError, PreparedClip, list_clips, read_clip
from lipsync.train.data.mel import mel_window
from lipsync.train.sampling import crop_face, crops_to_images
from lipsync.train.stabilized_avsync import AVSyncSpec, load_avsyncnet
from lipsync.train.stabilized_data import family_crops
from lipsync.train.unet_data import read_meta, split_clips

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
JSON_FILE = "robustness.json"
HTML_FILE = "robustness.html"
AVSYNC_SUFFIX = ".safetensors"  # AVSyncNet files (`lipsync train syncnet`, kind avsyncnet)


# --- experts -----------------------------------------------------------------------------------------


class SyncExpert(ABC):
    """A loaded sync expert: the crops its training cuts, and its two unit-norm embeddings."""

    kind: str
    frames: int

    def __init__(self, name: str, checkpoint: Path, device: torch.device) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.device = device
        self.untrained = is_untrained_file(checkpoint)
        self.note = ""

    @abstractmethod
    def crops(self, clip: PreparedClip, frames: Sequence[int]) -> dict[int, np.ndarray]:
        """Frame index → (S, S, 3) uint8 RGB face crop, as the expert's training cuts it."""

    @abstractmethod
    def embed_faces(self, faces: Tensor) -> Tensor:
        """(B, F, 3, S, S) faces in [−1, 1] → (B, D) unit-norm embeddings."""

    @abstractmethod
    def embed_audio(self, mels: Tensor) -> Tensor:
        """(B, 1, 80, T) mel windows → (B, D) unit-norm embeddings."""

    def mel_window(self, mel: np.ndarray, start: int) -> np.ndarray:
        """(1, 80, T): the mel window of frames start .. start + F − 1 (the syncnet trainer's windows)."""
        return mel_window(mel, start, self.frames)[None]


class SyncNetExpert(SyncExpert):
    """The Wav2Lip-style SyncNet (or LatentSync's stable one) of `lipsync train syncnet`."""

    def __init__(self, name: str, checkpoint: Path, device: torch.device) -> None:
        super().__init__(name, checkpoint, device)
        model, spec = load_syncnet(checkpoint, device=device)
        self.model: SyncNet = model
        self.spec: SyncNetSpec = spec
        self.kind = spec.kind
        self.frames = spec.frames
        if spec.width_divisor > 1:
            self.note = f"narrowed test variant (widths / {spec.width_divisor})"

    def crops(self, clip: PreparedClip, frames: Sequence[int]) -> dict[int, np.ndarray]:
        return {i: crop_face(clip.frames[i], clip.face_boxes[i]) for i in frames}

    def embed_faces(self, faces: Tensor) -> Tensor:
        return self.model.embed_faces(prepare_faces(faces.to(self.device), self.spec))

    def embed_audio(self, mels: Tensor) -> Tensor:
        return self.model.embed_audio(mels.to(self.device))


class AVSyncNetExpert(SyncExpert):
    """The stabilized-sync family's AVSyncNet (`lipsync train syncnet`, kind avsyncnet)."""

    kind = "avsyncnet"

    def __init__(self, name: str, checkpoint: Path, device: torch.device) -> None:
        super().__init__(name, checkpoint, device)
        model, spec = load_avsyncnet(checkpoint, device=device)
        self.model: AVSyncNet = model
        self.spec: AVSyncSpec = spec
        self.frames = spec.frames
        if spec.tiny:
            self.note = "tiny test variant (four-conv lip encoder)"

    def crops(self, clip: PreparedClip, frames: Sequence[int]) -> dict[int, np.ndarray]:
        every = family_crops(clip, self.spec.face_size)
        return {i: every[i] for i in frames}

    def embed_faces(self, faces: Tensor) -> Tensor:
        return F.normalize(self.model.encode_faces(prepare_lips(faces.to(self.device))), p=2, dim=1)

    def embed_audio(self, mels: Tensor) -> Tensor:
        return F.normalize(self.model.encode_audio(mels.to(self.device)), p=2, dim=1)


def parse_expert(text: str) -> tuple[str, Path]:
    """NAME=CHECKPOINT → (name, path); InputError when malformed."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise InputError(
            f"--expert {text!r} is not NAME=CHECKPOINT", "e.g. --expert avsync=runs/x.safetensors"
        )
    return name.strip(), Path(path.strip())


def load_expert(name: str, checkpoint: Path, device: torch.device | str = "cpu") -> SyncExpert:
    """An AVSyncNet (a .safetensors file) or a SyncNet (a torch checkpoint); WeightsError naming the
    expert when the file is missing or is not one of them."""
    checkpoint = Path(checkpoint)
    device = torch.device(device)
    if not checkpoint.is_file():
        raise WeightsError(
            f"expert {name}: checkpoint {checkpoint} does not exist",
            "give a file written by `lipsync train syncnet` (syncnet-*.pt, or avsyncnet-*.safetensors)",
        )
    from safetensors import SafetensorError

    try:
        if checkpoint.suffix == AVSYNC_SUFFIX:
            return AVSyncNetExpert(name, checkpoint, device)
        return SyncNetExpert(name, checkpoint, device)
    except WeightsError as exc:
        raise WeightsError(f"expert {name}: {exc.problem}", exc.fix) from exc
    except SafetensorError as exc:  # a file that is not safetensors at all
        raise WeightsError(
            f"expert {name}: cannot read {checkpoint} as safetensors ({exc})",
            "give an avsyncnet-*.safetensors file written by a `kind: avsyncnet` SyncNet run",
        ) from exc


# --- data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipChoice:
    """Which clips of the prepared data folder to use."""

    all_clips: bool = False  # every clip, not only the held-out ones
    val_clips: tuple[str, ...] = ()  # the held-out split, as the trainers' data section defines it
    val_speakers: tuple[str, ...] = ()
    val_fraction: float = DEFAULT_VAL_FRACTION
    max_clips: int | None = DEFAULT_CLIPS
    windows_per_clip: int = DEFAULT_WINDOWS_PER_CLIP

    @property
    def split(self) -> str:
        if self.all_clips:
            return "all clips"
        parts = [f"val_fraction {self.val_fraction:g}"]
        parts += [f"val_clips {', '.join(self.val_clips)}"] if self.val_clips else []
        parts += [f"val_speakers {', '.join(self.val_speakers)}"] if self.val_speakers else []
        return "held-out clips (" + "; ".join(parts) + ")"


@dataclass(frozen=True)
class ClipWindows:
    folder: Path
    clip_id: str
    speaker: str
    starts: tuple[int, ...]  # first face frame of each window


def select_clips(data: Path, choice: ClipChoice) -> list[Path]:
    """The clip folders to use: the held-out split, or every clip; InputError for a missing or empty
    folder, a folder that is not a prepared dataset, or a split that holds out nothing."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"data folder {data} does not exist", "give a `lipsync data prepare` output folder")
    if not any(data.iterdir()):
        raise InputError(f"data folder {data} is empty", "run `lipsync data prepare SRC_DIR DATA` first")
    try:
        every = list_clips(data)
    except DatasetError as exc:
        raise InputError(exc.problem, exc.fix) from exc
    if not every:
        raise InputError(f"{data} holds no prepared clips", "run `lipsync data prepare SRC_DIR DATA` first")
    if choice.all_clips:
        return every
    split = DataConfig(
        root=data,
        val_clips=choice.val_clips,
        val_speakers=choice.val_speakers,
        val_fraction=choice.val_fraction,
    )
    folders = split_clips(data, split)[1]
    if not folders:
        raise InputError(
            f"none of the {len(every)} clips of {data} is held out ({choice.split})",
            "give the split the experts were trained with (--val-fraction, --val-clips, --val-speakers), "
            "or use --all",
        )
    return folders


def choose_windows(
    folders: Sequence[Path], choice: ClipChoice, frames: int, shifts: Sequence[float]
) -> list[ClipWindows]:
    """The clips and their window starts: windows of `frames` whose audio stays inside the clip at every
    shift; InputError when every clip is too short."""
    before = max(0, -int(min(shifts)))
    after = max(0, int(max(shifts)))
    needed = frames + before + after
    metas = [(folder, read_meta(folder)) for folder in folders]
    usable = [(folder, meta) for folder, meta in metas if meta.frame_count >= needed]
    if len(usable) < len(metas):
        log.warning(
            "%d clip(s) shorter than %d frames (a %d-frame window with audio shifts %+d..%+d) are skipped",
            len(metas) - len(usable),
            needed,
            frames,
            -before,
            after,
        )
    if not usable:
        longest = max(meta.frame_count for _, meta in metas)
        raise InputError(
            f"every clip is too short: a {frames}-frame window with audio shifts from {-before:+d} to "
            f"{after:+d} needs {needed} frames, the longest clip has {longest}",
            "prepare longer clips, or give a narrower --shifts range",
        )
    # Round-robin over the speakers, so that --clips N does not take N clips of one speaker.
    by_speaker: dict[str, list[tuple[Path, Any]]] = {}
    for folder, meta in usable:
        by_speaker.setdefault(meta.speaker, []).append((folder, meta))
    order = sorted(
        usable, key=lambda item: (by_speaker[item[1].speaker].index(item), item[1].speaker, item[1].clip_id)
    )
    if choice.max_clips is not None:
        order = order[: choice.max_clips]
    chosen = []
    for folder, meta in order:
        low, high = before, meta.frame_count - frames - after
        count = min(choice.windows_per_clip, high - low + 1)
        starts = np.unique(np.linspace(low, high, count).round().astype(int))
        chosen.append(ClipWindows(folder, meta.clip_id, meta.speaker, tuple(int(s) for s in starts)))
    return chosen


# --- transforms --------------------------------------------------------------------------------------


def affine_matrix(transform: Transform, value: float, width: int, height: int) -> np.ndarray:
    """The (2, 3) warpAffine matrix of a geometric transform about the crop's centre."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    if transform == "scale":
        return cv2.getRotationMatrix2D(centre, 0.0, value)
    if transform == "rotation":
        return cv2.getRotationMatrix2D(centre, value, 1.0)
    if transform == "translation_x":
        return np.array([[1.0, 0.0, value / 100.0 * width], [0.0, 1.0, 0.0]])
    if transform == "translation_y":
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, value / 100.0 * height]])
    raise ValueError(f"{transform!r} is not a geometric transform")


def warp_crop(crop: np.ndarray, transform: Transform, value: float) -> np.ndarray:
    """The crop transformed (bilinear, border replicate); the identity value returns it unchanged."""
    if value == IDENTITY[transform]:
        return crop
    height, width = crop.shape[:2]
    return cv2.warpAffine(
        np.ascontiguousarray(crop),
        affine_matrix(transform, value, width, height),
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


# --- the measurement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    value: float
    mean: float
    std: float  # population standard deviation of the per-window similarities
    count: int


@dataclass
class ExpertResult:
    name: str
    checkpoint: str
    kind: str
    frames: int
    untrained: bool
    note: str
    curves: dict[str, list[Point]] = field(default_factory=dict)

    def point(self, transform: Transform, value: float) -> Point:
        return next(p for p in self.curves[transform] if p.value == value)


@dataclass
class RobustnessReport:
    data: str
    split: str
    clips: list[dict[str, Any]]  # {"clip_id", "speaker", "starts"}: the windows' first face frames
    windows: int  # windows scored per value
    transforms: dict[str, dict[str, Any]]  # name → {"label", "identity", "values"}
    experts: list[ExpertResult]
    lipsync_version: str = __version__
    created: str = ""
    seconds: float = 0.0
    format: int = REPORT_FORMAT

    @property
    def untrained(self) -> bool:
        return any(e.untrained for e in self.experts)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Per expert and transform: the similarity at the identity value and the range of the means."""
        lines = []
        for expert in self.experts:
            label = " (UNTRAINED)" if expert.untrained else ""
            lines.append(f"{expert.name}{label}: {expert.kind}, {expert.checkpoint}")
            for transform in TRANSFORMS:
                curve = expert.curves[transform]
                plain = expert.point(transform, IDENTITY[transform])
                low = min(curve, key=lambda p: p.mean)
                lines.append(
                    f"  {transform:<14} at {plain.value:g}: {plain.mean:.3f} ± {plain.std:.3f}; "
                    f"lowest {low.mean:.3f} at {low.value:g}"
                )
        return "\n".join(lines)


@dataclass(frozen=True)
class RobustnessOptions:
    ranges: Ranges = field(default_factory=Ranges)
    clips: ClipChoice = field(default_factory=ClipChoice)
    batch_size: int = DEFAULT_BATCH
    progress: bool = True


def _batched(function: Any, inputs: Tensor, batch: int) -> Tensor:
    return torch.cat([function(inputs[i : i + batch]).float().cpu() for i in range(0, len(inputs), batch)])


def _faces(crops: dict[int, np.ndarray], starts: Sequence[int], frames: int) -> Tensor:
    """(W, F, 3, S, S) in [−1, 1]: the windows' crops."""
    windows = np.stack([np.stack([crops[s + j] for j in range(frames)]) for s in starts])
    count = len(starts)
    return crops_to_images(windows.reshape(count * frames, *windows.shape[2:])).reshape(
        count, frames, 3, *windows.shape[2:4]
    )


def _score_clip(
    expert: SyncExpert, clip: PreparedClip, starts: Sequence[int], options: RobustnessOptions, bar: Any
) -> dict[Transform, dict[float, list[float]]]:
    """Per transform and value, the similarity of each window of one clip."""
    frames, batch, ranges = expert.frames, options.batch_size, options.ranges
    needed = sorted({s + j for s in starts for j in range(frames)})
    crops = expert.crops(clip, needed)
    mel = np.asarray(clip.mel, dtype=np.float32)

    shifts = ranges.values("shift")
    # Every shift's audio windows in one go (a mel window is small beside a face window).
    mels = np.stack([expert.mel_window(mel, s + round(shift)) for shift in shifts for s in starts])
    sounds = _batched(expert.embed_audio, torch.from_numpy(mels), batch * len(shifts)).split(len(starts))

    scores: dict[Transform, dict[float, list[float]]] = {t: {} for t in TRANSFORMS}
    plain_vision = _batched(expert.embed_faces, _faces(crops, starts, frames), batch)
    plain_audio = sounds[shifts.index(IDENTITY["shift"])]
    for shift, sound in zip(shifts, sounds, strict=True):
        scores["shift"][shift] = sync_probability(plain_vision, sound).tolist()
        bar.update(1)
    for transform in GEOMETRIC:
        for value in ranges.values(transform):
            if value == IDENTITY[transform]:
                vision = plain_vision
            else:
                warped = {i: warp_crop(crop, transform, value) for i, crop in crops.items()}
                vision = _batched(expert.embed_faces, _faces(warped, starts, frames), batch)
            scores[transform][value] = sync_probability(vision, plain_audio).tolist()
            bar.update(1)
    return scores


def measure(
    data: Path, experts: Sequence[SyncExpert], options: RobustnessOptions = RobustnessOptions()
) -> RobustnessReport:
    """Score every expert on the same windows of the same clips under every transform value."""
    from tqdm.auto import tqdm

    if not experts:
        raise InputError("no expert to evaluate", "give at least one --expert NAME=CHECKPOINT")
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise InputError(f"expert names repeat: {', '.join(names)}", "give every --expert its own NAME")
    options.ranges.validate()
    started = time.perf_counter()
    shifts = options.ranges.values("shift")
    folders = select_clips(data, options.clips)
    chosen = choose_windows(folders, options.clips, max(e.frames for e in experts), shifts)
    steps = sum(len(options.ranges.values(t)) for t in TRANSFORMS)
    results = []
    with tqdm(
        total=len(experts) * len(chosen) * steps,
        desc="sync robustness",
        unit="value",
        disable=not options.progress,
    ) as bar:
        for expert in experts:
            collected: dict[Transform, dict[float, list[float]]] = {t: {} for t in TRANSFORMS}
            for item in chosen:
                bar.set_postfix(expert=expert.name, clip=item.clip_id)
                clip = read_clip(item.folder, with_whisper=False)
                with torch.inference_mode():
                    scores = _score_clip(expert, clip, item.starts, options, bar)
                for transform, by_value in scores.items():
                    for value, values in by_value.items():
                        collected[transform].setdefault(value, []).extend(values)
            curves: dict[str, list[Point]] = {
                transform: [_point(value, values) for value, values in sorted(collected[transform].items())]
                for transform in TRANSFORMS
            }
            results.append(
                ExpertResult(
                    expert.name,
                    str(expert.checkpoint),
                    expert.kind,
                    expert.frames,
                    expert.untrained,
                    expert.note,
                    curves,
                )
            )
    return RobustnessReport(
        data=str(data),
        split=options.clips.split,
        clips=[{"clip_id": c.clip_id, "speaker": c.speaker, "starts": list(c.starts)} for c in chosen],
        windows=sum(len(item.starts) for item in chosen),
        transforms={
            t: {"label": AXIS_LABELS[t], "identity": IDENTITY[t], "values": list(options.ranges.values(t))}
            for t in TRANSFORMS
        },
        experts=results,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        seconds=time.perf_counter() - started,
    )


def _point(value: float, values: list[float]) -> Point:
    array = np.asarray(values, dtype=np.float64)
    return Point(float(value), float(array.mean()), float(array.std()), len(array))


def write_report(report: RobustnessReport, out: Path) -> tuple[Path, Path]:
    """OUT/robustness.json and OUT/robustness.html, each written atomically."""
    from lipsync.eval.sync_robustness_html import render_robustness_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / JSON_FILE, out / HTML_FILE
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_robustness_html(report), encoding="utf-8")
    return json_path, html_path


def sync_robustness(
    data: Path,
    experts: Sequence[tuple[str, Path]],
    out: Path,
    options: RobustnessOptions = RobustnessOptions(),
    device: torch.device | str = "cpu",
) -> RobustnessReport:
    """Load the experts, measure them on DATA and write OUT/robustness.json and OUT/robustness.html."""
    names = [name for name, _ in experts]
    if len(set(names)) != len(names):
        raise InputError(f"expert names repeat: {', '.join(names)}", "give every --expert its own NAME")
    select_clips(data, options.clips)  # a bad data folder fails before the experts load
    loaded = [load_expert(name, path, device) for name, path in experts]
    report = measure(data, loaded, options)
    write_report(report, out)
    return report
