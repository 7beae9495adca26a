"""Follow one face through a video: per-frame landmarks and steadied crop boxes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.config import FaceSettings
from lipsync.errors import InputError
from lipsync.face.crop import CropBox, crop_box_from_landmarks
from lipsync.face.landmarks import FACE_OVAL_FROM_MESH, FaceLandmarks, FaceMeshDetector

POINTS = 68
OVAL_POINTS = len(FACE_OVAL_FROM_MESH)
NO_BOX = -1
# A face in the next frame is the followed face only if its landmark bounds overlap the last known
# ones at least this much; otherwise that frame has no face (the face left, or only others remain).
MIN_TRACK_IOU = 0.3
# After this many frames without the followed face (about a second), it is chosen again by the same
# size rule, so a speaker who leaves and comes back elsewhere is dubbed again.
REACQUIRE_AFTER_FRAMES = 25
INITIAL_FRAMES = 256  # per-frame arrays start this long and double when full


@dataclass
class FaceTrack:
    """Per-frame results for one face; frames without the face keep their place (-1 boxes, NaN points)."""

    boxes: np.ndarray  # (N, 4) int32 x1, y1, x2, y2
    points: np.ndarray  # (N, 68, 2) float32
    face_ovals: np.ndarray  # (N, 36, 2) float32

    @property
    def frame_count(self) -> int:
        return len(self.boxes)

    @property
    def faces_found(self) -> int:
        return int(np.count_nonzero(self.boxes[:, 0] != NO_BOX))

    def has_face(self, index: int) -> bool:
        return bool(self.boxes[index, 0] != NO_BOX)

    def box(self, index: int) -> CropBox | None:
        return box_at(self.boxes, index)

    def landmarks(self, index: int) -> FaceLandmarks | None:
        if not self.has_face(index):
            return None
        return FaceLandmarks(points=self.points[index].copy(), face_oval=self.face_ovals[index].copy())

    def head(self, count: int) -> FaceTrack:
        """The track of the first `count` frames."""
        return FaceTrack(self.boxes[:count], self.points[:count], self.face_ovals[:count])

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, boxes=self.boxes, points=self.points, face_ovals=self.face_ovals)

    @classmethod
    def load(cls, path: Path) -> FaceTrack:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                boxes=data["boxes"].astype(np.int32),
                points=data["points"].astype(np.float32),
                face_ovals=data["face_ovals"].astype(np.float32),
            )


BoxRule = Callable[[np.ndarray, int, int, FaceSettings], "CropBox | None"]


def landmark_box(
    points: np.ndarray, frame_width: int, frame_height: int, settings: FaceSettings
) -> CropBox | None:
    """MuseTalk's crop box for one frame's 68 landmarks, with the user's shift and margin."""
    return crop_box_from_landmarks(
        points, frame_width, frame_height, settings.bbox_shift, settings.extra_margin
    )


def box_at(boxes: np.ndarray, index: int) -> CropBox | None:
    """Row `index` of an (N, 4) box array as a CropBox, or None where it holds no face (NO_BOX)."""
    if boxes[index, 0] == NO_BOX:
        return None
    x1, y1, x2, y2 = (int(v) for v in boxes[index])
    return CropBox(x1, y1, x2, y2)


