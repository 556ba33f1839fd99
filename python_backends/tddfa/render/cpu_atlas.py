"""The uv mode on the CPU (numba): each face's UV map, drawn from a raster made once.

A uv map draws the mesh at its texture coordinates, the same place for every face and
frame; only the colours (the frame sampled at each vertex) change. So the renderer
rasterises the map once (:func:`cover_triangles`: which triangle draws each pixel, the
first drawn winning, as the z-buffered pass of equal depths does) and a frame only
interpolates its colours there (:func:`paint_atlas`), with the weights and rounding of
:func:`tddfa.render.raster.fill_triangles` and ``composite``: the same picture to the bit
for a tenth of the work (a 720p face's map has about 76,000 triangles of a pixel or less).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tddfa.render.cpu_blend import unorm8
from tddfa.render.raster import SUBPIXEL, fill_triangles, wound

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


def cover_triangles(records: np.ndarray, triangles: np.ndarray, side: int) -> np.ndarray:
    """(side, side) int32: the triangle (row of ``triangles``) drawn at each pixel of the
    square ``[0, side)^2``, -1 where none is.

    Args:
        records: (M, 8) vertex records of the map (:data:`tddfa.render.raster.RECORD`),
            all at depth 0.
        triangles: (T, 3) int32 rows of ``records``.
    """
    region = np.array([0, 0, side, side], np.int64)
    depth = np.full((side, side), -np.inf, np.float32)
    winner = np.zeros((side, side, 3), np.float32)
    written = np.zeros((side, side), np.uint8)
    # each triangle's number as its colour: the depth test keeps the first one drawn
    ids = np.arange(len(triangles), dtype=np.float64)
    numbered = records[triangles.ravel()].copy()
    numbered[:, 5] = np.repeat(ids, 3)
    flat = np.arange(numbered.shape[0], dtype=np.int32).reshape(-1, 3)
    fill_triangles(numbered, flat, region, depth, winner, written)
    out = np.where(written == 1, np.rint(winner[:, :, 0]), -1).astype(np.int32)
    return out


@njit(**_JIT)
def paint_atlas(
    records: np.ndarray,
    triangles: np.ndarray,
    winner: np.ndarray,
    values: np.ndarray,
    out: np.ndarray,
    column: int,
) -> None:
    """Draw one face's map into ``out`` (S, K * S, 3) uint8 at columns ``column`` ..
    ``column + S - 1``: each covered pixel of ``winner`` (:func:`cover_triangles`) gets
    its triangle's ``values`` (M, 8) records' colours, interpolated at the pixel centre."""
    side = winner.shape[0]
    pixels, drawn = winner.reshape(-1), out.reshape(-1)
    for py in range(side):
        sy = py * SUBPIXEL
        start = 3 * (py * out.shape[1] + column)
        for px in range(side):
            t = pixels[py * side + px]
            if t < 0:
                continue
            i0, i1, i2, ax, ay, bx, by, cx, cy, area = wound(records, triangles, t)
            sx = px * SUBPIXEL
            inverse = 1.0 / area
            # the edge functions at the pixel, as the rasteriser's steps reach them
            b0 = ((cx - bx) * (sy - by) - (cy - by) * (sx - bx)) * inverse
            b1 = ((ax - cx) * (sy - cy) - (ay - cy) * (sx - cx)) * inverse
            b2 = ((bx - ax) * (sy - ay) - (by - ay) * (sx - ax)) * inverse
            at = start + 3 * px
            for c in range(3):
                value = b0 * values[i0, 5 + c] + b1 * values[i1, 5 + c] + b2 * values[i2, 5 + c]
                drawn[at + c] = unorm8(np.float64(np.float32(value)))
