"""What the silent-lip generator does to a video's identity references: crops before and after G_S.

The stabilized-sync family closes the lips of every identity reference with G_S before G_L reads it (its
answer to lips leaking from the reference). This shows it on real frames: frames spread over a video, their
face crops in the top row, the same crops after G_S in the bottom row.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from lipsync.config import DEFAULT_IMAGE_FPS, FaceSettings
from lipsync.errors import InputError, NoFaceError
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.face.track import track_face
from lipsync.io.files import atomic_path
from lipsync.io.video import FrameReader, probe_video
from lipsync.models.generator import Generator
from lipsync.models.stabilized_sync.generator import FACE, IDENTITY, StabilizedSyncGenerator
from lipsync.pipeline.render import face_batch
from lipsync.timing import StageTimes

LABEL_COLOUR = (255, 40, 40)
LABEL_SCALE = 0.4  # of OpenCV's Hershey font, per 96 px of face


def silent_lip_strip(
    generator: Generator,
    source: Path,
    frames: int,
    face: FaceSettings,
    image_fps: Fraction = DEFAULT_IMAGE_FPS,
) -> np.ndarray:
    """(2·S, n·S, 3) uint8 RGB: the crops of up to `frames` frames spread over `source` (those with a
    face), above the identity references the generator makes of them."""
    if not isinstance(generator, StabilizedSyncGenerator):
        raise InputError(
            f"the {generator.family} model makes no silent-lip references",
            "give a stabilized-sync weights folder (`model` stabilized-sync)",
        )
    if generator.models.silent_generator is None:
        raise InputError(
            "this stabilized-sync folder turns G_S off (silent_lip_references: false in its config.json)",
            "use a folder whose config.json keeps silent_lip_references true",
        )
    info = probe_video(source, image_fps)
    count = max(1, min(frames, info.frame_count))
    picks = sorted({round(i * (info.frame_count - 1) / max(1, count - 1)) for i in range(count)})
    with FrameReader(info) as reader:
        images = [reader.frame(index) for index in picks]
    with FaceMeshDetector(face.max_faces, video_mode=False) as detector:
        track = track_face(
            images, face, info.width, info.height, detector=detector, box_rule=generator.crop_box
        )
    rows = [row for row in range(len(images)) if track.has_face(row)]
    if not rows:
        raise NoFaceError(
            f"no face was found in the {len(images)} frames looked at in {source}",
            "use a video or photo where one face is clearly visible, frontal, at least 100 px wide",
        )
    prepared = generator.prepare(face_batch(generator, track, rows, [images[r] for r in rows]), StageTimes())
    before = np.concatenate(list(prepared[FACE]), axis=1)
    after = np.concatenate(list(prepared[IDENTITY]), axis=1)
    strip = np.ascontiguousarray(np.concatenate([before, after], axis=0))
    if generator.untrained:
        scale = LABEL_SCALE * generator.face_size / 96
        cv2.putText(strip, "UNTRAINED", (4, int(16 * scale / LABEL_SCALE)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    LABEL_COLOUR, 1, cv2.LINE_AA)  # fmt: skip
    return strip


def write_png(image: np.ndarray, path: Path) -> Path:
    """An RGB image as a PNG, written to a temporary name and renamed (never half a file)."""
    ok, data = cv2.imencode(".png", image[..., ::-1])
    if not ok:
        raise InputError(f"could not encode a {image.shape} image as PNG", "report this as a bug")
    with atomic_path(Path(path)) as temporary:
        temporary.write_bytes(data.tobytes())
    return Path(path)
