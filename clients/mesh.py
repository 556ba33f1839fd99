"""``tddfa image --mesh``: every face's dense mesh in ONE file (.obj or .ply), image space.

Coordinates are the ``VERTICES`` output's: x right and y down in image pixels, z towards the
camera with its minimum at 0 per face. Triangles are wound so that their normals (right-hand
rule) point towards the camera, +z. Each vertex carries its colour sampled from the image
(nearest pixel, clamped to the frame: 3DDFA_V2's ``get_colors``).

- .obj: one object per face (``o face_1`` ... with a group of the same name), ``v x y z r g b``
  with colours in [0, 1] (the common vertex-colour extension), faces indexed across the file.
- .ply: binary little endian; ``vertex`` (x, y, z float, red, green, blue uchar, face int)
  and ``face`` (vertex_indices, face int): the ``face`` property says which face of the
  picture (1, 2, ...) an element belongs to.

Derived from the Basel Face Model: academic, non-commercial use only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tddfa.files import atomic_path

MESH_SUFFIXES = (".obj", ".ply")


def vertex_colors(image: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image, (3, N) image-space vertices -> (N, 3) uint8 colours at the
    nearest pixel (clamped to the frame)."""
    height, width = image.shape[:2]
    x = np.clip(np.rint(vertices[0]), 0, width - 1).astype(np.int64)
    y = np.clip(np.rint(vertices[1]), 0, height - 1).astype(np.int64)
    return image[y, x]


def facing_triangles(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(3, T) triangles, reversed if need be so that most normals point to +z."""
    p0, p1, p2 = (vertices[:, triangles[i]] for i in range(3))
    normal_z = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p1[1] - p0[1]) * (p2[0] - p0[0])
    area = np.abs(normal_z).sum()
    return triangles if normal_z.sum() >= 0 or area == 0 else triangles[::-1]


def write_mesh(
    path: str | os.PathLike,
    faces: Sequence[np.ndarray],
    colors: Sequence[np.ndarray],
    triangles: np.ndarray,
    suffix: str | None = None,
) -> Path:
    """Write ``faces`` ((3, N) image-space vertices each) with ``colors`` ((N, 3) uint8 each)
    and the shared (3, T) ``triangles`` to ``path`` (.obj or .ply: ``suffix``, else the
    path's), as it is: the caller stages it (tddfa.files)."""
    path = Path(path)
    suffix = (suffix or path.suffix).lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"{path}: the mesh file must end in {' or '.join(MESH_SUFFIXES)}")
    if len(faces) != len(colors):
        raise ValueError(f"{len(faces)} faces but {len(colors)} colour arrays")
    triangles = np.asarray(triangles, np.int64)
    oriented = [facing_triangles(v, triangles) for v in faces]
    if suffix == ".obj":
        _write_obj(path, faces, colors, oriented)
    else:
        _write_ply(path, faces, colors, oriented)
    return path


def _write_obj(path: Path, faces, colors, triangles) -> None:
    with open(path, "w") as f:
        f.write("# dense 3D face meshes in image space (x right, y down, z to the camera)\n")
        offset = 1
        for i, (vertices, color, tri) in enumerate(zip(faces, colors, triangles, strict=True)):
            f.write(f"o face_{i + 1}\ng face_{i + 1}\n")
            rows = np.concatenate([vertices.T, np.asarray(color, np.float64) / 255.0], axis=1)
            np.savetxt(f, rows, fmt="v %.3f %.3f %.3f %.4f %.4f %.4f")
            np.savetxt(f, tri.T + offset, fmt="f %d %d %d")
            offset += vertices.shape[1]


def _write_ply(path: Path, faces, colors, triangles) -> None:
    n = sum(v.shape[1] for v in faces)
    t = sum(tri.shape[1] for tri in triangles)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        "comment dense 3D face meshes in image space (x right, y down, z to the camera)\n"
        f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty int face\n"
        f"element face {t}\nproperty list uchar int vertex_indices\nproperty int face\n"
        "end_header\n"
    )
    vertex_type = np.dtype(
        [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"),
         ("face", "<i4")]
    )  # fmt: skip
    face_type = np.dtype([("count", "u1"), ("indices", "<i4", (3,)), ("face", "<i4")])
    vertex_rows = np.empty(n, vertex_type)
    face_rows = np.empty(t, face_type)
    v_at = f_at = 0
    for i, (vertices, color, tri) in enumerate(zip(faces, colors, triangles, strict=True)):
        count, tris = vertices.shape[1], tri.shape[1]
        block = vertex_rows[v_at : v_at + count]
        block["x"], block["y"], block["z"] = vertices.astype(np.float32)
        color = np.asarray(color, np.uint8)
        block["r"], block["g"], block["b"] = color[:, 0], color[:, 1], color[:, 2]
        block["face"] = i + 1
        rows = face_rows[f_at : f_at + tris]
        rows["count"] = 3
        rows["indices"] = tri.T + v_at
        rows["face"] = i + 1
        v_at += count
        f_at += tris
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex_rows.tobytes())
        f.write(face_rows.tobytes())


def bfm_triangles(asset_dir: str | os.PathLike | None = None) -> np.ndarray:
    """(3, T) int64 triangles of the no-neck BFM mesh (the assets' tri.pkl: --assets DIR,
    $TDDFA_ASSET_DIR, the cache, or a download; tddfa_tools.assets)."""
    from tddfa_tools.assets import asset_path, load_pickle

    triangles = np.asarray(load_pickle(asset_path("tri.pkl", asset_dir=asset_dir)), np.int64)
    if triangles.ndim != 2 or triangles.shape[0] != 3:
        triangles = triangles.T
    return np.ascontiguousarray(triangles)


def write_faces_to(
    path: str | os.PathLike,
    suffix: str,
    image: np.ndarray,
    vertices: np.ndarray,
    triangles: np.ndarray,
) -> Path:
    """The (F, 3, N) image-space ``vertices`` of one picture (VERTICES rows of its faces),
    colours sampled from ``image``, into ``path`` in the ``suffix`` format (a staged file)."""
    faces = [np.asarray(v, np.float32) for v in vertices]
    colors = [vertex_colors(image, v) for v in faces]
    return write_mesh(path, faces, colors, triangles, suffix)


def write_faces(
    path: str | os.PathLike,
    image: np.ndarray,
    vertices: np.ndarray,
    triangles: np.ndarray,
) -> Path:
    """:func:`write_faces_to`, atomically, the format from ``path``'s suffix."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{path}: the mesh file must end in {' or '.join(MESH_SUFFIXES)}")
    with atomic_path(path) as temp:
        write_faces_to(temp, path.suffix, image, vertices, triangles)
    return path
