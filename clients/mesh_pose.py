"""A face's pose as a glTF node can hold it: the model->image map from what the server
returns, and its split into rotations and a scale.

The server returns, per face, the 62 ``PARAMS`` (the camera ``[R | t]`` of the 120x120 crop
it regressed from, shape and expression) and the 68 ``LANDMARKS`` in image pixels, but
not the crop (ROI) box: with tracking the box comes from the previous frame. The
landmarks are the crop-frame landmarks mapped by the box's similar transform
(tddfa.params.model_to_image), x and y each by a scale and an offset, so the box is a
linear least-squares fit of 68 points, exact to float rounding; the library then composes
the model->image affine from the params and that box.

glTF nodes hold translation, rotation and a scale along the node's own axes (T * R * S).
The regressor's R is not a rotation times a uniform scale (its singular values differ by a
few per cent, and the image map scales x, y and z differently), so the linear part is
split by its singular value decomposition M = U S V^T into two nodes: the outer one holds
(t, U, S), the inner one the rotation V^T. Among the 24 equivalent decompositions (signed
permutations of the singular vectors) each frame takes the one nearest the previous
frame's, so the rotations interpolate smoothly between keyframes.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from tddfa import params as face_params
from tddfa.config import REGRESSOR_SIZE


def crop_boxes(params: np.ndarray, landmarks: np.ndarray, bfm: Any) -> np.ndarray:
    """The ROI boxes the faces were regressed from.

    Args:
        params: (F, 62) float32 de-normalised params (``PARAMS`` rows).
        landmarks: (F, 3, 68) image-space landmarks (``LANDMARKS`` rows, same faces).
        bfm: the BFM the server used (its landmark rows: tddfa.bfm.BFM).

    Returns:
        (F, 4) float64 boxes (sx, sy, ex, ey) in image pixels.
    """
    model = face_params.landmark_vertices(params, bfm).astype(np.float64)  # (F, 3, 68)
    camera = face_params.split_params(params.astype(np.float64))[0]
    crop_x = np.einsum("fk,fkn->fn", camera[:, 0, :3], model) + camera[:, 0, 3:] - 1.0
    crop_y = REGRESSOR_SIZE - (np.einsum("fk,fkn->fn", camera[:, 1, :3], model) + camera[:, 1, 3:])
    scale_x, sx = _line_fit(crop_x, landmarks[:, 0].astype(np.float64))
    scale_y, sy = _line_fit(crop_y, landmarks[:, 1].astype(np.float64))
    size = float(REGRESSOR_SIZE)
    return np.stack([sx, sy, sx + size * scale_x, sy + size * scale_y], axis=1)


def _line_fit(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, (slope, offset) of the least-squares line b = slope * a + offset."""
    da = a - a.mean(axis=1, keepdims=True)
    db = b - b.mean(axis=1, keepdims=True)
    denominator = (da * da).sum(axis=1)
    slope = (da * db).sum(axis=1) / np.where(denominator > 0, denominator, 1.0)
    return slope, b.mean(axis=1) - slope * a.mean(axis=1)


def image_transforms(params: np.ndarray, landmarks: np.ndarray, bfm: Any) -> np.ndarray:
    """(F, 3, 4) float64 model->image affines (model micrometres -> image pixels, before
    ``VERTICES``' per-face ``z -= min z``) of the faces, from PARAMS and LANDMARKS: the
    float32 transform the server applies (tddfa.params.model_to_image), widened."""
    boxes = crop_boxes(params, landmarks, bfm)
    return face_params.model_to_image(params, boxes).astype(np.float64)


def _signed_permutations() -> np.ndarray:
    """(24, 3, 3) the rotations among signed permutation matrices."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            g = np.zeros((3, 3))
            g[list(perm), range(3)] = signs
            if np.linalg.det(g) > 0:
                out.append(g)
    return np.array(out)


_SIGNED_PERMUTATIONS = _signed_permutations()


def split_linear(linear: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M = R(outer) @ diag(scale) @ R(inner) for each frame's 3x3 ``linear`` part.

    Args:
        linear: (F, 3, 3) float64, in time order (continuity is kept from frame to frame).

    Returns:
        outer (F, 4), scale (F, 3), inner (F, 4): unit quaternions (x, y, z, w: glTF's
        order), signs chosen so that consecutive quaternions have a positive dot product.
        A mirroring M (det < 0) gets one negative scale.
    """
    u, s, vt = np.linalg.svd(linear)
    flip_u = np.linalg.det(u) < 0  # make both factors proper rotations: U -> U D, S -> D S
    u[flip_u, :, 2] *= -1
    s[flip_u, 2] *= -1
    flip_v = np.linalg.det(vt) < 0
    vt[flip_v, 2, :] *= -1
    s[flip_v, 2] *= -1
    previous_u, previous_vt = np.eye(3), np.eye(3)
    for f in range(len(linear)):
        # U G diag(G^T S G) G^T V^T is the same M for every signed permutation G
        closeness = np.einsum(
            "gij,ij->g", _SIGNED_PERMUTATIONS, u[f].T @ previous_u + vt[f] @ previous_vt.T
        )
        g = _SIGNED_PERMUTATIONS[int(np.argmax(closeness))]
        u[f] = u[f] @ g
        vt[f] = g.T @ vt[f]
        s[f] = np.diag(g.T @ np.diag(s[f]) @ g)
        previous_u, previous_vt = u[f], vt[f]
    return _continuous(quaternions(u)), s, _continuous(quaternions(vt))


def quaternions(rotations: np.ndarray) -> np.ndarray:
    """(F, 3, 3) rotation matrices -> (F, 4) unit quaternions (x, y, z, w).

    Each frame is computed from the largest of its four components (numerically stable).
    Written out rather than taken from scipy.spatial: importing that costs 0.2-0.5 s per
    command on a 2-core machine, a tenth of a short clip's whole run.
    """
    m = rotations
    m00, m01, m02 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    m10, m11, m12 = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    m20, m21, m22 = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    # 4 q_i^2 for i = x, y, z, w, and the candidate (x, y, z, w) * 4 q_i from each
    squares = np.stack(
        [1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22, 1 + m00 + m11 + m22]
    )
    candidates = np.stack(
        [
            np.stack([squares[0], m01 + m10, m02 + m20, m21 - m12], axis=-1),
            np.stack([m01 + m10, squares[1], m12 + m21, m02 - m20], axis=-1),
            np.stack([m02 + m20, m12 + m21, squares[2], m10 - m01], axis=-1),
            np.stack([m21 - m12, m02 - m20, m10 - m01, squares[3]], axis=-1),
        ]
    )  # (4, F, 4)
    best = candidates[np.argmax(squares, axis=0), np.arange(len(m))]
    return best / np.linalg.norm(best, axis=1, keepdims=True)


def _continuous(quaternions: np.ndarray) -> np.ndarray:
    """Flip signs so that consecutive quaternions lie in one hemisphere."""
    out = quaternions.copy()
    for f in range(1, len(out)):
        if np.dot(out[f], out[f - 1]) < 0:
            out[f] = -out[f]
    return out
