"""Face landmarks: MediaPipe FaceMesh, reduced to the 68 iBUG roles the MuseTalk crop is defined on.

MuseTalk's reference code uses DWPose's 68 iBUG points (lipsync/models/musetalk/README.md, Crop box);
FaceMesh gives 468 points on a denser mesh. Each iBUG role is taken from the FaceMesh vertex at the same
anatomical spot, chosen on real frames so that the spacing along each contour matches the iBUG layout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import cv2
import numpy as np

# fmt: off
IBUG68_FROM_MESH: tuple[int, ...] = (
    # jaw 0-16: image-left ear level, down to the chin (152), up to image-right ear level
    127, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 356,
    # brows 17-21 (image-left, outer to inner), 22-26 (image-right, inner to outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, top (between the eyes) to the tip
    168, 197, 5, 1,
    # nose base 31-35, image-left ala to image-right ala through the subnasale (2)
    98, 97, 2, 326, 327,
    # image-left eye 36-41: outer corner, upper lid, inner corner, lower lid
    33, 160, 158, 133, 153, 144,
    # image-right eye 42-47: inner corner, upper lid, outer corner, lower lid
    362, 385, 387, 263, 373, 380,
    # outer lips 48-59: left corner, upper lip to the right corner, lower lip back
    61, 40, 39, 0, 269, 270, 291, 321, 405, 17, 181, 91,
    # inner lips 60-67: left corner, upper, right corner, lower
    78, 81, 13, 311, 308, 402, 14, 178,
)

# FaceMesh's face-oval contour, in order around the face (forehead top, image-right side, chin, left).
FACE_OVAL_FROM_MESH: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
# fmt: on

JAW = slice(0, 17)
CHIN = 8
NOSE_BRIDGE = slice(27, 31)
CROP_CENTRE = 29
NOSE_TIP = 30
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)

MESH_POINTS = 468
MIN_DETECTION_CONFIDENCE = 0.5
MIN_TRACKING_CONFIDENCE = 0.5

# Small-face fallback: FaceMesh's own detector misses faces under ~90 px in a large frame, so the
# full-range face detector finds them and FaceMesh runs on an enlarged crop around each one.
FULL_RANGE_DETECTOR = 1  # face_detection model_selection: 1 = full range (faces up to ~5 m away)
FALLBACK_CONTEXT = 2.0  # crop side / detection box side: FaceMesh wants some margin around the face
FALLBACK_CROP_SIZE = 256  # px; crops smaller than this are enlarged to it


@dataclass(frozen=True)
class FaceLandmarks:
    """One face in one frame, in frame pixels."""

    points: np.ndarray  # (68, 2) float32 (x, y), iBUG-68 roles
    face_oval: np.ndarray  # (36, 2) float32, closed contour in order

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x1, y1 = self.points.min(axis=0)
        x2, y2 = self.points.max(axis=0)
        return float(x1), float(y1), float(x2), float(y2)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bounds
        return (x2 - x1) * (y2 - y1)


def _from_mesh(mesh: np.ndarray) -> FaceLandmarks:
    return FaceLandmarks(
        points=mesh[list(IBUG68_FROM_MESH)].astype(np.float32),
        face_oval=mesh[list(FACE_OVAL_FROM_MESH)].astype(np.float32),
    )


def _mesh_pixels(result: Any, width: int, height: int) -> list[np.ndarray]:
    """FaceMesh results as (468, 2) float64 pixel arrays."""
    faces = result.multi_face_landmarks or []
    scale = np.array([width, height], dtype=np.float64)
    return [
        np.array([(p.x, p.y) for p in face.landmark[:MESH_POINTS]], dtype=np.float64) * scale
        for face in faces
    ]


def _mediapipe() -> Any:
    """mediapipe, imported on first use: it takes seconds, and only face analysis needs it."""
    import mediapipe

    return mediapipe


# mediapipe's native code logs setup chatter (TFLite delegate, absl warnings) straight to file
# descriptor 2 from its graph threads, asynchronously, while graphs open and first run; no
# environment variable turns it off. We silence fd 2 while a graph opens (forced by one blank
# frame) and for its first few calls.
NOISY_FIRST_CALLS = 3
WARM_UP_FRAME_SIZE = 64
STDERR_FD = 2


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (Python's sys.stderr included)."""
    sys.stderr.flush()
    saved = os.dup(STDERR_FD)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), STDERR_FD)
            yield
    finally:
        os.dup2(saved, STDERR_FD)
        os.close(saved)


