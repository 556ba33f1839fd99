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
    inf = np.inf
    low = np.full(3, inf)
    high = np.full(3, -inf)
    for v in range(drawn.shape[1]):
        mx, my, mz = np.float64(drawn[0, v]), np.float64(drawn[1, v]), np.float64(drawn[2, v])
        for k in range(3):
            c = t[k, 0] * mx + t[k, 1] * my + t[k, 2] * mz + t[k, 3]
            low[k] = c if -inf < c < low[k] else low[k]
            high[k] = c if high[k] < c < inf else high[k]
    count = 0
    for g in range(offsets.shape[0] - 1):
        inside = True
        for k in range(3):
            c = t[k, 0] * centres[g, 0] + t[k, 1] * centres[g, 1] + t[k, 2] * centres[g, 2]
            c += t[k, 3]
            r = abs(t[k, 0]) * sizes[g, 0] + abs(t[k, 1]) * sizes[g, 1]
            r += abs(t[k, 2]) * sizes[g, 2]
            inside = inside and low[k] < c - r and c + r < high[k]
        if inside:
            continue
        for m in range(offsets[g], offsets[g + 1]):
            for axis in range(3):
                value = np.float64(rest_mean[m, axis])
                for j in range(alpha.shape[0]):
                    value += np.float64(rest_basis[m, axis, j]) * np.float64(alpha[j])
                out[axis, count] = np.float32(value)
            count += 1
    return count
