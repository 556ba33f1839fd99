"""The CPU renderer's vertex stage (numba): per vertex, what the GL mesh vertex shader
computes (tddfa.render.shaders), so both renderers draw the same picture.

- :func:`to_image`: the face's model->image affine ``p = T[:, :3] m + T[:, 3]``, z shifted
  to start at 0 when asked (the VERTICES convention), and the face's bounding box;
- :func:`vertex_normals`: area-weighted vertex normals of the image-space mesh (the GL
  path maps model-space normals by the cofactor of T: the same vectors), unit length and
  turned towards the camera (two-sided);
- :func:`vertex_colours`: each mode's per-vertex value: the lit colour (3DDFA_V2's
  ambient + Lambert + specular light in the face's normalised frame), normals as colours,
  depth as grey, the PNCC code, texel coordinates of the texture image, or the frame
  sampled at the vertex (uv maps).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tddfa.render.raster import bilinear

# what vertex_colours computes (the modes map to these in tddfa.render.cpu_renderer)
LIT, NORMALS, DEPTH, TABLE, TEXELS, FRAME = range(6)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_JIT)
def to_image(
    model: np.ndarray, transform: np.ndarray, shift_z: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3, N) float32 model-space vertices, (3, 4) float32 affine -> (3, N) float64
    image-space positions (z minus its minimum when ``shift_z``), and their (3,) low and
    high corners (finite values only; low > high when there are none)."""
    n = model.shape[1]
    out = np.empty((3, n), np.float64)
    low = np.full(3, np.inf)
    high = np.full(3, -np.inf)
    for v in range(n):
        mx, my, mz = np.float64(model[0, v]), np.float64(model[1, v]), np.float64(model[2, v])
        for axis in range(3):
            value = (
                transform[axis, 0] * mx
                + transform[axis, 1] * my
                + transform[axis, 2] * mz
                + transform[axis, 3]
            )
            out[axis, v] = value
            if np.isfinite(value):
                low[axis] = min(low[axis], value)
                high[axis] = max(high[axis], value)
    if shift_z and low[2] <= high[2]:
        shift = low[2]
        for v in range(n):
            out[2, v] -= shift
        low[2] -= shift
        high[2] -= shift
    return out, low, high


@njit(**_JIT)
def vertex_normals(positions: np.ndarray, triangles: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(3, N) positions, (T, 3) int32 triangles over the vertices ``used`` (M,) int32 ->
    (3, N) unit normals facing the camera (+z) at those vertices ((0, 0, 1) where no
    triangle has area; other vertices undefined)."""
    n = positions.shape[1]
    sums = np.zeros((n, 3), np.float64)
    for t in range(triangles.shape[0]):
        a, b, c = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        e1x = positions[0, b] - positions[0, a]
        e1y = positions[1, b] - positions[1, a]
        e1z = positions[2, b] - positions[2, a]
        e2x = positions[0, c] - positions[0, a]
        e2y = positions[1, c] - positions[1, a]
        e2z = positions[2, c] - positions[2, a]
        nx = e1y * e2z - e1z * e2y
        ny = e1z * e2x - e1x * e2z
        nz = e1x * e2y - e1y * e2x
        for v in (a, b, c):
            sums[v, 0] += nx
            sums[v, 1] += ny
            sums[v, 2] += nz
    out = np.empty((3, n), np.float64)
    for v in used:
        nx, ny, nz = sums[v, 0], sums[v, 1], sums[v, 2]
        length = np.sqrt(nx * nx + ny * ny + nz * nz)
        if length > 0.0 and np.isfinite(length):
            nx, ny, nz = nx / length, ny / length, nz / length
        else:
            nx, ny, nz = 0.0, 0.0, 1.0
        if nz < 0.0:  # two-sided: the winding of the mesh does not matter
            nx, ny, nz = -nx, -ny, -nz
        out[0, v], out[1, v], out[2, v] = nx, ny, nz
    return out


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


@njit(**_JIT)
def vertex_colours(
    kind: int,
    used: np.ndarray,
    positions: np.ndarray,
    normals: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    light: np.ndarray,
    table: np.ndarray,
    uv: np.ndarray,
    texture_size: np.ndarray,
    frame: np.ndarray,
) -> np.ndarray:
    """(N, 3) float32 per-vertex values of ``kind`` (LIT, NORMALS, DEPTH, TABLE, TEXELS,
    FRAME; see the module doc) at the vertices ``used`` (M,) int32 (others undefined).

    Args:
        positions: (3, N) image-space positions; normals: (3, N) (LIT, NORMALS).
        low, high: (3,) the face's bounding box (LIT: its frame; DEPTH: its z extent).
        light: :meth:`tddfa.render.lighting.Lighting.packed`.
        table: (3, N) float32 PNCC code (TABLE); uv: (N, 2) float32 BFM texture
            coordinates (TEXELS); texture_size: (2,) width, height (TEXELS).
        frame: (H, W, 3) uint8, sampled bilinearly at each vertex (FRAME).
    """
    n = positions.shape[1]
    out = np.empty((n, 3), np.float32)
    # LIT: Sim3DR's normalisation, the box centred, its longest side 2
    centre = (low + high) / 2.0
    scale = 2.0 / max(high[0] - low[0], high[1] - low[1], high[2] - low[2], 1e-6)
    z_extent = max(high[2] - low[2], 1e-6)
    for v in used:
        if kind == LIT:
            px = (positions[0, v] - centre[0]) * scale
            py = (positions[1, v] - centre[1]) * scale
            pz = (positions[2, v] - centre[2]) * scale
            lx, ly, lz = light[4] - px, light[5] - py, light[6] - pz
            length = np.sqrt(lx * lx + ly * ly + lz * lz)
            lx, ly, lz = lx / length, ly / length, lz / length
            nx, ny, nz = normals[0, v], normals[1, v], normals[2, v]
            cosine = nx * lx + ny * ly + nz * lz
            shade = light[0] + light[1] * max(cosine, 0.0)
            if cosine > 0.0:
                vx, vy, vz = light[7] - px, light[8] - py, light[9] - pz
                length = np.sqrt(vx * vx + vy * vy + vz * vz)
                rx, ry, rz = 2 * cosine * nx - lx, 2 * cosine * ny - ly, 2 * cosine * nz - lz
                facing = max((vx * rx + vy * ry + vz * rz) / length, 0.0)
                shade += light[2] * min(max(_power(facing, light[3]), 0.0), 1.0)
            shade = min(max(shade, 0.0), 1.0)
            for c in range(3):
                out[v, c] = light[10 + c] * shade
        elif kind == NORMALS:
            for c in range(3):
                out[v, c] = 0.5 * normals[c, v] + 0.5
        elif kind == DEPTH:
            grey = positions[2, v] / z_extent
            for c in range(3):
                out[v, c] = grey
        elif kind == TABLE:
            for c in range(3):
                out[v, c] = table[c, v]
        elif kind == TEXELS:  # the image's row 0 is v = 1
            out[v, 0] = uv[v, 0] * (texture_size[0] - 1.0)
            out[v, 1] = (1.0 - uv[v, 1]) * (texture_size[1] - 1.0)
            out[v, 2] = 0.0
        else:  # FRAME: the frame at the vertex, clamped into it
            x = min(max(positions[0, v], 0.0), frame.shape[1] - 1.0)
            y = min(max(positions[1, v], 0.0), frame.shape[0] - 1.0)
            if not (np.isfinite(x) and np.isfinite(y)):
                x, y = 0.0, 0.0
            for c in range(3):
                out[v, c] = bilinear(frame, x, y, c)
    return out
