"""A first-frame preview: what a dub will change, before any frame is generated.

It shows the faces found in the first frame, the one the face settings choose, its crop box and the blend
mask of the generator that will dub it, so a user can tune `bbox_shift`, `extra_margin` and `face_index`
in a second instead of after a whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from lipsync.config import DEFAULT_IMAGE_FPS, FaceSettings
from lipsync.errors import NoFaceError
from lipsync.face.crop import CropBox
from lipsync.face.landmarks import FaceLandmarks, FaceMeshDetector
from lipsync.face.track import track_face
from lipsync.io.video import FrameReader, probe_video
from lipsync.models.generator import Generator

# Overlay colours (RGB) and strengths.
OTHER_FACE_COLOUR = (160, 160, 160)  # faces found but not chosen
LANDMARK_COLOUR = (0, 230, 0)
BOX_COLOUR = (255, 210, 0)
MASK_COLOUR = np.array([255, 0, 80], dtype=np.float32)
MASK_OPACITY = 0.45  # at full mask alpha
LINE_FRACTION = 1 / 300  # line width as a fraction of the frame's longer side


@dataclass(frozen=True)
class FacePreview:
    """The first frame with the overlays drawn, and what was found."""

    image: np.ndarray  # (H, W, 3) RGB uint8
    faces: int  # faces found in the frame
    box: CropBox  # the chosen face's crop box
    frame_count: int
    fps: Fraction


def preview_first_frame(
    generator: Generator,
    source: Path,
    face: FaceSettings,
    image_fps: Fraction = DEFAULT_IMAGE_FPS,
) -> FacePreview:
    """The first frame of `source` with every face outlined, the chosen face's landmarks, its crop box and
    the generator's blend mask drawn. Raises NoFaceError (or InputError for a bad `face_index` or a box
    outside the frame) with the fix."""
    info = probe_video(source, image_fps)
    with FrameReader(info) as reader:
        frame = reader.frame(0)
    with FaceMeshDetector(face.max_faces, video_mode=False) as detector:
        faces = detector.detect(frame)
        track = track_face(
            [frame], face, info.width, info.height, detector=detector, box_rule=generator.crop_box
        )
    box, landmarks = track.box(0), track.landmarks(0)
    if box is None or landmarks is None:
        raise NoFaceError(
            f"no face was found in the first frame of {source}",
            "use a video or photo whose first frame shows one face clearly, frontal, at least 100 px wide",
        )
    image = draw_preview(frame, faces, landmarks, box, generator.blend_mask(landmarks, box))
    return FacePreview(image, len(faces), box, info.frame_count, info.fps)


def draw_preview(
    frame: np.ndarray,
    faces: list[FaceLandmarks],
    chosen: FaceLandmarks,
    box: CropBox,
    mask: np.ndarray,
) -> np.ndarray:
    """A copy of `frame` with the mask tinted in, other faces outlined, landmarks dotted and the box drawn."""
    image = frame.copy()
    region = image[box.y1 : box.y2, box.x1 : box.x2].astype(np.float32)
    alpha = (MASK_OPACITY * mask[: region.shape[0], : region.shape[1], None]).astype(np.float32)
    image[box.y1 : box.y2, box.x1 : box.x2] = np.rint(region * (1 - alpha) + MASK_COLOUR * alpha).astype(
        np.uint8
    )
    line = max(1, round(max(frame.shape[:2]) * LINE_FRACTION))
    for other in faces:
        if other.bounds != chosen.bounds:
            x1, y1, x2, y2 = (round(v) for v in other.bounds)
            cv2.rectangle(image, (x1, y1), (x2, y2), OTHER_FACE_COLOUR, line)
    for x, y in np.rint(chosen.points).astype(int):
        cv2.circle(image, (int(x), int(y)), line + 1, LANDMARK_COLOUR, -1)
    cv2.rectangle(image, (box.x1, box.y1), (box.x2 - 1, box.y2 - 1), BOX_COLOUR, line + 1)
    return image
