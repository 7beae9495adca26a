"""Which of the project's 68 landmarks play which part in this family.

The project's landmarks are the 68 iBUG roles taken from MediaPipe FaceMesh vertices
(`lipsync.face.landmarks.IBUG68_FROM_MESH`). IP_LAP works on 131 FaceMesh vertices (the end points of its 125
drawing edges) and splits them into 74 "pose" points (upper face: the oval above the jaw, brows, nose, eyes)
that the landmark transformer reads and 57 "content" points (lower jaw and lips) that it predicts.

Our 68 points are a subset of roles on the same mesh: 62 of them are vertices of IP_LAP's set and the other 6
(nose tip 30 and the nose base 31-35) are nose points, which IP_LAP also counts as pose. So each of our points
takes the side its IP_LAP counterpart is on:

* pose (37): jaw 0-2 and 14-16 (FaceMesh 127, 234, 93 and 323, 454, 356, the oval above the jaw line in
  IP_LAP), brows 17-26, nose 27-35, eyes 36-47;
* content (31): jaw 3-13 (FaceMesh 58 … 288, all on IP_LAP's lower jaw) then lips 48-67 (outer 48-59,
  inner 60-67), in that order, as IP_LAP orders jaw before lips.

Landmarks are (2, 68) arrays of x and y rows, each in [0, 1] across the face box (IP_LAP's normalisation).
"""

from __future__ import annotations

from itertools import pairwise

LANDMARK_COUNT = 68
COORDINATES = 2  # x, y rows

JAW_POSE_LEFT = (0, 1, 2)
JAW_CONTENT = tuple(range(3, 14))
JAW_POSE_RIGHT = (14, 15, 16)
BROWS = tuple(range(17, 27))
NOSE = tuple(range(27, 36))
EYES = tuple(range(36, 48))
OUTER_LIPS = tuple(range(48, 60))
INNER_LIPS = tuple(range(60, 68))
LIPS = OUTER_LIPS + INNER_LIPS

POSE_POINTS: tuple[int, ...] = tuple(sorted(JAW_POSE_LEFT + JAW_POSE_RIGHT + BROWS + NOSE + EYES))
CONTENT_POINTS: tuple[int, ...] = JAW_CONTENT + LIPS  # IP_LAP's order: jaw, then lips
POSE_COUNT = len(POSE_POINTS)  # n_p = 37 (IP_LAP: 74)
JAW_COUNT = len(JAW_CONTENT)  # 11 (IP_LAP: 17)
LIP_COUNT = len(LIPS)  # 20 (IP_LAP: 40)
CONTENT_COUNT = len(CONTENT_POINTS)  # 31 (IP_LAP: 57)
# A reference landmark set is pose then content, as IP_LAP concatenates them: n_r = 68 (IP_LAP: 131).
REFERENCE_ORDER: tuple[int, ...] = POSE_POINTS + CONTENT_POINTS


def _chain(points: tuple[int, ...], closed: bool = False) -> tuple[tuple[int, int], ...]:
    pairs = tuple(pairwise(points))
    return (*pairs, (points[-1], points[0])) if closed else pairs


# Sketch edges: each contour of the iBUG layout as a polyline, the closed ones (eyes, lips) closed. IP_LAP
# draws its 125 FaceMesh contour edges the same way (oval without the forehead, brows, nose, eyes, lips).
LIP_EDGES = _chain(OUTER_LIPS, closed=True) + _chain(INNER_LIPS, closed=True)
FACE_EDGES: tuple[tuple[int, int], ...] = (
    _chain(tuple(range(0, 17)))  # jaw line, ear to ear
    + _chain(tuple(range(17, 22)))  # image-left brow
    + _chain(tuple(range(22, 27)))  # image-right brow
    + _chain(tuple(range(27, 31)))  # nose bridge
    + _chain(tuple(range(31, 36)))  # nose base
    + _chain(tuple(range(36, 42)), closed=True)  # image-left eye
    + _chain(tuple(range(42, 48)), closed=True)  # image-right eye
    + LIP_EDGES
)