def _open_graph(solution: Any) -> None:
    """Run one blank frame so the graph's calculators finish opening (and logging) now."""
    solution.process(np.zeros((WARM_UP_FRAME_SIZE, WARM_UP_FRAME_SIZE, 3), dtype=np.uint8))


class FaceMeshDetector:
    """Finds faces and their landmarks in RGB frames.

    video_mode=True lets FaceMesh track faces between consecutive frames (faster, steadier);
    use video_mode=False for unrelated images.
    """

    def __init__(self, max_faces: int = 4, video_mode: bool = True) -> None:
        with native_stderr_silenced():
            self._mesh: Any = _mediapipe().solutions.face_mesh.FaceMesh(
                static_image_mode=not video_mode,
                max_num_faces=max_faces,
                refine_landmarks=False,
                min_detection_confidence=MIN_DETECTION_CONFIDENCE,
                min_tracking_confidence=MIN_TRACKING_CONFIDENCE,
            )
            _open_graph(self._mesh)
        self._max_faces = max_faces
        self._noisy_calls_left = NOISY_FIRST_CALLS
        # Created on first need: most videos never use the fallback.
        self._detector: Any = None
        self._crop_mesh: Any = None

    def detect(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        """Every face found in an RGB uint8 (H, W, 3) frame, in any order."""
        if self._noisy_calls_left > 0:
            self._noisy_calls_left -= 1
            with native_stderr_silenced():
                return self._detect(rgb)
        return self._detect(rgb)

    def _detect(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        rgb = np.ascontiguousarray(rgb)
        height, width = rgb.shape[:2]
        meshes = _mesh_pixels(self._mesh.process(rgb), width, height)
        if not meshes:
            meshes = self._detect_small(rgb)
        return [_from_mesh(mesh) for mesh in meshes]

    def _detect_small(self, rgb: np.ndarray) -> list[np.ndarray]:
        if self._detector is None:
            self._noisy_calls_left = NOISY_FIRST_CALLS  # the fallback graphs log on their first runs too
            with native_stderr_silenced():
                self._detector = _mediapipe().solutions.face_detection.FaceDetection(
                    model_selection=FULL_RANGE_DETECTOR, min_detection_confidence=MIN_DETECTION_CONFIDENCE
                )
                self._crop_mesh = _mediapipe().solutions.face_mesh.FaceMesh(
                    static_image_mode=True,
                    max_num_faces=1,
                    refine_landmarks=False,
                    min_detection_confidence=MIN_DETECTION_CONFIDENCE,
                )
                _open_graph(self._detector)
                _open_graph(self._crop_mesh)
        height, width = rgb.shape[:2]
        detections = self._detector.process(rgb).detections or []
        meshes: list[np.ndarray] = []
        for detection in detections[: self._max_faces]:
            box = detection.location_data.relative_bounding_box
            side = max(box.width * width, box.height * height) * FALLBACK_CONTEXT
            cx = (box.xmin + box.width / 2) * width
            cy = (box.ymin + box.height / 2) * height
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            side_px = max(1, round(side))
            crop = _crop_padded(rgb, x0, y0, side_px)
            scale = max(1.0, FALLBACK_CROP_SIZE / side_px)
            if scale > 1.0:
                crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            found = _mesh_pixels(self._crop_mesh.process(crop), crop.shape[1], crop.shape[0])
            meshes.extend(mesh / scale + (x0, y0) for mesh in found)
        return meshes

    def close(self) -> None:
        """Free the graphs; safe to call more than once."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
        if self._detector is not None:
            self._detector.close()
            self._crop_mesh.close()
            self._detector = None

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _crop_padded(rgb: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """A side x side crop with its top-left at (x0, y0); parts outside the frame are black."""
    height, width = rgb.shape[:2]
    out = np.zeros((side, side, 3), dtype=rgb.dtype)
    sx1, sy1 = max(0, x0), max(0, y0)
    sx2, sy2 = min(width, x0 + side), min(height, y0 + side)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y0 : sy2 - y0, sx1 - x0 : sx2 - x0] = rgb[sy1:sy2, sx1:sx2]
    return out
