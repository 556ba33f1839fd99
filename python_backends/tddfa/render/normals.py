"""Area-weighted per-vertex normals of a fixed triangulation, numpy or CuPy alike.

A vertex normal is the sum of its triangles' edge cross products (length = twice the
triangle's area), unnormalised. The sum is linear in the cross products, so for an affine
map x -> A x + t the normals of the mapped mesh are ``cof(A) @ n`` (cof(A) = det(A) A^-T):
the renderer computes them once in model space and maps them in its vertex shader.

- numpy: one sparse (N, T) incidence product for all faces (scipy), ~3x numpy's bincount;
- CuPy: the fused scatter kernel of :mod:`tddfa.gpu_kernels`, else ``bincount``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tddfa.xp import get_xp

logger = logging.getLogger(__name__)


def _cross_products(xp: Any, vertices: Any, triangles: Any) -> Any:
    """(F, 3, N) vertices -> (F, 3, T) edge cross products (e1 x e2) of every triangle."""
    corners = xp.take(vertices, triangles, axis=2)  # (F, 3 axes, 3 corners, T)
    e1 = corners[:, :, 1] - corners[:, :, 0]
    e2 = corners[:, :, 2] - corners[:, :, 0]
    return xp.stack(
        [
            e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1],
            e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
            e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0],
        ],
        axis=1,
    )


class VertexNormals:
    """Area-weighted vertex normals of one triangulation.

    Args:
        triangles: (3, T) int vertex indices.
    """

    def __init__(self, triangles: np.ndarray) -> None:
        self._triangles = np.ascontiguousarray(triangles, dtype=np.int64)
        self._incidence: dict[int, Any] = {}  # N -> scipy (N, T) CSR, made once
        self._device: dict[tuple[int, str], Any] = {}  # (CUDA device, what) -> CuPy table
        self._fused_failed = False

    # -- host ------------------------------------------------------------------------
    def _host(self, vertices: np.ndarray) -> np.ndarray:
        import scipy.sparse

        faces, _, n = vertices.shape
        t = self._triangles.shape[1]
        incidence = self._incidence.get(n)
        if incidence is None:
            rows = self._triangles.ravel()
            cols = np.tile(np.arange(t), 3)
            incidence = scipy.sparse.csr_matrix(
                (np.ones(rows.size, np.float32), (rows, cols)), shape=(n, t)
            )
            self._incidence = {n: incidence}
        cross = _cross_products(np, vertices.astype(np.float32, copy=False), self._triangles)
        summed = incidence @ cross.reshape(faces * 3, t).T  # (N, F * 3)
        return np.ascontiguousarray(summed.T.reshape(faces, 3, n), dtype=np.float32)

    # -- device ----------------------------------------------------------------------
    def _table(self, xp: Any, device: int, what: str, make) -> Any:
        key = (device, what)
        table = self._device.get(key)
        if table is None:
            with xp.cuda.Device(device):
                table = self._device[key] = make()
        return table

    def _fused(self, vertices: Any) -> Any:
        import cupy

        from tddfa import gpu_kernels

        triangles = self._table(
            cupy, vertices.device.id, "int32",
            lambda: cupy.asarray(self._triangles, dtype=cupy.int32),
        )  # fmt: skip
        return gpu_kernels.vertex_normals(vertices, triangles)

    def _bincount(self, xp: Any, vertices: Any) -> Any:
        faces, _, n = vertices.shape
        triangles = self._table(
            xp, vertices.device.id, "int64", lambda: xp.asarray(self._triangles)
        )
        cross = _cross_products(xp, vertices, triangles)  # (F, 3, T)
        t = triangles.shape[1]
        index = (xp.arange(faces)[:, None, None] * n + triangles[None]).ravel()  # (F, 3, T)
        summed = [
            xp.bincount(
                index,
                weights=xp.broadcast_to(cross[:, axis, None, :], (faces, 3, t)).ravel(),
                minlength=faces * n,
            )
            for axis in range(3)
        ]
        return xp.stack(summed).reshape(3, faces, n).transpose(1, 0, 2).astype(xp.float32)

    def __call__(self, vertices: Any) -> Any:
        """(F, 3, N) float32 vertices -> (F, 3, N) float32 unnormalised vertex normals."""
        xp = get_xp(vertices)
        if xp is np:
            return self._host(vertices)
        if not self._fused_failed:
            try:
                return self._fused(vertices)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile
                logger.warning("fused normals kernel unavailable (%r): generic CuPy path", exc)
                self._fused_failed = True
        return self._bincount(xp, vertices)


def vertex_normals(vertices: Any, triangles: np.ndarray) -> Any:
    """(F, 3, N) vertices, (3, T) triangles -> (F, 3, N) float32 area-weighted normals."""
    return VertexNormals(triangles)(vertices)
