"""The CPU rasteriser's kernels (numba): triangles and lines into a z-buffered region.

The rules are OpenGL's, as Mesa llvmpipe applies them, so that the pictures match the GL
renderer's (tests/unit/render compare them):

- pixel (i, j) is sampled at its centre, image coordinates (i, j) (the GL path maps image
  pixel centres to window pixel centres);
- vertices snap to 1/256 px (llvmpipe's 8 sub-pixel bits) and coverage is decided with
  exact integer edge functions and a top-left rule: a pixel centre on an edge shared by
  two triangles is drawn by exactly one of them (no holes, no double blends);
- attributes and depth are interpolated linearly (no perspective: w = 1);
- depth: larger image z is nearer; a fragment replaces the stored one only when strictly
  nearer (GL_LESS), so of equal depths the first drawn stays;
- polygon offset (the wireframe's hidden-surface pass) as glPolygonOffset(1, 1) on a
  24-bit depth buffer over z in +-65,536 px: the surface moves back by its largest depth
  slope plus 1/128 px;
- lines: one pixel per column (x-major) or row (y-major) between the end points,
  half-open (the diamond-exit rule in effect), depth tested with GL_LEQUAL.

The vertices come as records (:data:`RECORD`, written by tddfa.render.shading), one
64-byte row per vertex: what a triangle needs from a corner is one cache line. A region is
a rectangle ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the picture; the region buffers
(``depth`` (h, w) float32, ``colour`` (h, w, 3) float32, ``written`` (h, w) uint8) cover
exactly it. Kernels release the GIL; they compile once and are cached on disk (numba
``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

SHIFT = 8  # fixed-point bits below the pixel (as llvmpipe)
SUBPIXEL = 1 << SHIFT
# vertices further out than this (pixels) are dropped with their triangles: the integer
# edge functions must not overflow (2 * 2^28 sub-pixels squared < 2^63)
GUARD = float(1 << 20)
DEPTH_OFFSET_UNITS = 1.0 / 128.0  # glPolygonOffset's 1 unit, in image z pixels
# a vertex record's (M, 8) float64 columns: image-space x, y, z (NaN: the vertex is not
# drawn, nor its triangles and edges: not finite, or beyond GUARD), x and y in fixed
# point (whole numbers, SUBPIXEL per pixel), and the value interpolated into the colour
RECORD = ("x", "y", "z", "fixed_x", "fixed_y", "red", "green", "blue")

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(inline="always")
def _pixel_span(low, high, first, last):
    """Pixel centres (fixed point: i * SUBPIXEL) within [low, high], clipped to
    [first, last]: (start, stop) inclusive, start > stop when none."""
    return max(first, -((-low) >> SHIFT)), min(last, high >> SHIFT)


@njit(inline="always")
def _top_left_bias(dx, dy):
    """0 if the edge (dx, dy) (interior on its positive side, y down) is a top or left
    edge, whose pixel centres are covered; -1 otherwise."""
    if dy < 0 or (dy == 0 and dx > 0):
        return 0
    return -1


@njit(inline="always")
def wound(records, triangles, t):
    """Triangle ``t``'s vertex rows and fixed-point corners, wound the one way the edge
    functions expect, and its doubled area (0: nothing to draw, or a corner not drawn)."""
    i0, i1, i2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
    if not (records[i0, 2] == records[i0, 2] and records[i1, 2] == records[i1, 2]
            and records[i2, 2] == records[i2, 2]):  # fmt: skip
        return i0, i1, i2, 0, 0, 0, 0, 0, 0, 0
    ax, ay = np.int64(records[i0, 3]), np.int64(records[i0, 4])
    bx, by = np.int64(records[i1, 3]), np.int64(records[i1, 4])
    cx, cy = np.int64(records[i2, 3]), np.int64(records[i2, 4])
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    if area < 0:
        return i0, i2, i1, ax, ay, cx, cy, bx, by, -area
    return i0, i1, i2, ax, ay, bx, by, cx, cy, area


@njit(inline="always")
def _edges(ax, ay, bx, by, cx, cy, left, top):
    """The edge functions of a wound triangle at pixel (``left``, ``top``): w0 = E(b -> c),
    w1 = E(c -> a), w2 = E(a -> b), E(p -> q)(P) = (qx - px) (Py - py) - (qy - py) (Px - px),
    positive inside; the top-left rule as a bias of -1 on the other edges, so that "inside"
    is w >= 0 for all three. Returns each edge's (dx, dy), the three biases, the three values
    at the corner (bias included) and their steps per pixel along a row."""
    d0x, d0y = cx - bx, cy - by
    d1x, d1y = ax - cx, ay - cy
    d2x, d2y = bx - ax, by - ay
    bias0 = _top_left_bias(d0x, d0y)
    bias1 = _top_left_bias(d1x, d1y)
    bias2 = _top_left_bias(d2x, d2y)
    sx, sy = left * SUBPIXEL, top * SUBPIXEL
    row0 = d0x * (sy - by) - d0y * (sx - bx) + bias0
    row1 = d1x * (sy - cy) - d1y * (sx - cx) + bias1
    row2 = d2x * (sy - ay) - d2y * (sx - ax) + bias2
    s0, s1, s2 = d0y * SUBPIXEL, d1y * SUBPIXEL, d2y * SUBPIXEL
    return d0x, d0y, d1x, d1y, d2x, d2y, bias0, bias1, bias2, row0, row1, row2, s0, s1, s2


@njit(inline="always")
def _row_span(w0, w1, w2, s0, s1, s2, left, right):
    """The covered pixels of a row starting at ``left`` (edge values w, steps s per
    pixel): (first, last), first > last when none. Branch-free: the pixels of a row
    inside a triangle are contiguous, and a tiny triangle's rows would otherwise cost a
    mispredicted branch at each end."""
    first, last = right + 1, left - 1
    for px in range(left, right + 1):
        inside = (w0 | w1 | w2) >= 0
        last = px if inside else last
        first = min(first, px if inside else right + 1)
        w0 -= s0
        w1 -= s1
        w2 -= s2
    return first, last


@njit(**_JIT)
def fill_triangles(
    records: np.ndarray,
    triangles: np.ndarray,
    region: np.ndarray,
    depth: np.ndarray,
    colour: np.ndarray,
    written: np.ndarray,
) -> None:
    """Draw triangles with a depth test.

    Args:
        records: (M, 8) float64 vertex records (:data:`RECORD`); their values are
            interpolated into ``colour``.
        triangles: (T, 3) int32 rows of ``records`` (either winding).
        region: (4,) int64 x0, y0, x1, y1 of the buffers.
        depth, colour, written: the region's buffers (see the module doc).
    """
    x0, y0, x1, y1 = region[0], region[1], region[2], region[3]
    width = x1 - x0
    depth_at = depth.reshape(-1)
    colour_at = colour.reshape(-1)
    written_at = written.reshape(-1)
    for t in range(triangles.shape[0]):
        i0, i1, i2, ax, ay, bx, by, cx, cy, area = wound(records, triangles, t)
        if area == 0:
            continue
        left, right = _pixel_span(min(ax, bx, cx), max(ax, bx, cx), x0, x1 - 1)
        top, bottom = _pixel_span(min(ay, by, cy), max(ay, by, cy), y0, y1 - 1)
        if left > right or top > bottom:
            continue
        d0x, d0y, d1x, d1y, d2x, d2y, bias0, bias1, bias2, row0, row1, row2, s0, s1, s2 = _edges(
            ax, ay, bx, by, cx, cy, left, top
        )
        inverse = 1.0 / area
        z0, z1, z2 = records[i0, 2], records[i1, 2], records[i2, 2]
        r0, g0, u0 = records[i0, 5], records[i0, 6], records[i0, 7]
        r1, g1, u1 = records[i1, 5], records[i1, 6], records[i1, 7]
        r2, g2, u2 = records[i2, 5], records[i2, 6], records[i2, 7]
        for py in range(top, bottom + 1):
            first, last = _row_span(row0, row1, row2, s0, s1, s2, left, right)
            skip = first - left
            w0 = row0 - bias0 - skip * s0
            w1 = row1 - bias1 - skip * s1
            w2 = row2 - bias2 - skip * s2
            start = (py - y0) * width - x0
            for px in range(first, last + 1):
                b0, b1, b2 = w0 * inverse, w1 * inverse, w2 * inverse
                z = b0 * z0 + b1 * z1 + b2 * z2
                at = start + px
                if z > depth_at[at]:
                    depth_at[at] = z
                    colour_at[3 * at] = b0 * r0 + b1 * r1 + b2 * r2
                    colour_at[3 * at + 1] = b0 * g0 + b1 * g1 + b2 * g2
                    colour_at[3 * at + 2] = b0 * u0 + b1 * u1 + b2 * u2
                    written_at[at] = 1
                w0 -= s0
                w1 -= s1
                w2 -= s2
            row0 += d0x * SUBPIXEL
            row1 += d1x * SUBPIXEL
            row2 += d2x * SUBPIXEL


@njit(**_JIT)
def fill_depth(
    records: np.ndarray, triangles: np.ndarray, region: np.ndarray, depth: np.ndarray
) -> None:
    """The wireframe's hidden-surface pass: the triangles' depth alone (as
    :func:`fill_triangles` computes it), each moved back by glPolygonOffset(1, 1)."""
    x0, y0, x1, y1 = region[0], region[1], region[2], region[3]
    width = x1 - x0
    depth_at = depth.reshape(-1)
    for t in range(triangles.shape[0]):
        i0, i1, i2, ax, ay, bx, by, cx, cy, area = wound(records, triangles, t)
        if area == 0:
            continue
        left, right = _pixel_span(min(ax, bx, cx), max(ax, bx, cx), x0, x1 - 1)
        top, bottom = _pixel_span(min(ay, by, cy), max(ay, by, cy), y0, y1 - 1)
        if left > right or top > bottom:
            continue
        d0x, d0y, d1x, d1y, d2x, d2y, bias0, bias1, bias2, row0, row1, row2, s0, s1, s2 = _edges(
            ax, ay, bx, by, cx, cy, left, top
        )
        inverse = 1.0 / area
        z0, z1, z2 = records[i0, 2], records[i1, 2], records[i2, 2]
        dzdx = -(z0 * d0y + z1 * d1y + z2 * d2y) * inverse * SUBPIXEL
        dzdy = (z0 * d0x + z1 * d1x + z2 * d2x) * inverse * SUBPIXEL
        offset = max(abs(dzdx), abs(dzdy)) + DEPTH_OFFSET_UNITS
        for py in range(top, bottom + 1):
            first, last = _row_span(row0, row1, row2, s0, s1, s2, left, right)
            skip = first - left
            w0 = row0 - bias0 - skip * s0
            w1 = row1 - bias1 - skip * s1
            w2 = row2 - bias2 - skip * s2
            start = (py - y0) * width - x0
            for px in range(first, last + 1):
                z = w0 * inverse * z0 + w1 * inverse * z1 + w2 * inverse * z2 - offset
                at = start + px
                if z > depth_at[at]:
                    depth_at[at] = z
                w0 -= s0
                w1 -= s1
                w2 -= s2
            row0 += d0x * SUBPIXEL
            row1 += d1x * SUBPIXEL
            row2 += d2x * SUBPIXEL


@njit(**_JIT)
def draw_lines(
    records: np.ndarray,
    edges: np.ndarray,
    region: np.ndarray,
    depth: np.ndarray,
    written: np.ndarray,
) -> None:
    """One-pixel lines along ``edges`` (E, 2) int32 rows of ``records``, depth tested
    (GL_LEQUAL, depth written) against ``depth``; their pixels flagged in ``written`` (one
    colour: the blend paints it, :func:`tddfa.render.cpu_blend.composite_colour`). An
    edge's axes and ends are chosen by selects, not branches: which way an edge runs is a
    coin toss for the branch predictor."""
    x0, y0, x1, y1 = region[0], region[1], region[2], region[3]
    width = x1 - x0
    depth_at = depth.reshape(-1)
    written_at = written.reshape(-1)
    for e in range(edges.shape[0]):
        a, b = edges[e, 0], edges[e, 1]
        az, bz = records[a, 2], records[b, 2]
        if not (az == az and bz == bz):  # NaN: a vertex not drawn
            continue
        ax, ay = records[a, 0], records[a, 1]
        bx, by = records[b, 0], records[b, 1]
        x_major = abs(bx - ax) >= abs(by - ay)
        # the major axis (one pixel each) and the minor one
        am, an = (ax, ay) if x_major else (ay, ax)
        bm, bn = (bx, by) if x_major else (by, bx)
        if am == bm:
            continue
        flip = am > bm  # walk from the lower major end
        pm, pn, pz = (bm, bn, bz) if flip else (am, an, az)
        qm, qn, qz = (am, an, az) if flip else (bm, bn, bz)
        lo, hi = (x0, x1) if x_major else (y0, y1)
        low, high = (y0, y1) if x_major else (x0, x1)  # the minor axis' range
        major_stride, minor_stride = (1, width) if x_major else (width, 1)
        base = -(x0 + y0 * width)
        first = max(lo, np.int64(np.ceil(pm)))
        last = min(hi - 1, np.int64(np.ceil(qm)) - 1)
        step = 1.0 / (qm - pm)
        for major in range(first, last + 1):
            t = (major - pm) * step
            minor = np.int64(np.floor(pn + t * (qn - pn) + 0.5))
            if minor < low or minor >= high:
                continue
            z = pz + t * (qz - pz)
            at = base + major * major_stride + minor * minor_stride
            stored = depth_at[at]
            hit = z >= stored
            depth_at[at] = z if hit else stored
            written_at[at] |= hit


@njit(**_JIT)
def fill_discs(
    points: np.ndarray,
    disc: np.ndarray,
    rgb: np.ndarray,
    region: np.ndarray,
    colour: np.ndarray,
    written: np.ndarray,
) -> None:
    """2D overlay triangles (consecutive triples of ``points`` (V, 2) float64 image x, y),
    no depth test, in colour ``rgb``; fragments whose interpolated ``disc`` (V, 2) position
    lies beyond the unit circle are dropped (landmark dots; lines carry zeros)."""
    x0, y0, x1, y1 = region[0], region[1], region[2], region[3]
    for t in range(points.shape[0] // 3):
        i0, i1, i2 = 3 * t, 3 * t + 1, 3 * t + 2
        ax = np.int64(np.floor(points[i0, 0] * SUBPIXEL + 0.5))
        ay = np.int64(np.floor(points[i0, 1] * SUBPIXEL + 0.5))
        bx = np.int64(np.floor(points[i1, 0] * SUBPIXEL + 0.5))
        by = np.int64(np.floor(points[i1, 1] * SUBPIXEL + 0.5))
        cx = np.int64(np.floor(points[i2, 0] * SUBPIXEL + 0.5))
        cy = np.int64(np.floor(points[i2, 1] * SUBPIXEL + 0.5))
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if area == 0:
            continue
        if area < 0:
            i1, i2 = i2, i1
            bx, by, cx, cy = cx, cy, bx, by
            area = -area
        left, right = _pixel_span(min(ax, bx, cx), max(ax, bx, cx), x0, x1 - 1)
        top, bottom = _pixel_span(min(ay, by, cy), max(ay, by, cy), y0, y1 - 1)
        d0x, d0y = cx - bx, cy - by
        d1x, d1y = ax - cx, ay - cy
        d2x, d2y = bx - ax, by - ay
        bias0, bias1, bias2 = (
            _top_left_bias(d0x, d0y),
            _top_left_bias(d1x, d1y),
            _top_left_bias(d2x, d2y),
        )
        inverse = 1.0 / area
        for py in range(top, bottom + 1):
            sy = py * SUBPIXEL
            for px in range(left, right + 1):
                sx = px * SUBPIXEL
                w0 = d0x * (sy - by) - d0y * (sx - bx)
                w1 = d1x * (sy - cy) - d1y * (sx - cx)
                w2 = d2x * (sy - ay) - d2y * (sx - ax)
                if w0 + bias0 < 0 or w1 + bias1 < 0 or w2 + bias2 < 0:
                    continue
                b0, b1, b2 = w0 * inverse, w1 * inverse, w2 * inverse
                u = b0 * disc[i0, 0] + b1 * disc[i1, 0] + b2 * disc[i2, 0]
                v = b0 * disc[i0, 1] + b1 * disc[i1, 1] + b2 * disc[i2, 1]
                if u * u + v * v > 1.0:
                    continue
                row, col = py - y0, px - x0
                for c in range(3):
                    colour[row, col, c] = rgb[c]
                written[row, col] = 1
