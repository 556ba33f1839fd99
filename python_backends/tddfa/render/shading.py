"""The CPU renderer's vertex stage (numba): per vertex, what the GL mesh vertex shader
computes (tddfa.render.shaders), so both renderers draw the same picture.

One kernel per face, :func:`vertex_records`, writes the vertex records the rasteriser
reads (:data:`tddfa.render.raster.RECORD`), one 64-byte row per vertex the mesh uses:

- the face's model->image affine ``p = T[:, :3] m + T[:, 3]``, z shifted to start at 0
  when asked (the VERTICES convention), over the face's bounding box of every vertex;
- x, y snapped to the rasteriser's fixed point; z NaN where the vertex is not drawn;
- the mode's per-vertex value: the lit colour (3DDFA_V2's ambient + Lambert + specular
  light in the face's normalised frame, over area-weighted vertex normals of the
  image-space mesh: the GL path maps model-space normals by the cofactor of T, the same
  vectors), normals as colours, depth as grey, the PNCC code, texel coordinates of the
  texture image, or the frame sampled at the vertex (uv maps).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tddfa.render.cpu_blend import mix, taps
from tddfa.render.raster import GUARD, SUBPIXEL

# what vertex_records computes (the modes map to these in tddfa.render.cpu_renderer);
# NONE: positions only (the wireframe's lines carry their colour)
NONE, LIT, NORMALS, DEPTH, TABLE, TEXELS, FRAME = range(7)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(inline="always")
def image_box(model, affine):
    """The image-space box of (3, n) float32 ``model`` vertices under the (3, 4) float64
    ``affine``: low x, y, z, high x, y, z over the finite values (low > high when none)."""
    t00, t01, t02, t03 = affine[0, 0], affine[0, 1], affine[0, 2], affine[0, 3]
    t10, t11, t12, t13 = affine[1, 0], affine[1, 1], affine[1, 2], affine[1, 3]
    t20, t21, t22, t23 = affine[2, 0], affine[2, 1], affine[2, 2], affine[2, 3]
    inf = np.inf
    low_x, low_y, low_z, high_x, high_y, high_z = inf, inf, inf, -inf, -inf, -inf
    for v in range(model.shape[1]):
        mx, my, mz = np.float64(model[0, v]), np.float64(model[1, v]), np.float64(model[2, v])
        x = t00 * mx + t01 * my + t02 * mz + t03
        y = t10 * mx + t11 * my + t12 * mz + t13
        z = t20 * mx + t21 * my + t22 * mz + t23
        # finite values only, without branches (numba's min and max test for NaN)
        low_x = x if -inf < x < low_x else low_x
        low_y = y if -inf < y < low_y else low_y
        low_z = z if -inf < z < low_z else low_z
        high_x = x if high_x < x < inf else high_x
        high_y = y if high_y < y < inf else high_y
        high_z = z if high_z < z < inf else high_z
    return low_x, low_y, low_z, high_x, high_y, high_z


@njit(**_JIT)
def vertex_records(
    kind: int,
    model: np.ndarray,
    transform: np.ndarray,
    shift_z: bool,
    used: np.ndarray,
    ids: np.ndarray,
    triangles: np.ndarray,
    light: np.ndarray,
    table: np.ndarray,
    uv: np.ndarray,
    texture_size: np.ndarray,
    frame: np.ndarray,
    records: np.ndarray,
    sums: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``records`` (M, 8) float64 for the vertices ``used`` (M,) int32 (columns of
    ``model``, ascending) of one face and return its (3,) low and high image-space corners
    over every column of ``model`` (finite values only; low > high when there are none).

    Args:
        kind: NONE, LIT, NORMALS, DEPTH, TABLE, TEXELS or FRAME (see the module doc).
        model: (3, n) float32 model-space vertices: all N, or a coarse mesh's vertices then
            some that only complete the box (tddfa.render.coarse_decode); transform: (3, 4)
            float32 affine.
        shift_z: subtract the face's minimum image z.
        ids: (M,) int32 vertex ids of the ``used`` columns (rows of ``table`` and ``uv``).
        triangles: (T, 3) int32 rows of ``used`` (LIT, NORMALS: the normals' triangles).
        light: :meth:`tddfa.render.lighting.Lighting.packed` (LIT).
        table: (3, N) float32 PNCC code (TABLE); uv: (N, 2) float32 BFM texture
            coordinates (TEXELS); texture_size: (2,) width, height (TEXELS).
        frame: (H, W, 3) uint8, sampled bilinearly at each vertex (FRAME).
        sums: (M, 3) float64 scratch (LIT, NORMALS).
    """
    affine = transform.astype(np.float64)
    t00, t01, t02, t03 = affine[0, 0], affine[0, 1], affine[0, 2], affine[0, 3]
    t10, t11, t12, t13 = affine[1, 0], affine[1, 1], affine[1, 2], affine[1, 3]
    t20, t21, t22, t23 = affine[2, 0], affine[2, 1], affine[2, 2], affine[2, 3]
    low_x, low_y, low_z, high_x, high_y, high_z = image_box(model, affine)  # every vertex
    shift = 0.0
    if shift_z and low_z <= high_z:
        shift = low_z
        low_z -= shift
        high_z -= shift
    low = np.array([low_x, low_y, low_z])
    high = np.array([high_x, high_y, high_z])
    hidden = 0
    for j in range(used.shape[0]):  # the records of the vertices used
        v = used[j]
        mx, my, mz = np.float64(model[0, v]), np.float64(model[1, v]), np.float64(model[2, v])
        x = t00 * mx + t01 * my + t02 * mz + t03
        y = t10 * mx + t11 * my + t12 * mz + t13
        z = t20 * mx + t21 * my + t22 * mz + t23
        z = z - shift if shift_z else z
        records[j, 0], records[j, 1], records[j, 2] = x, y, z
        records[j, 3] = np.floor(x * SUBPIXEL + 0.5)
        records[j, 4] = np.floor(y * SUBPIXEL + 0.5)
        hidden += not (abs(x) < GUARD and abs(y) < GUARD and np.isfinite(z))  # NaN: False
    if kind == LIT or kind == NORMALS:
        _vertex_normals(records, triangles, sums)
    _values(kind, ids, records, sums, low, high, light, table, uv, texture_size, frame)
    if hidden:  # after the values: a hidden vertex's position still shapes its normals
        for j in range(used.shape[0]):
            x, y, z = records[j, 0], records[j, 1], records[j, 2]
            if not (abs(x) < GUARD and abs(y) < GUARD and np.isfinite(z)):
                records[j, 2:5] = np.nan, 0.0, 0.0
    return low, high


