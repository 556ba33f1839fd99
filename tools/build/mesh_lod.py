"""A coarser triangulation of the BFM mesh over a subset of its own vertices (build time).

Small faces (a 720p frame's) get about one triangle per pixel from the 76,073-triangle
mesh, and a software rasteriser (Mesa llvmpipe) pays per triangle: drawing them with about
a third of the triangles halves the renderer's time and changes the picture by well under a
grey level on average. The coarse mesh uses a subset of the original vertices, so the
same decoded vertex buffer serves both (tddfa.render draws either index list):

1. keep vertices spread evenly over the mean face: a Poisson-disk subset (no two kept
   vertices closer than ``radius`` on the mean shape, visiting vertices in a fixed
   pseudo-random order);
2. triangulate them in the BFM's UV plane (Delaunay): the UV map flattens the face;
3. drop triangles outside the mesh's UV outline (their centroid outside the boundary loop
   of the original triangles) and slivers longer than 4 radii on the mean shape;
4. wind them as the original triangles are wound in UV.
"""

from __future__ import annotations

import numpy as np

SEED = 0  # the visiting order: fixed, so builds are reproducible
RADIUS_OF_MEAN_EDGE = 0.95  # Poisson radius / mean edge length: about 37 % of the triangles


def _signed_areas(uv: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    p = uv[triangles]  # (T, 3, 2)
    return (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (
        p[:, 2, 0] - p[:, 0, 0]
    )


def _poisson_subset(points: np.ndarray, radius: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    blocked = np.zeros(len(points), bool)
    kept = []
    for vertex in np.random.default_rng(SEED).permutation(len(points)):
        if blocked[vertex]:
            continue
        kept.append(vertex)
        blocked[tree.query_ball_point(points[vertex], radius)] = True
    return np.sort(np.asarray(kept))


def _inside(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Even-odd rule: ``points`` (M, 2) inside the polygon(s) of edges start -> end."""
    inside = np.zeros(len(points), bool)
    for at in range(0, len(points), 2048):
        p = points[at : at + 2048, None, :]
        crosses = (start[None, :, 1] > p[..., 1]) != (end[None, :, 1] > p[..., 1])
        dy = end[None, :, 1] - start[None, :, 1]
        dy = np.where(dy == 0, 1e-300, dy)
        x = (
            start[None, :, 0]
            + (p[..., 1] - start[None, :, 1]) * (end[None, :, 0] - start[None, :, 0]) / dy
        )
        inside[at : at + 2048] = (crosses & (p[..., 0] < x)).sum(axis=1) % 2 == 1
    return inside


def coarse_triangles(
    mean_shape: np.ndarray,
    uv: np.ndarray,
    triangles: np.ndarray,
    radius_of_mean_edge: float = RADIUS_OF_MEAN_EDGE,
) -> np.ndarray:
    """The coarse triangulation.

    Args:
        mean_shape: (N, 3) vertex positions of the mean face.
        uv: (N, 2) BFM texture coordinates.
        triangles: (3, T) the full mesh's triangles.
        radius_of_mean_edge: Poisson radius in mean edge lengths (larger: coarser).

    Returns:
        (3, T') int32 triangles over a subset of the same vertex ids.
    """
    from scipy.spatial import Delaunay

    mean_shape = np.asarray(mean_shape, np.float64)
    uv = np.asarray(uv, np.float64)
    full = np.asarray(triangles, np.int64).T  # (T, 3)
    edge = np.linalg.norm(mean_shape[full[:, 0]] - mean_shape[full[:, 1]], axis=1).mean()
    radius = radius_of_mean_edge * edge
    kept = _poisson_subset(mean_shape, radius)
    coarse = kept[Delaunay(uv[kept]).simplices]  # (M, 3) original vertex ids
    # the outline: edges of the full mesh used by one triangle only
    edges = np.sort(np.concatenate([full[:, [0, 1]], full[:, [1, 2]], full[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    outline = unique[counts == 1]
    inside = _inside(uv[coarse].mean(axis=1), uv[outline[:, 0]], uv[outline[:, 1]])
    longest = np.max(
        [np.linalg.norm(mean_shape[coarse[:, i]] - mean_shape[coarse[:, (i + 1) % 3]], axis=1)
         for i in range(3)],
        axis=0,
    )  # fmt: skip
    coarse = coarse[inside & (longest < 4 * radius)]
    winding = np.sign(np.median(_signed_areas(uv, full)))
    flip = np.sign(_signed_areas(uv, coarse)) != winding
    coarse[flip] = coarse[flip][:, ::-1]
    return np.ascontiguousarray(coarse.T, dtype=np.int32)
