"""A glTF 2.0 binary (.glb) assembled from numpy arrays, on pygltflib's document model.

:class:`GlbBuilder` keeps one binary buffer: every array added becomes a buffer view
(4-byte aligned, with the vertex or index target where it is geometry) and an accessor
with the component type, the element type and, where the specification requires them
(vertex positions, morph target positions, animation key times), exact min/max bounds.
The caller adds meshes, nodes and animations as pygltflib objects that refer to those
accessors, then :meth:`GlbBuilder.write` stores the file (as it is: stage it with
tddfa.files). The shared pieces of the face meshes (triangles, texture coordinates, the
material) are made here once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pygltflib as gl

GENERATOR = "tddfa-triton"
# glTF component types and element types by numpy dtype / trailing dimension
_COMPONENT = {
    np.dtype(np.int8): gl.BYTE,
    np.dtype(np.uint8): gl.UNSIGNED_BYTE,
    np.dtype(np.int16): gl.SHORT,
    np.dtype(np.uint16): gl.UNSIGNED_SHORT,
    np.dtype(np.uint32): gl.UNSIGNED_INT,
    np.dtype(np.float32): gl.FLOAT,
}
_ELEMENT = {1: gl.SCALAR, 2: gl.VEC2, 3: gl.VEC3, 4: gl.VEC4}


class GlbBuilder:
    """One glTF document and its binary chunk, built up array by array."""

    def __init__(self, extras: dict[str, Any] | None = None):
        self.gltf = gl.GLTF2(asset=gl.Asset(generator=GENERATOR, version="2.0"))
        if extras:
            self.gltf.asset.extras = extras
        self._chunks: list[bytes] = []
        self._size = 0

    def accessor(
        self,
        array: np.ndarray,
        target: int | None = None,
        bounds: bool = False,
        normalized: bool = False,
    ) -> int:
        """Add ``array`` ((count,) scalars or (count, 1..4) vectors of a glTF component
        type) as a buffer view + accessor; returns the accessor's index.

        ``target``: ``pygltflib.ARRAY_BUFFER`` for vertex attributes,
        ``ELEMENT_ARRAY_BUFFER`` for indices, None for animation data. ``bounds``: write
        min/max (required for positions and animation inputs).
        """
        array = np.ascontiguousarray(array)
        if array.dtype not in _COMPONENT:
            raise TypeError(f"no glTF component type for {array.dtype}")
        width = 1 if array.ndim == 1 else array.shape[1]
        if array.ndim > 2 or width not in _ELEMENT or len(array) == 0:
            raise ValueError(f"an accessor holds (count, 1..4) elements, got {array.shape}")
        data = array.tobytes()
        view = gl.BufferView(buffer=0, byteOffset=self._size, byteLength=len(data), target=target)
        self._chunks.append(data)
        self._size += len(data)
        padding = -self._size % 4  # every view starts 4-byte aligned
        if padding:
            self._chunks.append(b"\0" * padding)
            self._size += padding
        self.gltf.bufferViews.append(view)
        accessor = gl.Accessor(
            bufferView=len(self.gltf.bufferViews) - 1,
            componentType=_COMPONENT[array.dtype],
            count=len(array),
            type=_ELEMENT[width],
            normalized=True if normalized else None,
        )
        if bounds:
            columns = np.ascontiguousarray(array.reshape(len(array), width).T)  # fast reductions
            accessor.min = [_number(v) for v in columns.min(axis=1)]
            accessor.max = [_number(v) for v in columns.max(axis=1)]
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1

    def vertices(self, array: np.ndarray, positions: bool = False) -> int:
        """A float32 (N, 2|3) vertex attribute (``positions``: with its bounds)."""
        return self.accessor(np.asarray(array, np.float32), gl.ARRAY_BUFFER, bounds=positions)

    def triangles(self, triangles: np.ndarray) -> int:
        """(3, T) triangle vertex indices as an index accessor (uint16 where they fit)."""
        flat = np.asarray(triangles).T.reshape(-1)
        dtype = np.uint16 if flat.max() < 0xFFFF else np.uint32  # 0xFFFF restarts strips
        return self.accessor(flat.astype(dtype), gl.ELEMENT_ARRAY_BUFFER)

    def add(self, kind: str, item: Any) -> int:
        """Append ``item`` to the document's list ``kind`` ("meshes", "nodes", ...);
        returns its index."""
        items = getattr(self.gltf, kind)
        items.append(item)
        return len(items) - 1

    def skin_material(self) -> int:
        """A plain, matt, light skin-toned material (the meshes carry no texture)."""
        return self.add(
            "materials",
            gl.Material(
                name="face",
                pbrMetallicRoughness=gl.PbrMetallicRoughness(
                    baseColorFactor=[0.8, 0.66, 0.58, 1.0], metallicFactor=0.0, roughnessFactor=0.7
                ),
            ),
        )

    def write(self, path: str | os.PathLike, root_nodes: list[int]) -> Path:
        """Write the document, its scene holding ``root_nodes``, to ``path`` as .glb."""
        self.gltf.scenes = [gl.Scene(nodes=list(root_nodes))]
        self.gltf.scene = 0
        self.gltf.buffers = [gl.Buffer(byteLength=self._size)]
        self.gltf.set_binary_blob(b"".join(self._chunks))
        path = Path(path)
        self.gltf.save_binary(str(path))
        return path


def _number(value: Any) -> float | int:
    """A JSON number for a bound: floats exactly as stored (float32 widened), ints as ints."""
    return int(value) if np.issubdtype(type(value), np.integer) else float(value)


def unit_normals(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, 3) float32 unit area-weighted vertex normals of (N, 3) ``positions`` for (3, T)
    triangles, as their winding orients them; a vertex of no triangle gets +Z (glTF
    requires unit normals). The renderer's tddfa.render.normals computes the same sums, but
    importing it loads OpenGL, which a client machine need not have."""
    p = np.asarray(positions, np.float64)
    t = np.asarray(triangles, np.int64)
    cross = np.cross(p[t[1]] - p[t[0]], p[t[2]] - p[t[0]])  # (T, 3), length = 2 x area
    corners = t.reshape(-1)
    normals = np.stack(
        [np.bincount(corners, np.tile(cross[:, axis], 3), len(p)) for axis in range(3)], axis=1
    )
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    unit = np.where(length > 0, normals / np.where(length > 0, length, 1), [0.0, 0.0, 1.0])
    return unit.astype(np.float32)
