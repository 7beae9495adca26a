"""Following one face through a video: selection, gaps, smoothing, persistence."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync.cli.options import with_flags
from lipsync.config import FaceSettings
from lipsync.errors import InputError
from lipsync.face.crop import crop_box_from_landmarks
from lipsync.face.landmarks import FaceLandmarks
from lipsync.face.track import INITIAL_FRAMES, REACQUIRE_AFTER_FRAMES, FaceTrack, smooth_boxes, track_face

from conftest import media

SETTINGS = FaceSettings()


def read_frames(name: str, count: int | None = None) -> list[np.ndarray]:
    frames = []
    with av.open(str(media(name))) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def edge_jitter(boxes: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of the box edges."""
    return float(np.abs(np.diff(boxes.astype(np.float64), axis=0)).mean())


@pytest.fixture(scope="module")
def talk_c() -> list[np.ndarray]:
    return read_frames("talk_c.mp4")


@pytest.fixture(scope="module")
def talk_c_track(talk_c: list[np.ndarray]) -> FaceTrack:
    height, width = talk_c[0].shape[:2]
    return track_face(talk_c, SETTINGS, width, height)


def test_face_in_every_frame_of_a_real_clip(talk_c: list[np.ndarray], talk_c_track: FaceTrack) -> None:
    track = talk_c_track
    assert track.frame_count == len(talk_c) == track.faces_found
    assert track.boxes.shape == (len(talk_c), 4) and track.boxes.dtype == np.int32
    assert track.points.shape == (len(talk_c), 68, 2) and track.face_ovals.shape == (len(talk_c), 36, 2)
    box = track.box(0)
    landmarks = track.landmarks(0)
    assert box is not None and landmarks is not None
    assert 0 <= box.x1 < box.x2 <= 590 and 0 <= box.y1 < box.y2 <= 590
    # the box holds the face: the mouth is inside, in the lower half
    mouth_x, mouth_y = landmarks.points[48:60].mean(axis=0)
    assert box.x1 < mouth_x < box.x2 and (box.y1 + box.y2) / 2 < mouth_y < box.y2


def test_smoothing_makes_the_box_steadier(talk_c: list[np.ndarray], talk_c_track: FaceTrack) -> None:
    raw = []
    for points in talk_c_track.points:
        box = crop_box_from_landmarks(points, 590, 590, SETTINGS.bbox_shift, SETTINGS.extra_margin)
        assert box is not None
        raw.append((box.x1, box.y1, box.x2, box.y2))
    raw_boxes = np.array(raw)
    assert edge_jitter(talk_c_track.boxes) < 0.85 * edge_jitter(raw_boxes)  # measured: 0.68
    # smoothing steadies the box without moving it away from the face
    assert np.abs(talk_c_track.boxes - raw_boxes).mean() < 3.0


def test_on_frame_is_called_for_every_frame(talk_c: list[np.ndarray]) -> None:
    seen: list[int] = []
    track_face(talk_c[:10], SETTINGS, 590, 590, on_frame=seen.append)
    assert seen == list(range(10))


def test_blank_frames_get_no_face_and_keep_indices(talk_c: list[np.ndarray], talk_c_track: FaceTrack) -> None:
    black = np.zeros_like(talk_c[0])
    blank_at = {5, 6, 14}
    frames, source = [], []
    it = iter(range(len(talk_c)))
    for index in range(24):
        if index in blank_at:
            frames.append(black)
            source.append(-1)
        else:
            s = next(it)
            frames.append(talk_c[s])
            source.append(s)
    track = track_face(frames, SETTINGS, 590, 590)
    assert track.frame_count == 24
    assert [i for i in range(24) if not track.has_face(i)] == sorted(blank_at)
    for i in blank_at:
        assert track.box(i) is None and track.landmarks(i) is None
        assert np.all(track.boxes[i] == -1) and np.isnan(track.points[i]).all()
    for i, s in enumerate(source):
        if s >= 0:  # each real frame keeps its own landmarks (video-mode tracking may differ slightly)
            assert np.abs(track.points[i] - talk_c_track.points[s]).mean() < 3.0


