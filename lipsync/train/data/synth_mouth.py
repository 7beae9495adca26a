"""The synthetic talking face: a still with a closed mouth, opened frame by frame by a fixed function of
the frame's own audio.

The opening a(k) of frame k is the loudness of its 40 ms of 16 kHz audio (samples 640k .. 640k+639),
mapped linearly from OPENING_FLOOR_DB (closed) to OPENING_FLOOR_DB + OPENING_RANGE_DB (fully open) and
smoothed 1-2-1 over neighbouring frames. The mouth opens by moving the lower lip and jaw down by
a(k) * MAX_DROP * mouth width: a lens between the inner mouth corners that widens into a Gaussian jaw
profile below the lip and fades out below the jaw line (cv2.remap); the gap shows a dark interior under a
band of upper teeth. The upper face does not move; the whole head jitters a little, slowly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import InputError
from lipsync.face.landmarks import FaceLandmarks, FaceMeshDetector
from lipsync.io.video import FrameReader, probe_video

# The opening: dB RMS (re full scale) of a frame's samples, from closed to fully open.
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
OPENING_FLOOR_DB = -42.0  # this quiet or quieter: closed (0)
OPENING_RANGE_DB = 30.0  # this many dB above the floor: fully open (1)
SMOOTHING = np.array([0.25, 0.5, 0.25])  # 1-2-1 over frames k-1, k, k+1
SILENCE_RMS = 1e-10  # RMS of an all-zero frame, kept off log(0)

# The mouth, in units of the mouth width (outer corners 48-54).
MAX_DROP = 0.3  # the lower lip drops by this much at opening 1
LENS_EXPONENT = 0.6  # shape of the opening between the inner corners: (1 - s^2) ** this
LIP_BLEND = 0.3  # below the lower lip's edge, the lens turns into the jaw profile over this distance
JAW_SIGMA = 0.6  # horizontal Gaussian sigma of the jaw's drop
CHIN_FADE = 0.35  # Gaussian sigma of the fade below the jaw line
TEETH_FRACTION = 0.35  # the upper teeth show in this fraction of the gap, at most TEETH_MAX
TEETH_MAX = 0.08
TEETH_RGB = np.array([214.0, 204.0, 188.0])
INTERIOR_RGB = np.array([46.0, 14.0, 16.0])
FIXED_POINT_STEPS = 8  # iterations inverting the lower face's forward drop
ROI_SIDE_REACH = 2.0  # the warp reaches this far left and right of the mouth centre (the jaw's 3.3 sigma)
ROI_ABOVE = 0.2  # and from this far above the mouth centre down to 3 CHIN_FADE sigmas below the jaw line

# The picture: a square around the face, and the head's jitter.
FRAME_SIZE = 512  # px, output frames are FRAME_SIZE x FRAME_SIZE
FACE_CONTEXT = 2.0  # frame side / the larger side of the landmarks' bounding box
CANVAS_MARGIN = 0.1  # the still is kept this much (of FRAME_SIZE) larger on each side, for the jitter
JITTER_SHIFT_PX = 3.0  # at most this shift, in output px, along x and y
JITTER_SCALE = 0.02  # at most this relative zoom
JITTER_DRIFT_HZ = (0.05, 0.15)  # the slow drift's frequency range
JITTER_SWAY_HZ = (0.2, 0.5)  # a faster sway on top of it
JITTER_DRIFT_SHARE = 0.7  # of each jitter amplitude; the sway has the rest
FPS = 25

MAX_STILL_SCAN_FRAMES = 300  # frames of a long video looked at when choosing the still (evenly spread)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
MOUTH_CORNERS = (48, 54)
INNER_CORNERS = (60, 64)
LOWER_INNER_LIP = (60, 67, 66, 65, 64)
JAW_LINE = tuple(range(3, 14))
FACE_FIX = "Give a video or photo in which one face is clearly visible, facing the camera."


def frame_openings(samples: np.ndarray) -> np.ndarray:
    """a(k) in [0, 1] for each whole frame of 16 kHz `samples`: float32, shape (len // 640,)."""
    frames = samples[: samples.size // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].reshape(-1, SAMPLES_PER_FRAME)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    level = 20 * np.log10(np.maximum(rms, SILENCE_RMS))
    raw = np.clip((level - OPENING_FLOOR_DB) / OPENING_RANGE_DB, 0, 1)
    padded = np.pad(raw, 1, mode="edge")
    return np.convolve(padded, SMOOTHING, mode="valid").astype(np.float32)


def inner_lip_gap(points: np.ndarray) -> float:
    """Mean distance between the upper and lower inner lip, in the points' pixels."""
    return float(np.mean([np.linalg.norm(points[a] - points[b]) for a, b in INNER_LIP_PAIRS]))


def mouth_width(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[MOUTH_CORNERS[1]] - points[MOUTH_CORNERS[0]]))


@dataclass(frozen=True)
class Still:
    """The picture a person's clips are made from, and its 68 landmarks (pixels)."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    points: np.ndarray  # (68, 2) float32


def _largest(faces: list[FaceLandmarks]) -> FaceLandmarks | None:
    return max(faces, key=lambda face: face.area) if faces else None


def find_still(path: Path, detector: FaceMeshDetector) -> Still:
    """The frame of a video (or the photo) whose largest face has the smallest inner-lip gap
    (relative to the mouth width); InputError when no frame shows a face."""
    info = probe_video(path)
    stride = max(1, -(-info.frame_count // MAX_STILL_SCAN_FRAMES))
    best: tuple[float, Still] | None = None
    with FrameReader(info) as reader:
        for index, frame in enumerate(reader.frames()):
            if index % stride:
                continue
            face = _largest(detector.detect(frame))
            if face is None:
                continue
            score = inner_lip_gap(face.points) / max(mouth_width(face.points), 1.0)
            if best is None or score < best[0]:
                best = (score, Still(frame.copy(), face.points.copy()))
    if best is None:
        raise InputError(f"No face was found in {path}.", FACE_FIX)
    return best[1]


def jitter_path(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames, 3) smooth head motion: x and y shift (px), relative zoom; within the JITTER_ amounts."""
    t = np.arange(frames) / FPS
    columns = []
    for amplitude in (JITTER_SHIFT_PX, JITTER_SHIFT_PX, JITTER_SCALE):
        drift, sway = rng.uniform(*JITTER_DRIFT_HZ), rng.uniform(*JITTER_SWAY_HZ)
        phases = rng.uniform(0, 2 * np.pi, size=2)
        columns.append(
            amplitude
            * (
                JITTER_DRIFT_SHARE * np.sin(2 * np.pi * drift * t + phases[0])
                + (1 - JITTER_DRIFT_SHARE) * np.sin(2 * np.pi * sway * t + phases[1])
            )
        )
    return np.stack(columns, axis=1)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def face_canvas(still: Still) -> Still:
    """The still cropped to a square of FACE_CONTEXT times the landmarks' extent around the face, scaled so
    that the square is FRAME_SIZE, with CANVAS_MARGIN more on each side (edge pixels repeated)."""
    points = still.points.astype(np.float64)
    side = FACE_CONTEXT * float(np.max(points.max(axis=0) - points.min(axis=0)))
    centre = (points.max(axis=0) + points.min(axis=0)) / 2
    scale = FRAME_SIZE / side
    size = round(FRAME_SIZE * (1 + 2 * CANVAS_MARGIN))
    offset = size / 2 - scale * centre
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4
    resized = cv2.resize(still.image, None, fx=scale, fy=scale, interpolation=interpolation)
    shift = np.array([[1.0, 0.0, offset[0]], [0.0, 1.0, offset[1]]])
    canvas = cv2.warpAffine(
        resized, shift, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return Still(canvas, (points * scale + offset).astype(np.float32))


class MouthRig:
    """Renders a face canvas (`face_canvas`) at any opening in [0, 1] and any jitter, as FRAME_SIZE
    square RGB frames."""

    def __init__(self, canvas: Still) -> None:
        self.canvas = canvas.image
        self.points = canvas.points.astype(np.float64)
        size = self.canvas.shape[0]
        self._canvas_centre = np.array([size / 2, size / 2])
        self._work = self.canvas.copy()
        self._setup_mouth()

    def _setup_mouth(self) -> None:
        """The mouth frame (x' along the inner corners, y' down), the ROI, and what does not change."""
        p = self.points
        width = mouth_width(p)
        along = p[INNER_CORNERS[1]] - p[INNER_CORNERS[0]]
        u = along / np.linalg.norm(along)
        n = np.array([-u[1], u[0]])  # down the face, for an upright face
        centre = p[60:68].mean(axis=0)
        size = self.canvas.shape[0]
        reach = ROI_SIDE_REACH * width
        below = float(np.max((p[list(JAW_LINE)] - centre) @ n)) + (3 * CHIN_FADE + MAX_DROP) * width
        corners = [centre + dx * u + dy * n for dx in (-reach, reach) for dy in (-ROI_ABOVE * width, below)]
        lo = np.clip(np.floor(np.min(corners, axis=0)), 0, size - 1).astype(int)
        hi = np.clip(np.ceil(np.max(corners, axis=0)), 1, size).astype(int)
        self._roi = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        ys, xs = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float64)
        rel = np.stack([xs - centre[0], ys - centre[1]], axis=-1)
        x_, y_ = rel @ u, rel @ n

        def along_curve(indices: tuple[int, ...]) -> np.ndarray:
            q = (p[list(indices)] - centre) @ np.stack([u, n], axis=1)
            order = np.argsort(q[:, 0])
            return np.interp(x_, q[order, 0], q[order, 1])

        lower = along_curve(LOWER_INNER_LIP)
        left, right = ((p[i] - centre) @ u for i in INNER_CORNERS)
        middle, half = (left + right) / 2, (right - left) / 2
        self._t = y_ - lower  # depth below the lower lip's inner edge
        self._t_jaw = along_curve(JAW_LINE) - lower
        self._lens = np.clip(1 - ((x_ - middle) / half) ** 2, 0, 1) ** LENS_EXPONENT
        self._jaw = np.exp(-0.5 * ((x_ - middle) / (JAW_SIGMA * width)) ** 2)
        self._width = width
        self._n = n
        self._xs, self._ys = xs - lo[0], ys - lo[1]

    def _drop(self, amount: float, t: np.ndarray) -> np.ndarray:
        """How far down the content at depth `t` (below the lower lip's edge) moves."""
        blend = _smoothstep(t / (LIP_BLEND * self._width))
        below = np.maximum(t - self._t_jaw, 0) / (CHIN_FADE * self._width)
        return amount * ((1 - blend) * self._lens + blend * self._jaw) * np.exp(-0.5 * below**2)

    def open_mouth(self, opening: float) -> np.ndarray:
        """The canvas with the mouth opened by `opening` (0: the still itself). A view, valid until the
        next call."""
        roi = self.canvas[self._roi]
        if opening <= 0:
            self._work[self._roi] = roi
            return self._work
        amount = opening * MAX_DROP * self._width
        t_out = self._t
        gap = amount * self._lens  # height of the opening in each column
        t_src = np.maximum(t_out - gap, 0)
        for _ in range(FIXED_POINT_STEPS):
            t_src = np.maximum(t_out - self._drop(amount, t_src), 0)
        drop = np.where(t_out >= 0, t_out - t_src, 0.0)
        map_x = (self._xs - drop * self._n[0]).astype(np.float32)
        map_y = (self._ys - drop * self._n[1]).astype(np.float32)
        warped = cv2.remap(roi, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cover = (np.clip(t_out + 0.5, 0, 1) * np.clip(gap - t_out + 0.5, 0, 1) * np.clip(gap, 0, 1))[
            ..., None
        ]
        teeth_height = np.minimum(TEETH_FRACTION * gap, TEETH_MAX * self._width)
        teeth = np.clip(teeth_height - t_out + 0.5, 0, 1)[..., None]
        teeth_colour = TEETH_RGB * (0.55 + 0.45 * self._lens[..., None])
        fill = teeth * teeth_colour + (1 - teeth) * INTERIOR_RGB
        mixed = (1 - cover) * warped + cover * fill
        self._work[self._roi] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        return self._work

    def render(self, opening: float, jitter: np.ndarray) -> np.ndarray:
        """One output frame: the mouth opened by `opening`, the head moved by `jitter` (dx, dy, zoom)."""
        canvas = self.open_mouth(opening)
        zoom = 1 + float(jitter[2])
        offset = FRAME_SIZE / 2 - zoom * self._canvas_centre + jitter[:2]
        matrix = np.array([[zoom, 0, offset[0]], [0, zoom, offset[1]]])
        return cv2.warpAffine(
            canvas, matrix, (FRAME_SIZE, FRAME_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    def frame_points(self, jitter: np.ndarray) -> np.ndarray:
        """The still's landmarks where `render` puts them with this jitter (the mouth closed)."""
        zoom = 1 + float(jitter[2])
        return (self.points - self._canvas_centre) * zoom + FRAME_SIZE / 2 + jitter[:2]
