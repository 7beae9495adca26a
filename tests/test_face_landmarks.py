"""FaceMesh landmarks reduced to the 68 iBUG roles, on real frames."""

from __future__ import annotations

from itertools import islice

import av
import cv2
import numpy as np
import pytest

from lipsync.face.landmarks import (
    CHIN,
    CROP_CENTRE,
    IBUG68_FROM_MESH,
    INNER_LIPS,
    JAW,
    NOSE_BRIDGE,
    NOSE_TIP,
    OUTER_LIPS,
    FaceLandmarks,
    FaceMeshDetector,
)

from conftest import media

CLIPS = ["talk_a_22fps.mp4", "talk_b.mp4", "talk_c.mp4", "talk_d_mpeg4.mp4"]
FRAMES_PER_CLIP = (0, 40, 80)


def read_frames(name: str, indices: tuple[int, ...]) -> list[np.ndarray]:
    with av.open(str(media(name))) as container:
        decoded = islice(container.decode(video=0), max(indices) + 1)
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(decoded) if i in indices]


def upright(points: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Points rotated about the origin so the line between the eye centres is horizontal (no head roll)."""
    ref = points if reference is None else reference
    dx, dy = ref[42:48].mean(axis=0) - ref[36:42].mean(axis=0)
    angle = np.arctan2(dy, dx)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]], dtype=np.float32)
    return points @ rotation.T


@pytest.fixture(scope="module")
def detector() -> FaceMeshDetector:
    with FaceMeshDetector(video_mode=False) as det:
        yield det


@pytest.fixture(scope="module")
def clip_faces(detector: FaceMeshDetector) -> dict[str, list[list[FaceLandmarks]]]:
    return {name: [detector.detect(f) for f in read_frames(name, FRAMES_PER_CLIP)] for name in CLIPS}


def test_mapping_is_68_distinct_mesh_vertices() -> None:
    assert len(IBUG68_FROM_MESH) == 68
    assert len(set(IBUG68_FROM_MESH)) == 68
    assert all(0 <= i < 468 for i in IBUG68_FROM_MESH)
    assert IBUG68_FROM_MESH[CHIN] == 152


@pytest.mark.parametrize("name", CLIPS)
def test_one_face_on_every_clip(clip_faces: dict[str, list[list[FaceLandmarks]]], name: str) -> None:
    for faces in clip_faces[name]:
        assert len(faces) == 1
        face = faces[0]
        assert face.points.shape == (68, 2) and face.points.dtype == np.float32
        assert face.face_oval.shape == (36, 2) and face.face_oval.dtype == np.float32
        x1, y1, x2, y2 = face.bounds
        assert 0 <= x1 < x2 and 0 <= y1 < y2
        assert face.area == pytest.approx((x2 - x1) * (y2 - y1))


@pytest.mark.parametrize("name", CLIPS)
def test_roles_are_geometrically_right(clip_faces: dict[str, list[list[FaceLandmarks]]], name: str) -> None:
    for faces in clip_faces[name]:
        p = upright(faces[0].points)
        jaw = p[JAW]
        # the chin is the lowest jaw point; the jaw runs from image-left through the chin to image-right
        assert np.argmax(jaw[:, 1]) == CHIN
        assert np.all(np.diff(jaw[: CHIN + 1, 1]) > 0) and np.all(np.diff(jaw[CHIN:, 1]) < 0)
        assert jaw[0, 0] < jaw[CHIN, 0] < jaw[16, 0]
        # the jaw spans the face: eyes, nose and mouth lie between its ends (brows can pass it when the
        # head is turned)
        assert jaw[:, 0].min() <= p[27:, 0].min() and p[27:, 0].max() <= jaw[:, 0].max()
        # nose bridge runs downward; 29 is just above the tip 30 and below 27
        bridge_y = p[NOSE_BRIDGE, 1]
        assert np.all(np.diff(bridge_y) > 0)
        assert p[27, 1] < p[CROP_CENTRE, 1] < p[NOSE_TIP, 1]
        # eyes left to right; brows above eyes; mouth below the nose
        assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]
        assert p[17:27, 1].mean() < p[36:48, 1].mean() < p[NOSE_TIP, 1] < p[OUTER_LIPS, 1].mean()
        # inner lip contour lies inside the outer one
        outer = p[OUTER_LIPS].reshape(-1, 1, 2)
        for x, y in p[INNER_LIPS]:
            assert cv2.pointPolygonTest(outer, (float(x), float(y)), True) >= -1.0
        # the mouth is inside the face oval
        oval = upright(faces[0].face_oval, faces[0].points).reshape(-1, 1, 2)
        for x, y in p[OUTER_LIPS]:
            assert cv2.pointPolygonTest(oval, (float(x), float(y)), False) > 0


def test_small_face_in_a_large_frame(clip_faces: dict[str, list[list[FaceLandmarks]]]) -> None:
    """A ~70 px face in a 1280x720 frame: FaceMesh alone misses it; the detector fallback finds it."""
    frame = read_frames("talk_c.mp4", (0,))[0]
    full = clip_faces["talk_c.mp4"][0][0]
    scale = 70 / (full.bounds[2] - full.bounds[0])
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 1280, 3), 90, dtype=np.uint8)
    offset = np.array([800, 300])
    canvas[offset[1] : offset[1] + small.shape[0], offset[0] : offset[0] + small.shape[1]] = small
    with FaceMeshDetector(video_mode=False) as det:
        faces = det.detect(canvas)
    assert len(faces) == 1
    expected = full.points * scale + offset
    error = np.linalg.norm(faces[0].points - expected, axis=1).mean()
    assert error < 3.0  # px, for a face 70 px wide


def test_no_face_in_a_black_frame(detector: FaceMeshDetector) -> None:
    assert detector.detect(np.zeros((360, 640, 3), dtype=np.uint8)) == []


def test_close_twice_is_harmless() -> None:
    detector = FaceMeshDetector()
    detector.close()
    detector.close()
