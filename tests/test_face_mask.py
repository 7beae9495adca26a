"""The lower-face blend mask and pasting a face back into its frame."""

from __future__ import annotations

import av
import numpy as np
import pytest

from lipsync.config import BLEND_FEATHER_RATIO
from lipsync.face.blend import paste_face
from lipsync.face.crop import CropBox, crop_box_from_landmarks
from lipsync.face.landmarks import INNER_LIPS, OUTER_LIPS, FaceLandmarks, FaceMeshDetector
from lipsync.face.mask import feather_kernel_size, lower_face_mask

from conftest import media


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, FaceLandmarks, CropBox]:
    with av.open(str(media("talk_c.mp4"))) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    with FaceMeshDetector(video_mode=False) as detector:
        landmarks = detector.detect(frame)[0]
    box = crop_box_from_landmarks(landmarks.points, frame.shape[1], frame.shape[0], extra_margin=10)
    assert box is not None
    return frame, landmarks, box


def test_mask_covers_the_lower_face_only(scene: tuple[np.ndarray, FaceLandmarks, CropBox]) -> None:
    _, landmarks, box = scene
    mask = lower_face_mask(landmarks, box)
    assert mask.shape == (box.height, box.width) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    centre_row = int(0.5 * box.height)
    assert np.all(mask[: centre_row + 1] == 0.0)  # on and above the centre line
    # zero on the box border: nothing reaches the frame around the box
    assert np.all(mask[:, 0] == 0) and np.all(mask[:, -1] == 0) and np.all(mask[-1] == 0)
    # the mouth is fully replaced
    local = landmarks.points - (box.x1, box.y1)
    for x, y in np.vstack([local[OUTER_LIPS], local[INNER_LIPS]]):
        assert mask[round(y), round(x)] > 0.9
    # the background beside the jaw, in the box's lower corners, is kept
    assert mask[-5, 2] == 0.0 and mask[-5, -3] == 0.0
    assert 0.2 < mask.mean() < 0.5


def test_mask_is_zero_outside_the_grown_face(scene: tuple[np.ndarray, FaceLandmarks, CropBox]) -> None:
    _, landmarks, box = scene
    mask = lower_face_mask(landmarks, box)
    # shifting the face oval far to the right leaves only its left part in the box
    shifted = FaceLandmarks(
        points=landmarks.points, face_oval=landmarks.face_oval + np.float32([box.width, 0])
    )
    assert np.all(lower_face_mask(shifted, box) == 0.0)
    # the feather is a soft edge: some values strictly between 0 and 1
    assert np.any((mask > 0.05) & (mask < 0.95))
    assert feather_kernel_size(box.width) == int(BLEND_FEATHER_RATIO * box.width // 2 * 2) + 1


def test_upper_ratio_moves_the_boundary(scene: tuple[np.ndarray, FaceLandmarks, CropBox]) -> None:
    _, landmarks, box = scene
    mask = lower_face_mask(landmarks, box, upper_ratio=0.7)
    assert np.all(mask[: int(0.7 * box.height) + 1] == 0.0)
    assert mask.sum() < lower_face_mask(landmarks, box).sum()


def test_paste_keeps_every_zero_alpha_pixel(scene: tuple[np.ndarray, FaceLandmarks, CropBox]) -> None:
    frame, landmarks, box = scene
    before = frame.copy()
    mask = lower_face_mask(landmarks, box)
    face = np.full((256, 256, 3), (0, 255, 0), dtype=np.uint8)
    out = paste_face(frame, face, box, mask)
    np.testing.assert_array_equal(frame, before)  # input untouched
    assert out.shape == frame.shape and out.dtype == np.uint8

    alpha = np.zeros(frame.shape[:2], dtype=np.float32)
    alpha[box.y1 : box.y2, box.x1 : box.x2] = mask
    np.testing.assert_array_equal(out[alpha == 0], frame[alpha == 0])
    np.testing.assert_array_equal(out[alpha == 1], np.broadcast_to((0, 255, 0), out[alpha == 1].shape))
    assert np.count_nonzero(alpha == 1) > 1000


def test_paste_strength(scene: tuple[np.ndarray, FaceLandmarks, CropBox]) -> None:
    frame, landmarks, box = scene
    mask = lower_face_mask(landmarks, box)
    face = np.zeros((256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(paste_face(frame, face, box, mask, strength=0.0), frame)
    half = paste_face(frame, face, box, mask, strength=0.5)
    full = paste_face(frame, face, box, mask)
    region = (slice(box.y1, box.y2), slice(box.x1, box.x2))
    assert full[region].sum() < half[region].sum() < frame[region].sum()


def test_paste_rejects_a_mismatched_mask(scene: tuple[np.ndarray, FaceLandmarks, CropBox]) -> None:
    frame, _, box = scene
    with pytest.raises(ValueError):
        paste_face(frame, np.zeros((256, 256, 3), np.uint8), box, np.zeros((box.height, box.width + 1)))
