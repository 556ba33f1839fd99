"""2D overlays drawn from the 68 landmarks: landmark dots and 3DDFA_V2's pose box.

Both become triangles for the overlay program (``OVERLAY_FLOATS`` per vertex: target
position, disc coordinate, colour, clip rectangle), numpy or CuPy alike:

- ``landmarks``: a disc per landmark (3DDFA_V2's ``cv_draw_landmark`` draws filled green
  circles), radius ``max(1.5, llength / DOT_DIVISOR)`` px so they stay visible on large faces;
- ``pose``: 3DDFA_V2's ``plot_pose_box``: a box with a rear square of half-side ``llength``
  at depth 0 and a front square of half-side and depth ``int(4/3 llength)``, rotated by
  the face's rotation, its rear square centred on the mean of landmarks 0-26 (jaw and
  brows), corners truncated to whole pixels, 13 edges of width ``max(2, llength / LINE_DIVISOR)`` (the original: 2 px).

``llength`` is 3DDFA_V2's ``calc_hypotenuse``: the diagonal of the landmarks' bounding
square, divided by 3. The rotation's rows come from TRANSFORM (its rows are the camera's
rows scaled by the ROI, the second one negated: tddfa.params.model_to_image), so the
overlay needs no other input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tddfa.render.shaders import OVERLAY_FLOATS
from tddfa.xp import get_xp

# Sizes grow with the face (llength, about 0.47 of its width) so large faces stay readable.
DOT_DIVISOR = 80.0
LINE_DIVISOR = 150.0
LANDMARK_COLOR = (0.0, 1.0, 0.0)  # cv_draw_landmark's GREEN
POSE_COLOR = (0.0, 1.0, 40.0 / 255.0)  # plot_pose_box's (40, 255, 0) BGR, as RGB
# plot_pose_box's polyline through the 10 box points (closed), then three more edges
POSE_EDGES = (*((i, i + 1) for i in range(9)), (9, 0), (1, 6), (2, 7), (3, 8))
_CORNERS = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1], [-1, -1]], np.float64)
# two triangles over a unit quad: (along, across) in {0, 1} x {-1, 1}
_QUAD = np.array([[0, -1], [1, -1], [1, 1], [0, -1], [1, 1], [0, 1]], np.float64)


def llength(landmarks: Any) -> Any:
    """(F, 2+, 68) image landmarks -> (F,) 3DDFA_V2's calc_hypotenuse (diagonal / 3)."""
    xp = get_xp(landmarks)
    side = xp.maximum(
        landmarks[:, 0].max(axis=1) - landmarks[:, 0].min(axis=1),
        landmarks[:, 1].max(axis=1) - landmarks[:, 1].min(axis=1),
    )
    return side * float(np.sqrt(2.0)) / 3.0


@dataclasses.dataclass(frozen=True)
class Overlay:
    """Triangles of F faces' overlays in image pixels (xp arrays).

    Attributes:
        position: (F, V, 2) vertex positions (x, y).
        disc: (F, V, 2) position inside a dot, in radii (fragments beyond 1 are dropped);
            zeros for lines.
        color: (F, 3) RGB in [0, 1] of each face's overlay.
    """

    position: Any
    disc: Any
    color: Any

    def bounds(self) -> tuple[Any, Any]:
        """(F, 2) minimum and maximum x, y of each face's overlay."""
        return self.position.min(axis=1), self.position.max(axis=1)

    def rows(self, index: Any, offsets: np.ndarray, clips: np.ndarray) -> Any:
        """Vertex rows of faces ``index`` (xp int array), moved by ``offsets`` (F', 2) into
        the target and clipped to ``clips`` (F', 4) there: (F' * V, OVERLAY_FLOATS) float32."""
        xp = get_xp(self.position)
        faces, count = len(offsets), self.position.shape[1]
        out = xp.empty((faces, count, OVERLAY_FLOATS), xp.float32)
        out[:, :, 0:2] = self.position[index] + xp.asarray(offsets, dtype=xp.float64)[:, None]
        out[:, :, 2:4] = self.disc[index]
        out[:, :, 4:7] = self.color[index][:, None, :]
        out[:, :, 7:11] = xp.asarray(clips, dtype=xp.float32)[:, None, :]
        return out.reshape(faces * count, OVERLAY_FLOATS)


def _colors(xp: Any, faces: int, color: tuple[float, float, float]) -> Any:
    return xp.broadcast_to(xp.asarray(color, dtype=xp.float32), (faces, 3))