def track_face(
    frames: Iterable[np.ndarray],
    settings: FaceSettings,
    frame_width: int,
    frame_height: int,
    detector: FaceMeshDetector | None = None,
    on_frame: Callable[[int], None] | None = None,
    box_rule: BoxRule | None = None,
) -> FaceTrack:
    """Find the chosen face (settings.face_index, 0 = largest in the first frame with faces) and follow it.

    `box_rule` turns a frame's landmarks into its crop box (a generator's own rule); MuseTalk's by default.

    Raises InputError if the first frame with faces has too few faces for face_index. A video with no
    face at all gives a track with faces_found == 0; the caller decides what to do.
    """
    rule = box_rule or landmark_box
    own_detector = detector is None
    det = detector if detector is not None else FaceMeshDetector(max_faces=settings.max_faces)
    raw_boxes = np.full((INITIAL_FRAMES, 4), np.nan)
    points = np.full((INITIAL_FRAMES, POINTS, 2), np.nan, dtype=np.float32)
    ovals = np.full((INITIAL_FRAMES, OVAL_POINTS, 2), np.nan, dtype=np.float32)
    last: FaceLandmarks | None = None
    last_seen = -1
    count = 0
    outside = 0  # frames whose followed face's crop box fell outside the frame
    try:
        for index, frame in enumerate(frames):
            if index == len(raw_boxes):
                raw_boxes, points, ovals = (_grow(a) for a in (raw_boxes, points, ovals))
            faces = det.detect(frame)
            if last is None:
                face = _choose_first(faces, settings.face_index)
            else:
                face = _follow(faces, last)
                if face is None and index - last_seen > REACQUIRE_AFTER_FRAMES:
                    face = _by_size(faces, settings.face_index)
            if face is not None:
                box = rule(face.points, frame_width, frame_height, settings)
                if box is None:
                    outside += 1
                else:
                    last, last_seen = face, index
                    raw_boxes[index] = (box.x1, box.y1, box.x2, box.y2)
                    points[index] = face.points
                    ovals[index] = face.face_oval
            count = index + 1
            if on_frame is not None:
                on_frame(index)
    finally:
        if own_detector:
            det.close()
    if outside and np.isnan(raw_boxes[:count, 0]).all():
        raise InputError(
            f"a face was found in {outside} frames, but with `bbox_shift` {settings.bbox_shift} and "
            f"`extra_margin` {settings.extra_margin} its crop box lies outside the frame",
            "use a smaller `bbox_shift` (or `extra_margin`); 0 keeps the box on the face",
        )
    boxes = smooth_boxes(raw_boxes[:count], settings.smoothing_window)
    return FaceTrack(boxes=boxes, points=points[:count].copy(), face_ovals=ovals[:count].copy())


def smooth_boxes(raw: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of (N, 4) float boxes (NaN rows = no face) within each run of face frames,
    never across a gap; the window shrinks at run ends. Returns rounded int32 boxes, -1 rows for gaps."""
    out = np.full(raw.shape, NO_BOX, dtype=np.int32)
    present = ~np.isnan(raw[:, 0])
    half = max(window, 1) // 2
    for start, stop in _runs(present):
        run = raw[start:stop]
        cumulative = np.vstack([np.zeros((1, 4)), np.cumsum(run, axis=0)])
        lo = np.clip(np.arange(len(run)) - half, 0, len(run))
        hi = np.clip(np.arange(len(run)) + half + 1, 0, len(run))
        mean = (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]
        out[start:stop] = np.rint(mean).astype(np.int32)
    return out


def _runs(present: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True values."""
    edges = np.diff(np.concatenate([[0], present.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _choose_first(faces: list[FaceLandmarks], face_index: int) -> FaceLandmarks | None:
    if not faces:
        return None
    if face_index >= len(faces):
        if len(faces) == 1:
            found, fix = "1 face", "leave `face_index` at 0, the default: there is only one face to pick"
        else:
            found = f"{len(faces)} faces"
            fix = f"pick a face from 0 (the largest) to {len(faces) - 1} (the smallest) with `face_index`"
        raise InputError(
            f"face {face_index} was asked for, but the first frame with faces has only {found}", fix
        )
    return _by_size(faces, face_index)


def _by_size(faces: list[FaceLandmarks], face_index: int) -> FaceLandmarks | None:
    """The face_index-th largest face, or None if there are not that many."""
    ranked = sorted(faces, key=lambda f: f.area, reverse=True)
    return ranked[face_index] if face_index < len(ranked) else None


def _follow(faces: list[FaceLandmarks], last: FaceLandmarks) -> FaceLandmarks | None:
    if not faces:
        return None
    overlaps = [_iou(face.bounds, last.bounds) for face in faces]
    best = int(np.argmax(overlaps))
    return faces[best] if overlaps[best] >= MIN_TRACK_IOU else None


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _grow(array: np.ndarray) -> np.ndarray:
    return np.concatenate([array, np.full_like(array, np.nan)])
