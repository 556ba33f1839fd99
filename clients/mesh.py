"""``tddfa image --mesh`` (and ``tddfa batch --mesh``): every face of one picture in ONE
mesh file, .glb, .obj or .ply.

The meshes are the server's ``VERTICES`` placed in the frame chosen with ``--mesh-space``
(tddfa_clients.mesh_space): ``upright`` (default; right-handed, +Y up, metres, the picture
at 1 pixel = 1 mm, so Blender, MeshLab or a glTF viewer open the faces upright where they
are in the picture) or ``image`` (the ``VERTICES`` pixels as they are, for overlays).
Triangles are wound so that their normals (right-hand rule) point towards +Z, the viewer.
Each vertex carries its colour sampled from the picture (nearest pixel, clamped to the
frame: 3DDFA_V2's ``get_colors``) and its BFM texture coordinates.

- .glb: one mesh and one node per face (``face_1`` ...), with POSITION, NORMAL,
  TEXCOORD_0 and COLOR_0; ``asset.extras.tddfa`` states the frame and ``to_image``.
- .obj: one object per face (``o face_1`` ... with a group of the same name),
  ``v x y z r g b`` with colours in [0, 1] (the common vertex-colour extension),
  ``vt u v`` (v up), ``f a/a b/b c/c`` indexed across the file.
- .ply: binary little endian; ``vertex`` (x, y, z float, red, green, blue uchar, s, t
  float (v up), object_id int) and ``face`` (vertex_indices, object_id int):
  ``object_id`` says which face of the picture (1, 2, ...) an element belongs to.

Derived from the Basel Face Model: academic, non-commercial use only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pygltflib as gl

from tddfa.files import atomic_path
from tddfa_clients.gltf import GlbBuilder, unit_normals
from tddfa_clients.mesh_space import DEFAULT_SPACE, MeshSpace

MESH_SUFFIXES = (".glb", ".obj", ".ply")


@dataclasses.dataclass(frozen=True, eq=False)
class MeshTables:
    """The BFM's (3, T) ``triangles`` and (N, 2) float32 ``uv`` (glTF convention: v down)."""

    triangles: np.ndarray
    uv: np.ndarray


def mesh_tables(asset_dir: str | os.PathLike | None = None) -> MeshTables:
    """Triangles (tri.pkl) and texture coordinates (BFM_UV.mat) of the no-neck BFM from the
    assets (--assets DIR, $TDDFA_ASSET_DIR, the cache, or a download)."""
    from tddfa_clients.mesh_model import texture_coordinates
    from tddfa_tools.assets.resolve import asset_path
    from tddfa_tools.assets.safe_load import load_pickle

    triangles = np.asarray(load_pickle(asset_path("tri.pkl", asset_dir=asset_dir)), np.int64)
    if triangles.ndim != 2 or triangles.shape[0] != 3:
        triangles = triangles.T
    return MeshTables(np.ascontiguousarray(triangles), texture_coordinates(asset_dir))


def check_mesh_name(path: str | os.PathLike) -> None:
    """ValueError unless ``path`` ends in a mesh format this module writes."""
    if Path(path).suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"--mesh {path}: the file must end in {', '.join(MESH_SUFFIXES)}")


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


def write_faces_to(
    path: str | os.PathLike,
    suffix: str,
    image: np.ndarray,
    vertices: np.ndarray,
    tables: MeshTables,
    space: str = DEFAULT_SPACE,
) -> Path:
    """The (F, 3, N) image-space ``vertices`` of one picture (VERTICES rows of its faces),
    colours sampled from ``image``, into ``path`` in the ``suffix`` format and the ``space``
    frame, as it is: the caller stages it (tddfa.files)."""
    path = Path(path)
    check_mesh_name(f"x{suffix}")
    frame = MeshSpace(space, image.shape[1], image.shape[0])
    colors = [vertex_colors(image, v) for v in vertices]
    faces = [frame.points(np.asarray(v, np.float64)).astype(np.float32) for v in vertices]
    triangles = np.asarray(tables.triangles, np.int64)
    oriented = [facing_triangles(v, triangles) for v in faces]
    suffix = suffix.lower()
    if suffix == ".glb":
        _write_glb(path, frame, faces, colors, oriented, tables.uv)
    elif suffix == ".obj":
        _write_obj(path, frame, faces, colors, oriented, tables.uv)
    else:
        _write_ply(path, frame, faces, colors, oriented, tables.uv)
    return path


def write_faces(
    path: str | os.PathLike,
    image: np.ndarray,
    vertices: np.ndarray,
    tables: MeshTables,
    space: str = DEFAULT_SPACE,
) -> Path:
    """:func:`write_faces_to`, atomically, the format from ``path``'s suffix."""
    path = Path(path)
    check_mesh_name(path)
    with atomic_path(path) as temp:
        write_faces_to(temp, path.suffix, image, vertices, tables, space)
    return path


