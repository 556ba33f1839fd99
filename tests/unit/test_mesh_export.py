"""`tddfa image --mesh`'s writer: one .glb / .obj / .ply holding every face, in the upright
frame or in image pixels, read back by trimesh (and the glTF validator)."""

from __future__ import annotations

import numpy as np
import pygltflib
import pytest
from gltf_validator import errors, validate

from tddfa_clients.mesh import MeshTables, check_mesh_name, vertex_colors, write_faces
from tddfa_clients.mesh_space import MeshSpace

trimesh = pytest.importorskip("trimesh")
WIDTH, HEIGHT = 80, 60


def _faces():
    """Two small dome meshes in image space (y down, z towards the camera), their
    triangles and texture coordinates."""
    n = 6
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    triangles = np.concatenate(
        [np.stack([a, a + 1, a + n + 1]), np.stack([a, a + n + 1, a + n])], 1
    )
    faces = []
    for cx in (20.0, 60.0):
        z = 10 * (2 - u**2 - v**2)
        faces.append(np.stack([cx + 15 * u.ravel(), 30 + 15 * v.ravel(), z.ravel()]))
    uv = np.stack([(u.ravel() + 1) / 2, (v.ravel() + 1) / 2], 1).astype(np.float32)
    return np.stack(faces).astype(np.float32), MeshTables(triangles, uv)


def _parts(path, suffix):
    """The two faces of a written file as trimesh meshes (+ the PLY's raw element data)."""
    if suffix == ".ply":
        whole = trimesh.load(path, process=False)
        raw = whole.metadata["_ply_raw"]
        face_id = raw["face"]["data"]["object_id"]
        parts = [whole.submesh([np.flatnonzero(face_id == i)], append=True) for i in (1, 2)]
        return parts, whole, raw
    scene = trimesh.load_scene(path, process=False, split_objects=True)
    if suffix == ".glb":
        dumped = {name: scene.geometry[name] for name in scene.graph.nodes_geometry}
        parts = [
            dumped[name].copy().apply_transform(scene.graph.get(name)[0])
            for name in ("face_1", "face_2")
        ]
        return parts, scene, None
    return [scene.geometry[name] for name in ("face_1", "face_2")], scene, None


def _colors(path, suffix, part, raw) -> np.ndarray:
    """(N, 3) int vertex colours as stored (trimesh keeps OBJ colours only without UVs)."""
    if suffix == ".glb":
        geometry = trimesh.load_scene(path, process=False).geometry["face_1"]
        return geometry.visual.vertex_attributes["color"][:, :3].astype(int)
    if suffix == ".ply":
        data = raw["vertex"]["data"]
        return np.stack([data["red"], data["green"], data["blue"]], 1).astype(int)
    rows = [line.split()[4:7] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.rint(np.asarray(rows, float) * 255).astype(int)


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
@pytest.mark.parametrize("space", ["upright", "image"])
def test_one_file_every_face_coloured_facing_the_viewer(tmp_path, suffix, space):
    faces, tables = _faces()
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    path = write_faces(tmp_path / f"m{suffix}", image, faces, tables, space)
    parts, whole, raw = _parts(path, suffix)
    frame = MeshSpace(space, WIDTH, HEIGHT)
    for part, face in zip(parts, faces, strict=True):
        assert len(part.faces) == tables.triangles.shape[1]
        expected = frame.points(face.astype(np.float64)).T
        np.testing.assert_allclose(np.sort(part.vertices, 0), np.sort(expected, 0), atol=1e-6)
        assert (part.face_normals[:, 2] > 0).all(), "wound towards the viewer (+z)"
        # trimesh turns every format's texture coordinates to v up
        np.testing.assert_allclose(part.visual.uv[:, 0], tables.uv[:, 0], atol=1e-6)
        np.testing.assert_allclose(part.visual.uv[:, 1], 1 - tables.uv[:, 1], atol=1e-6)
    colors = _colors(path, suffix, parts[0], raw)[: faces.shape[2]]
    assert np.abs(colors - vertex_colors(image, faces[0])).max() <= 1
    if suffix == ".ply":  # the face id is not named after the face element
        assert set(raw["vertex"]["data"].dtype.names) >= {"s", "t", "object_id"}
        assert "face" not in raw["vertex"]["data"].dtype.names
        np.testing.assert_allclose(
            raw["vertex"]["data"]["t"][: len(tables.uv)], 1 - tables.uv[:, 1]
        )
    if suffix == ".glb":
        report = validate(path)
        assert not errors(report), report["issues"]["messages"]
        stated = pygltflib.GLTF2().load(str(path)).asset.extras["tddfa"]
        assert stated["space"] == space and stated["image_size"] == [WIDTH, HEIGHT]
        np.testing.assert_allclose(stated["to_image"], frame.to_image())


def test_upright_frame_maps_back_to_image_pixels():
    frame = MeshSpace("upright", 640, 360)
    pixels = np.array([[0.0, 640.0, 320.0], [0.0, 360.0, 180.0], [0.0, 5.0, 12.5]])
    scene = frame.points(pixels)
    np.testing.assert_allclose(scene[:, 0], [-0.32, 0.18, 0.0])  # top-left corner: up, left
    np.testing.assert_allclose(scene[:, 1], [0.32, -0.18, 0.005])
    np.testing.assert_allclose(scene[:, 2], [0.0, 0.0, 0.0125])
    back = frame.to_image() @ np.vstack([scene, np.ones(3)])
    np.testing.assert_allclose(back[:3], pixels, atol=1e-9)
    assert np.linalg.det(frame.from_image()[:3, :3]) < 0, "image pixels are left-handed"
    np.testing.assert_array_equal(MeshSpace("image", 640, 360).to_image(), np.eye(4))


def test_colours_are_the_nearest_pixel_clamped():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    vertices = np.array([[0.4, 4.6, -3.0], [0.6, 2.2, 9.0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(vertex_colors(image, vertices), image[[1, 2, 3], [0, 4, 0]])


def test_unknown_suffix_and_space_are_refused(tmp_path):
    faces, tables = _faces()
    with pytest.raises(ValueError, match=r"\.glb, \.obj, \.ply"):
        write_faces(tmp_path / "m.stl", np.zeros((60, 80, 3), np.uint8), faces, tables)
    with pytest.raises(ValueError, match="upright or image"):
        write_faces(tmp_path / "m.glb", np.zeros((60, 80, 3), np.uint8), faces, tables, "world")
    assert not list(tmp_path.iterdir())
    check_mesh_name("x.GLB")