@pytest.fixture(scope="module")
def two_faces(talk_c: list[np.ndarray]) -> list[np.ndarray]:
    """talk_c beside a half-size talk_a: a large face on the left, a small one on the right."""
    small = [
        cv2.resize(f, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        for f in read_frames("talk_a_22fps.mp4", 4)
    ]
    frames = []
    for big, little in zip(talk_c[:4], small, strict=True):
        right = np.zeros((big.shape[0], little.shape[1], 3), dtype=np.uint8)
        right[: little.shape[0]] = little
        frames.append(np.ascontiguousarray(np.hstack([big, right])))
    return frames


@pytest.mark.parametrize(("face_index", "on_left"), [(0, True), (1, False)])
def test_face_index_picks_by_size(two_faces: list[np.ndarray], face_index: int, on_left: bool) -> None:
    height, width = two_faces[0].shape[:2]
    track = track_face(two_faces, FaceSettings(face_index=face_index), width, height)
    assert track.faces_found == len(two_faces)
    centres = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    assert np.all((centres < 590) == on_left)


def test_face_index_beyond_the_faces_found_raises(two_faces: list[np.ndarray]) -> None:
    height, width = two_faces[0].shape[:2]
    with pytest.raises(InputError) as error:
        track_face(two_faces, FaceSettings(face_index=2), width, height)
    assert "2 faces" in error.value.problem and "`face_index`" in error.value.fix
    assert "`face_index` (--face)" in with_flags(error.value.fix)  # the command line adds its flag


def test_no_face_anywhere_gives_an_empty_track() -> None:
    frames = [np.zeros((120, 160, 3), dtype=np.uint8)] * 3
    track = track_face(frames, SETTINGS, 160, 120)
    assert track.frame_count == 3 and track.faces_found == 0
    assert np.all(track.boxes == -1)


class ScriptedDetector:
    """Stands in for FaceMeshDetector: each 'frame' is a list of face centres (x, y) to report."""

    def detect(self, faces: list[tuple[float, float]]) -> list[FaceLandmarks]:
        return [square_face(x, y) for x, y in faces]

    def close(self) -> None:
        pass


def square_face(x: float, y: float, size: float = 100.0) -> FaceLandmarks:
    points = np.zeros((68, 2), dtype=np.float32)
    points[:] = (x, y)
    points[0], points[16] = (x - size / 2, y), (x + size / 2, y)
    points[8] = (x, y + size / 2)
    points[27] = (x, y - size / 2)
    return FaceLandmarks(points=points, face_oval=np.zeros((36, 2), dtype=np.float32))


def test_follows_the_same_face_and_drops_jumps() -> None:
    script: list = [
        [(200, 200), (600, 200)],  # two equal faces: the first is taken
        [(610, 200), (205, 202)],  # order changes: still the face near (200, 200)
        [(600, 200)],  # only the other face: no face here
        [(210, 204), (600, 200)],
    ]
    track = track_face(script, SETTINGS, 800, 400, detector=ScriptedDetector())  # type: ignore[arg-type]
    assert [track.has_face(i) for i in range(4)] == [True, True, False, True]
    assert track.points[1, 29].tolist() == [205, 202]
    assert track.points[3, 29].tolist() == [210, 204]


def test_a_face_that_returns_elsewhere_after_a_second_is_followed_again() -> None:
    gap = REACQUIRE_AFTER_FRAMES + 1
    script: list = [[(200, 200)], *([[]] * gap), [(600, 200)], [(605, 200)]]
    track = track_face(script, SETTINGS, 800, 400, detector=ScriptedDetector())  # type: ignore[arg-type]
    assert track.has_face(0) and not any(track.has_face(1 + i) for i in range(gap))
    assert track.has_face(gap + 1) and track.has_face(gap + 2)
    assert track.points[gap + 2, 29].tolist() == [605, 200]


def test_a_short_absence_does_not_switch_to_another_face() -> None:
    script: list = [[(200, 200)], [(600, 200)], [(600, 200)], [(202, 200), (600, 200)]]
    track = track_face(script, SETTINGS, 800, 400, detector=ScriptedDetector())  # type: ignore[arg-type]
    assert [track.has_face(i) for i in range(4)] == [True, False, False, True]
    assert track.points[3, 29].tolist() == [202, 200]


def test_arrays_grow_past_their_initial_length() -> None:
    count = 2 * INITIAL_FRAMES + 3
    script = [[(300 + i * 0.1, 200)] for i in range(count)]
    track = track_face(script, SETTINGS, 800, 400, detector=ScriptedDetector())  # type: ignore[arg-type]
    assert track.frame_count == track.faces_found == count
    assert track.points[-1, 29, 0] == pytest.approx(300 + (count - 1) * 0.1)


def test_smoothing_stays_inside_runs() -> None:
    raw = np.full((9, 4), np.nan)
    raw[0:4] = [[10, 10, 50, 50], [12, 10, 52, 50], [14, 10, 54, 50], [16, 10, 56, 50]]
    raw[5:9] = [[100, 0, 200, 100]] * 4
    out = smooth_boxes(raw, 3)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out[4], [-1, -1, -1, -1])
    np.testing.assert_array_equal(out[5:9], [[100, 0, 200, 100]] * 4)  # not pulled by the first run
    # centred mean, window shrinking at the run ends
    np.testing.assert_array_equal(out[0:4, 0], [11, 12, 14, 15])


def test_save_and_load_round_trip(talk_c_track: FaceTrack, tmp_path: Path) -> None:
    track = FaceTrack(
        boxes=talk_c_track.boxes[:5].copy(),
        points=talk_c_track.points[:5].copy(),
        face_ovals=talk_c_track.face_ovals[:5].copy(),
    )
    track.boxes[2] = -1
    track.points[2] = np.nan
    track.face_ovals[2] = np.nan
    path = tmp_path / "track.npz"
    track.save(path)
    loaded = FaceTrack.load(path)
    np.testing.assert_array_equal(loaded.boxes, track.boxes)
    np.testing.assert_array_equal(loaded.points, track.points)
    np.testing.assert_array_equal(loaded.face_ovals, track.face_ovals)
    assert loaded.boxes.dtype == np.int32 and loaded.points.dtype == np.float32
    assert not loaded.has_face(2) and loaded.has_face(3)
