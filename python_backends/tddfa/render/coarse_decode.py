"""The BFM decode of the faces the CPU renderer draws with the coarse mesh.

Such a face draws 14,299 of the 38,365 vertices, so only those are decoded (a row-subset
of the bases, tddfa.bfm.SubsetDecoder: 8.6 of the 23 MB a face reads). Its picture still
depends on the box of every vertex (the region, the z shift to 0, the shaded mode's light
frame, the depth mode's scale), as on the GL renderer: the rest of the vertices are
bounded by groups (a centre and a half-size per model axis, for the face's coefficients),
and only the members of the groups that could reach past the box of the drawn vertices in
the image are decoded (about a tenth of the rest). A face's vertices come as one (3, M + X)
float32 array: the coarse mesh's M vertices in its order, then the X that only complete
the box (tddfa.render.faces.MeshFaces.compact).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tddfa.bfm import BFM, SubsetDecoder
from tddfa.render.shading import image_box

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


class CoarseDecoder:
    """(F, 50) coefficients and (F, 3, 4) transforms of coarse faces -> their vertices, one
    (3, M + X) float32 array each (see the module doc); ``ids``: the coarse mesh's (M,)
    ascending vertex ids."""

    def __init__(self, bfm: BFM, ids: np.ndarray) -> None:
        self.subset = SubsetDecoder(bfm, ids)
        self._offsets = self.subset.rest_offsets
        self._rest_mean = self.subset.rest_mean
        self._rest_basis = self.subset.rest_basis

    def __call__(self, alpha: np.ndarray, transforms: np.ndarray) -> list[np.ndarray]:
        alpha = np.ascontiguousarray(alpha, dtype=np.float32)
        drawn = self.subset.vertices(alpha)
        faces = []
        for face in range(alpha.shape[0]):
            centres, sizes = self.subset.rest_bounds(alpha[face])
            extra = np.empty((3, len(self._rest_mean)), np.float32)
            count = bounding_vertices(
                drawn[face], np.ascontiguousarray(transforms[face], dtype=np.float32),
                centres, sizes, self._offsets, self._rest_mean, self._rest_basis,
                alpha[face], extra,
            )  # fmt: skip
            faces.append(np.concatenate([drawn[face], extra[:, :count]], axis=1))
        return faces


@njit(**_JIT)
def bounding_vertices(
    drawn: np.ndarray,
    transform: np.ndarray,
    centres: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    rest_mean: np.ndarray,
    rest_basis: np.ndarray,
    alpha: np.ndarray,
    out: np.ndarray,
) -> int:
    """Decode into ``out`` (3, R) the members of every group that could reach past the
    image-space box of ``drawn`` (3, M) float32 model vertices under ``transform`` (3, 4):
    groups whose ``centres`` (G, 3) +- ``sizes`` (G, 3) do not lie strictly inside it on
    every image axis (NaN: they do not). Members ``offsets[g]:offsets[g + 1]`` of
    ``rest_mean`` (R, 3) + ``rest_basis`` (R, 3, 50) ``alpha``. Returns their count."""
    t = transform.astype(np.float64)
    t00, t01, t02, t03 = t[0, 0], t[0, 1], t[0, 2], t[0, 3]
    t10, t11, t12, t13 = t[1, 0], t[1, 1], t[1, 2], t[1, 3]
    t20, t21, t22, t23 = t[2, 0], t[2, 1], t[2, 2], t[2, 3]
    low_x, low_y, low_z, high_x, high_y, high_z = image_box(drawn, t)  # as the vertex stage's
    count = 0
    for g in range(offsets.shape[0] - 1):
        cx, cy, cz = centres[g, 0], centres[g, 1], centres[g, 2]
        sx, sy, sz = sizes[g, 0], sizes[g, 1], sizes[g, 2]
        x = t00 * cx + t01 * cy + t02 * cz + t03
        y = t10 * cx + t11 * cy + t12 * cz + t13
        z = t20 * cx + t21 * cy + t22 * cz + t23
        rx = abs(t00) * sx + abs(t01) * sy + abs(t02) * sz
        ry = abs(t10) * sx + abs(t11) * sy + abs(t12) * sz
        rz = abs(t20) * sx + abs(t21) * sy + abs(t22) * sz
        if (low_x < x - rx and x + rx < high_x and low_y < y - ry and y + ry < high_y
                and low_z < z - rz and z + rz < high_z):  # fmt: skip
            continue
        for m in range(offsets[g], offsets[g + 1]):
            vx = np.float64(rest_mean[m, 0])
            vy = np.float64(rest_mean[m, 1])
            vz = np.float64(rest_mean[m, 2])
            for j in range(alpha.shape[0]):
                a = np.float64(alpha[j])
                vx += np.float64(rest_basis[m, 0, j]) * a
                vy += np.float64(rest_basis[m, 1, j]) * a
                vz += np.float64(rest_basis[m, 2, j]) * a
            out[0, count], out[1, count], out[2, count] = vx, vy, vz
            count += 1
    return count