def landmark_dots(landmarks: Any) -> Overlay:
    """Discs at the landmarks: (F, 3, 68) image-space landmarks -> (F, 68 * 6) vertices."""
    xp = get_xp(landmarks)
    faces, _, points = landmarks.shape
    radius = xp.maximum(llength(landmarks) / DOT_DIVISOR, 1.5)  # (F,)
    # a square of 1.5 radii around each centre holds the whole disc
    quad = 1.5 * xp.asarray(_QUAD * [2, 1] - [1, 0])  # (6, 2) corners of [-1.5, 1.5]^2
    centre = landmarks[:, :2].transpose(0, 2, 1).astype(xp.float64)  # (F, 68, 2)
    position = centre[:, :, None, :] + radius[:, None, None, None] * quad  # (F, 68, 6, 2)
    disc = xp.broadcast_to(quad, position.shape)
    return Overlay(
        position.reshape(faces, points * 6, 2),
        disc.reshape(faces, points * 6, 2),
        _colors(xp, faces, LANDMARK_COLOR),
    )


def pose_box_points(transforms: Any, landmarks: Any) -> Any:
    """3DDFA_V2's pose box corners in image pixels.

    Args:
        transforms: (F, 3, 4) model->image affine (tddfa.params.model_to_image).
        landmarks: (F, 3, 68) image-space landmarks.

    Returns:
        (F, 10, 2) float64 box points (rear square closed, then front square closed),
        truncated towards zero as the original's np.int32 does.
    """
    xp = get_xp(transforms)
    rows = transforms[:, :2, :3].astype(xp.float64)
    rows = rows / xp.linalg.norm(rows, axis=2, keepdims=True)  # r1 and -r2 of the camera
    rear = llength(landmarks).astype(xp.float64)  # (F,)
    front = xp.floor(4.0 / 3.0 * rear)  # int(): the sizes are positive
    corners = xp.asarray(_CORNERS)  # (5, 2)
    faces = rear.shape[0]
    xy = xp.concatenate([rear[:, None, None] * corners, front[:, None, None] * corners], axis=1)
    z = xp.concatenate([xp.zeros((faces, 5)), xp.broadcast_to(front[:, None], (faces, 5))], axis=1)
    box = xp.concatenate([xy, z[:, :, None]], axis=2)  # (F, 10, 3)
    # original: p2d = P @ p3d, y negated; with T's second row being -scale * P's, that
    # negation is already in it
    points = box @ rows.transpose(0, 2, 1)  # (F, 10, 2)
    points = points - points[:, :4].mean(axis=1, keepdims=True)
    points = points + landmarks[:, :2, :27].astype(xp.float64).mean(axis=2)[:, None, :]
    return xp.trunc(points)


def pose_box_segments(transforms: Any, landmarks: Any) -> Any:
    """(F, 13, 2, 2) float64 edge end points (x, y) of each face's pose box."""
    points = pose_box_points(transforms, landmarks)
    xp = get_xp(points)
    edges = xp.asarray(np.array(POSE_EDGES, np.int64))
    return points[:, edges]  # (F, 13, 2, 2)


def pose_box_lines(transforms: Any, landmarks: Any) -> Overlay:
    """Quads along the pose box edges: (F, 13 * 6) vertices."""
    xp = get_xp(transforms)
    segments = pose_box_segments(transforms, landmarks)  # (F, E, 2, 2)
    faces, edges = segments.shape[:2]
    width = xp.maximum(llength(landmarks).astype(xp.float64) / LINE_DIVISOR, 2.0)[:, None, None]
    start, end = segments[:, :, 0], segments[:, :, 1]
    direction = end - start
    length = xp.linalg.norm(direction, axis=2, keepdims=True)  # (F, E, 1)
    direction = direction / xp.maximum(length, 1e-9)
    normal = xp.stack([-direction[..., 1], direction[..., 0]], axis=-1)  # (F, E, 2)
    quad = xp.asarray(_QUAD)  # (6, 2): along in {0, 1}, across in {-1, 1}
    # each edge runs half its width past both ends, so the corners join
    along = quad[:, 0] * (length + width) - width / 2  # (F, E, 6)
    across = quad[:, 1] * width / 2  # (F, 1, 6)
    position = (
        start[:, :, None, :]
        + along[..., None] * direction[:, :, None, :]
        + across[..., None] * normal[:, :, None, :]
    )  # (F, E, 6, 2)
    disc = xp.zeros((faces, edges * 6, 2))
    return Overlay(position.reshape(faces, edges * 6, 2), disc, _colors(xp, faces, POSE_COLOR))