def _header(frame: MeshSpace) -> str:
    if frame.name == "image":
        return "dense 3D face meshes in image pixels (x right, y down, z to the camera)"
    return (
        "dense 3D face meshes, metres, +Y up, +Z to the viewer; image pixels: "
        f"x = 1000 X + {frame.width / 2:g}, y = {frame.height / 2:g} - 1000 Y, z = 1000 Z"
    )


def _write_glb(path: Path, frame: MeshSpace, faces, colors, triangles, uv) -> None:
    builder = GlbBuilder(extras={"tddfa": frame.description()})
    material = builder.add(
        "materials",
        gl.Material(
            name="vertex colours",
            pbrMetallicRoughness=gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=0.8),
        ),
    )
    texcoords = builder.vertices(uv)
    indices: dict[bytes, int] = {}  # one index accessor per winding
    nodes = []
    for i, (vertices, color, tri) in enumerate(zip(faces, colors, triangles, strict=True)):
        positions = vertices.T
        rgba = np.concatenate([color, np.full((len(color), 1), 255, np.uint8)], axis=1)
        key = tri[:, :1].tobytes()
        if key not in indices:
            indices[key] = builder.triangles(tri)
        attributes = gl.Attributes(
            POSITION=builder.vertices(positions, positions=True),
            NORMAL=builder.vertices(unit_normals(positions, tri)),
            TEXCOORD_0=texcoords,
            COLOR_0=builder.accessor(rgba, gl.ARRAY_BUFFER, normalized=True),
        )
        primitive = gl.Primitive(attributes=attributes, indices=indices[key], material=material)
        mesh = builder.add("meshes", gl.Mesh(name=f"face_{i + 1}", primitives=[primitive]))
        nodes.append(builder.add("nodes", gl.Node(name=f"face_{i + 1}", mesh=mesh)))
    builder.write(path, nodes)


def _write_obj(path: Path, frame: MeshSpace, faces, colors, triangles, uv) -> None:
    digits = 3 if frame.name == "image" else 6  # a thousandth of a pixel either way
    vertex_format = f"v %.{digits}f %.{digits}f %.{digits}f %.4f %.4f %.4f"
    texcoords = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # OBJ's v points up
    with open(path, "w") as f:
        f.write(f"# {_header(frame)}\n")
        offset = 1
        for i, (vertices, color, tri) in enumerate(zip(faces, colors, triangles, strict=True)):
            f.write(f"o face_{i + 1}\ng face_{i + 1}\n")
            rows = np.concatenate([vertices.T, np.asarray(color, np.float64) / 255.0], axis=1)
            np.savetxt(f, rows, fmt=vertex_format)
            np.savetxt(f, texcoords, fmt="vt %.6f %.6f")
            corners = np.repeat(tri.T + offset, 2, axis=1)  # vertex and texcoord share ids
            np.savetxt(f, corners, fmt="f %d/%d %d/%d %d/%d")
            offset += vertices.shape[1]


def _write_ply(path: Path, frame: MeshSpace, faces, colors, triangles, uv) -> None:
    n = sum(v.shape[1] for v in faces)
    t = sum(tri.shape[1] for tri in triangles)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"comment {_header(frame)}\n"
        f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "property float s\nproperty float t\nproperty int object_id\n"
        f"element face {t}\nproperty list uchar int vertex_indices\nproperty int object_id\n"
        "end_header\n"
    )
    vertex_type = np.dtype(
        [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"),
         ("s", "<f4"), ("t", "<f4"), ("object_id", "<i4")]
    )  # fmt: skip
    face_type = np.dtype([("count", "u1"), ("indices", "<i4", (3,)), ("object_id", "<i4")])
    vertex_rows = np.empty(n, vertex_type)
    face_rows = np.empty(t, face_type)
    v_at = f_at = 0
    for i, (vertices, color, tri) in enumerate(zip(faces, colors, triangles, strict=True)):
        count, tris = vertices.shape[1], tri.shape[1]
        block = vertex_rows[v_at : v_at + count]
        block["x"], block["y"], block["z"] = vertices
        color = np.asarray(color, np.uint8)
        block["r"], block["g"], block["b"] = color[:, 0], color[:, 1], color[:, 2]
        block["s"], block["t"] = uv[:, 0], 1.0 - uv[:, 1]  # v up, as OBJ
        block["object_id"] = i + 1
        rows = face_rows[f_at : f_at + tris]
        rows["count"] = 3
        rows["indices"] = tri.T + v_at
        rows["object_id"] = i + 1
        v_at += count
        f_at += tris
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex_rows.tobytes())
        f.write(face_rows.tobytes())
