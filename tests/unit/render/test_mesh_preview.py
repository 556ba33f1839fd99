"""tddfa_tools.dev.mesh_preview: an exported file read back by trimesh and drawn by the
project's renderer, as the README's mesh picture is made."""

from __future__ import annotations

import numpy as np

from tddfa_clients.mesh import MeshTables, write_faces
from tddfa_tools.dev.mesh_preview import BACKGROUND, main, render_preview


def _two_domes(tmp_path):
    n = 24
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    triangles = np.concatenate(
        [np.stack([a, a + 1, a + n + 1]), np.stack([a, a + n + 1, a + n])], 1
    )
    z = 30 * (2 - u**2 - v**2)
    faces = np.stack(
        [np.stack([cx + 40 * u.ravel(), 60 + 40 * v.ravel(), z.ravel()]) for cx in (60.0, 200.0)]
    ).astype(np.float32)
    uv = np.stack([(u.ravel() + 1) / 2, (v.ravel() + 1) / 2], 1).astype(np.float32)
    image = np.full((120, 260, 3), 128, np.uint8)
    return write_faces(tmp_path / "domes.glb", image, faces, MeshTables(triangles, uv))


def test_preview_draws_every_mesh_of_the_file(tmp_path):
    picture = render_preview(_two_domes(tmp_path), yaw=0.0, pitch=0.0, size=320)
    assert picture.shape[1] == 320 and picture.shape[0] < 320  # the scene is wide
    drawn = np.any(picture != BACKGROUND, axis=-1)
    columns = np.flatnonzero(drawn.any(axis=0))
    gaps = np.flatnonzero(np.diff(columns) > 1)
    assert len(gaps) == 1, "two separate faces, side by side"
    assert (picture[0, 0] == BACKGROUND).all() and drawn.mean() > 0.1


def test_the_command_writes_one_picture_of_several_files(tmp_path):
    mesh = _two_domes(tmp_path)
    out = tmp_path / "preview.png"
    assert main([str(mesh), str(mesh), "--out", str(out), "--size", "200"]) == 0
    from PIL import Image

    picture = np.asarray(Image.open(out))
    assert picture.shape[1] == 400
