"""The coarse mesh small faces are drawn with (tddfa_tools.build.mesh_lod): a valid triangulation
of the same surface over a subset of the vertices, used below render_coarse_below pixels,
and a picture within a grey level or so of the full mesh's."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tddfa.config import PipelineConfig
from tddfa.contract import RENDER_MODE_PARAMETER

FACE_INPUTS = ("IMAGE", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")


def _signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    p = points[:, triangles]  # (2, 3, T)
    return (p[0, 1] - p[0, 0]) * (p[1, 2] - p[1, 0]) - (p[1, 1] - p[1, 0]) * (p[0, 2] - p[0, 0])


def test_coarse_mesh_is_a_triangulation_of_the_same_surface(render_assets, bfm):
    coarse, full = render_assets.lod_triangles, bfm.tri
    assert coarse.shape[0] == 3 and 0.25 < coarse.shape[1] / full.shape[1] < 0.5
    assert np.isin(np.unique(coarse), np.unique(full)).all()
    uv = render_assets.uv.T
    full_sign = np.sign(np.median(_signed_areas(uv, full)))
    assert (np.sign(_signed_areas(uv, coarse)) == full_sign).all(), "wound as the full mesh"
    # same footprint in the UV plane: rasterise both at 512 x 512
    from tddfa.render import MeshRenderer

    side = 512
    flat = np.zeros((3, uv.shape[1]), np.float32)
    flat[:2] = uv * (side - 1)
    masks = []
    for triangles in (full, coarse):
        with MeshRenderer(triangles, alpha=1.0) as renderer:
            out = renderer.render(np.zeros((side, side, 3), np.uint8), flat[None], 1)
        masks.append((out > 0).any(axis=-1))
    overlap = (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()
    assert overlap > 0.97, overlap


@pytest.fixture(scope="module")
def small_emma(emma) -> dict[str, np.ndarray]:
    """emma.jpg at 40 %: faces about 200 px wide (the renderer's inputs scaled with it)."""
    scale = 0.4
    image = Image.fromarray(emma["IMAGE"][0])
    size = (round(image.width * scale), round(image.height * scale))
    small = {name: emma[name].copy() for name in FACE_INPUTS}
    small["IMAGE"] = np.asarray(image.resize(size, Image.BILINEAR))[None]
    small["TRANSFORM"][:, :, :2] *= scale  # x, y rows; z keeps its own scale
    return small


def test_small_faces_use_the_coarse_mesh_and_look_the_same(render_version, small_emma, emma):
    from tddfa.render.step import build_render_step

    coarse = build_render_step(render_version)
    full = build_render_step(render_version, config=PipelineConfig(render_coarse_below=0))
    drawn = []
    original = coarse.renderer.draw

    def spy(images, modes, meshes=None, overlays=None, slots=1):
        drawn.append(None if meshes is None else meshes.coarse)
        return original(images, modes, meshes, overlays, slots)

    coarse.renderer.draw = spy
    try:
        for mode, limit in (("shaded", 1.5), ("depth", 1.0), ("pncc", 1.0), ("normals", 3.0)):
            parameters = [{RENDER_MODE_PARAMETER: mode}]
            a = full.run(small_emma, parameters)["RENDERED"][0].astype(int)
            b = coarse.run(small_emma, parameters)["RENDERED"][0].astype(int)
            assert drawn[-1] is not None and drawn[-1].all(), "three faces of ~200 px: coarse"
            face = (a != small_emma["IMAGE"][0]).any(axis=-1)
            diff = np.abs(a - b).max(axis=-1)
            assert diff[face].mean() < limit, (mode, diff[face].mean())
            assert diff.mean() < 0.5, (mode, diff.mean())
        coarse.run(small_emma, [{RENDER_MODE_PARAMETER: "uv"}])
        assert not drawn[-1].any(), "uv maps keep the full mesh"
        coarse.run({name: emma[name] for name in FACE_INPUTS}, [{}])
        assert not drawn[-1].any(), "emma's faces at full size (~450 px) keep the full mesh"
    finally:
        coarse.close()
        full.close()
