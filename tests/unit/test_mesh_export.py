"""`tddfa image --mesh`'s writer: one .obj / .ply holding every face, read back by trimesh."""

from __future__ import annotations

import numpy as np
import pytest

from tddfa_clients.mesh import vertex_colors, write_faces

trimesh = pytest.importorskip("trimesh")


def _faces():
    """Two small dome meshes in image space (y down, z towards the camera)."""
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
    return np.stack(faces).astype(np.float32), triangles


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_one_file_every_face_coloured_facing_the_camera(tmp_path, suffix):
    faces, triangles = _faces()
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = write_faces(tmp_path / f"m{suffix}", image, faces, triangles)
    if suffix == ".obj":
        scene = trimesh.load_scene(path, process=False, split_objects=True)
        parts = [scene.geometry[name] for name in ("face_1", "face_2")]
    else:
        whole = trimesh.load(path, process=False)
        face_id = whole.metadata["_ply_raw"]["face"]["data"]["face"]
        parts = [whole.submesh([np.flatnonzero(face_id == i)], append=True) for i in (1, 2)]
        np.testing.assert_array_equal(
            whole.visual.vertex_colors[:, :3],
            np.concatenate([vertex_colors(image, f) for f in faces]),
        )
    for part, face in zip(parts, faces, strict=True):
        assert len(part.faces) == triangles.shape[1]
        np.testing.assert_allclose(np.sort(part.vertices, 0), np.sort(face.T, 0), atol=1e-3)
        assert (part.face_normals[:, 2] > 0).all(), "wound towards the camera (+z)"
    colors = parts[0].visual.vertex_colors[:, :3].astype(int)
    assert np.abs(colors - vertex_colors(image, faces[0])).max() <= 1


def test_colours_are_the_nearest_pixel_clamped():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    vertices = np.array([[0.4, 4.6, -3.0], [0.6, 2.2, 9.0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(vertex_colors(image, vertices), image[[1, 2, 3], [0, 4, 0]])


def test_unknown_suffix_is_refused(tmp_path):
    faces, triangles = _faces()
    with pytest.raises(ValueError, match=r"\.obj or \.ply"):
        write_faces(tmp_path / "m.stl", np.zeros((60, 80, 3), np.uint8), faces, triangles)
    assert not list(tmp_path.iterdir())
