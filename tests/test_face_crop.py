"""The crop box follows lipsync/models/musetalk/README.md (Crop box) exactly; the crop is a Lanczos resize."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.face.crop import CropBox, crop_box_from_landmarks, crop_face
from lipsync.face.landmarks import CROP_CENTRE


def synthetic_points(centre: tuple[float, float], x_range: tuple[float, float], chin_y: float) -> np.ndarray:
    """68 points: point 29 at `centre`, the jaw across x_range, the chin (lowest point) at chin_y."""
    points = np.full((68, 2), centre, dtype=np.float32)
    points[0] = (x_range[0], centre[1])
    points[16] = (x_range[1], centre[1])
    points[8] = (centre[0], chin_y)
    points[27] = (centre[0], centre[1] - 30)  # the highest point, above the crop centre
    points[CROP_CENTRE] = centre
    return points


def test_box_is_symmetric_about_point_29() -> None:
    points = synthetic_points((200, 300), (120, 280), 380)
    box = crop_box_from_landmarks(points, 640, 480)
    # half = 380 - 300 = 80 -> y1 = 220; x from the landmarks; y2 = the chin
    assert box == CropBox(120, 220, 280, 380)
    assert (box.width, box.height) == (160, 160)


def test_bbox_shift_moves_the_centre() -> None:
    points = synthetic_points((200, 300), (120, 280), 380)
    assert crop_box_from_landmarks(points, 640, 480, bbox_shift=10) == CropBox(120, 240, 280, 380)
    assert crop_box_from_landmarks(points, 640, 480, bbox_shift=-10) == CropBox(120, 200, 280, 380)


def test_extra_margin_extends_the_bottom_and_is_clamped() -> None:
    points = synthetic_points((200, 300), (120, 280), 380)
    assert crop_box_from_landmarks(points, 640, 480, extra_margin=10) == CropBox(120, 220, 280, 390)
    assert crop_box_from_landmarks(points, 640, 385, extra_margin=10) == CropBox(120, 220, 280, 385)
    # the margin does not move the top: it is added after the centre/half computation
    assert crop_box_from_landmarks(points, 640, 480, bbox_shift=5, extra_margin=20) == CropBox(
        120, 230, 280, 400
    )


def test_box_is_clamped_to_the_frame() -> None:
    points = synthetic_points((50, 100), (-20, 130), 220)  # y1 would be -20, x1 -20
    assert crop_box_from_landmarks(points, 100, 200) == CropBox(0, 0, 100, 200)


def test_degenerate_boxes_are_none() -> None:
    flat = np.full((68, 2), (50.0, 60.0), dtype=np.float32)
    assert crop_box_from_landmarks(flat, 640, 480) is None
    outside = synthetic_points((700, 300), (660, 760), 380)  # entirely right of a 640-wide frame
    assert crop_box_from_landmarks(outside, 640, 480) is None


def test_crop_face_is_a_non_uniform_lanczos_resize() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    box = CropBox(40, 20, 200, 220)  # 160 x 200: not square
    face = crop_face(frame, box)
    assert face.shape == (256, 256, 3) and face.dtype == np.uint8
    expected = cv2.resize(frame[20:220, 40:200], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(face, expected)
    assert crop_face(frame, box, size=64).shape == (64, 64, 3)


def test_crop_face_rejects_a_box_outside_the_frame() -> None:
    frame = np.zeros((100, 100, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        crop_face(frame, CropBox(50, 50, 150, 150))