@njit(inline="always")
def _vertex_normals(records, triangles, sums):
    """Into ``sums`` (M, 3): unit normals facing the camera (+z) of the records' x, y, z,
    area-weighted over ``triangles`` ((0, 0, 1) where no triangle has area)."""
    sums[:] = 0.0
    for t in range(triangles.shape[0]):
        a, b, c = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        e1x = records[b, 0] - records[a, 0]
        e1y = records[b, 1] - records[a, 1]
        e1z = records[b, 2] - records[a, 2]
        e2x = records[c, 0] - records[a, 0]
        e2y = records[c, 1] - records[a, 1]
        e2z = records[c, 2] - records[a, 2]
        nx = e1y * e2z - e1z * e2y
        ny = e1z * e2x - e1x * e2z
        nz = e1x * e2y - e1y * e2x
        for v in (a, b, c):
            sums[v, 0] += nx
            sums[v, 1] += ny
            sums[v, 2] += nz
    for v in range(sums.shape[0]):
        nx, ny, nz = sums[v, 0], sums[v, 1], sums[v, 2]
        length = np.sqrt(nx * nx + ny * ny + nz * nz)
        if length > 0.0 and np.isfinite(length):
            nx, ny, nz = nx / length, ny / length, nz / length
        else:
            nx, ny, nz = 0.0, 0.0, 1.0
        if nz < 0.0:  # two-sided: the winding of the mesh does not matter
            nx, ny, nz = -nx, -ny, -nz
        sums[v, 0], sums[v, 1], sums[v, 2] = nx, ny, nz


@njit(inline="always")
def _power(base, exponent):
    """base ** exponent; small whole exponents (Sim3DR's 5) by multiplication (a libm
    pow per vertex costs more than the rest of its lighting)."""
    if exponent == np.floor(exponent) and 0.0 <= exponent <= 16.0:
        result = 1.0
        for _ in range(np.int64(exponent)):
            result *= base
        return result
    return base**exponent


@njit(inline="always")
def _store(records, j, r, g, b):
    """A vertex's value, rounded to float32 (the precision the GL path interpolates)."""
    records[j, 5] = np.float64(np.float32(r))
    records[j, 6] = np.float64(np.float32(g))
    records[j, 7] = np.float64(np.float32(b))


@njit(inline="always")
def _values(kind, ids, records, normals, low, high, light, table, uv, texture_size, frame):
    """Columns 5-7 of the records: each vertex's value of ``kind`` (``ids``: the records'
    vertex ids)."""
    # LIT: Sim3DR's normalisation, the box centred, its longest side 2
    centre = (low + high) / 2.0
    scale = 2.0 / max(high[0] - low[0], high[1] - low[1], high[2] - low[2], 1e-6)
    z_extent = max(high[2] - low[2], 1e-6)
    height, width = frame.shape[0], frame.shape[1]
    for j in range(ids.shape[0]):
        v = ids[j]
        if kind == NONE:
            _store(records, j, 0.0, 0.0, 0.0)
        elif kind == LIT:
            px = (records[j, 0] - centre[0]) * scale
            py = (records[j, 1] - centre[1]) * scale
            pz = (records[j, 2] - centre[2]) * scale
            lx, ly, lz = light[4] - px, light[5] - py, light[6] - pz
            length = np.sqrt(lx * lx + ly * ly + lz * lz)
            lx, ly, lz = lx / length, ly / length, lz / length
            nx, ny, nz = normals[j, 0], normals[j, 1], normals[j, 2]
            cosine = nx * lx + ny * ly + nz * lz
            shade = light[0] + light[1] * max(cosine, 0.0)
            if cosine > 0.0:
                vx, vy, vz = light[7] - px, light[8] - py, light[9] - pz
                length = np.sqrt(vx * vx + vy * vy + vz * vz)
                rx, ry, rz = 2 * cosine * nx - lx, 2 * cosine * ny - ly, 2 * cosine * nz - lz
                facing = max((vx * rx + vy * ry + vz * rz) / length, 0.0)
                shade += light[2] * min(max(_power(facing, light[3]), 0.0), 1.0)
            shade = min(max(shade, 0.0), 1.0)
            _store(records, j, light[10] * shade, light[11] * shade, light[12] * shade)
        elif kind == NORMALS:
            _store(
                records, j, 0.5 * normals[j, 0] + 0.5, 0.5 * normals[j, 1] + 0.5,
                0.5 * normals[j, 2] + 0.5,
            )  # fmt: skip
        elif kind == DEPTH:
            grey = records[j, 2] / z_extent
            _store(records, j, grey, grey, grey)
        elif kind == TABLE:
            _store(records, j, table[0, v], table[1, v], table[2, v])
        elif kind == TEXELS:  # the image's row 0 is v = 1
            _store(
                records, j, uv[v, 0] * (texture_size[0] - 1.0),
                (1.0 - uv[v, 1]) * (texture_size[1] - 1.0), 0.0,
            )  # fmt: skip
        else:  # FRAME: the frame at the vertex, clamped into it
            x = min(max(records[j, 0], 0.0), width - 1.0)
            y = min(max(records[j, 1], 0.0), height - 1.0)
            if not (np.isfinite(x) and np.isfinite(y)):
                x, y = 0.0, 0.0
            c0, c1, r0, r1, ax, ay = taps(x, y, width, height)
            _store(
                records, j, mix(frame, c0, c1, r0, r1, ax, ay, 0),
                mix(frame, c0, c1, r0, r1, ax, ay, 1), mix(frame, c0, c1, r0, r1, ax, ay, 2),
            )  # fmt: skip
