"""Every render mode against its definition, on the real faces of emma.jpg, drawn by both
renderers (the CPU rasteriser and OpenGL on Mesa llvmpipe).

The definitions (docs/render_modes.md) follow 3DDFA_V2: depth = per-face normalised
image z as grey; pncc = ncc_code as colour; texture = an image looked up at the BFM UV
coordinates; uv = the frame sampled at each vertex, drawn at its UV coordinates; landmarks
= dots at the 68 landmarks; pose = plot_pose_box's box; normals = n / 2 + 1 / 2.
"""

from __future__ import annotations

import numpy as np
import pytest

from tddfa.bfm import DenseDecoder
from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES
from tddfa.params import apply_transform

FACE_INPUTS = ("IMAGE", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")


def render(step, faces: dict, mode: str):
    inputs = {name: faces[name] for name in FACE_INPUTS}
    step.validate(inputs)
    step.validate_parameters({RENDER_MODE_PARAMETER: mode})
    batch = inputs["IMAGE"].shape[0]
    out = step.run(inputs, [{RENDER_MODE_PARAMETER: mode}] * batch)["RENDERED"]
    return out[0]


@pytest.fixture(scope="module")
def vertices(emma, bfm) -> np.ndarray:
    """(F, 3, N) image-space vertices of emma's faces (z from 0 per face)."""
    count = int(emma["NUM_FACES"][0, 0])
    model = DenseDecoder(bfm)(emma["ALPHA_SHP"][0, :count], emma["ALPHA_EXP"][0, :count])
    return apply_transform(emma["TRANSFORM"][0, :count], model)


@pytest.fixture(scope="module")
def nearest(vertices, emma) -> dict[str, np.ndarray]:
    """Visible vertices that hit a pixel centre (within 0.2 px): (row, col, face, vertex).

    Visible: no vertex within 2 px of it in the image is more than 2 px nearer the camera
    (the surface is smooth where it is seen; a hidden vertex has the front surface's
    vertices around it, far nearer)."""
    from scipy.ndimage import maximum_filter

    height, width = emma["IMAGE"].shape[1:3]
    faces, _, n = vertices.shape
    x, y, z = (vertices[:, axis].ravel() for axis in range(3))
    face = np.repeat(np.arange(faces), n)
    vertex = np.tile(np.arange(n), faces)
    col, row = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    zbuffer = np.full((height, width), -np.inf, np.float32)
    np.maximum.at(zbuffer, (row[inside], col[inside]), z[inside])
    local = maximum_filter(zbuffer, size=5)
    keep = inside.copy()
    keep[inside] = z[inside] >= local[row[inside], col[inside]] - 2.0
    keep &= (np.abs(x - col) < 0.2) & (np.abs(y - row) < 0.2)
    return {"row": row[keep], "col": col[keep], "face": face[keep], "vertex": vertex[keep]}


def test_every_mode_is_drawn_by_one_pass_and_documented():
    """Each mode of the contract has a way to be drawn (the mesh shader's branch or a 2D
    overlay, never both), the shader switches on no mode the contract lacks, and
    docs/render_modes.md's table lists exactly the contract's modes, in order."""
    import re
    from pathlib import Path

    from tddfa.render.modes import (
        BLENDED_MODES,
        MESH_MODES,
        MODE_IDS,
        OVERLAY_MODES,
        OWN_IMAGE_MODES,
    )
    from tddfa.render.shaders import MESH_VERTEX

    assert sorted(MODE_IDS.values()) == list(range(len(RENDER_MODES)))
    assert not MESH_MODES & OVERLAY_MODES
    assert MESH_MODES | OVERLAY_MODES == set(RENDER_MODES)
    assert BLENDED_MODES <= MESH_MODES and OWN_IMAGE_MODES <= MESH_MODES
    # the mesh shader tests every mesh mode (a colour branch, or the blend for the lit
    # fallback) and no other
    assert set(re.findall(r"mode == MODE_([A-Z_]+)", MESH_VERTEX)) == {
        m.upper() for m in MESH_MODES
    }
    docs = Path(__file__).resolve().parents[3] / "docs" / "render_modes.md"
    rows = re.findall(r"^\| `([a-z_]+)`", docs.read_text(), re.M)
    assert tuple(dict.fromkeys(rows)) == RENDER_MODES


def test_unknown_mode_names_the_valid_ones(any_step):
    with pytest.raises(ValueError, match="unknown render_mode 'sketch'") as error:
        any_step.validate_parameters({RENDER_MODE_PARAMETER: "sketch"})
    for mode in RENDER_MODES:
        assert mode in str(error.value)
    any_step.validate_parameters({})  # absent: the default


def test_shaded_equals_drawing_the_vertices_output(any_step, emma, vertices):
    """The transform in the vertex shader gives the picture of the VERTICES output."""
    served = render(any_step, emma, "shaded")
    legacy = any_step.renderer.render(emma["IMAGE"][0], vertices, len(vertices))
    diff = np.abs(served.astype(int) - legacy.astype(int)).max(axis=-1)
    assert diff.mean() < 0.05, diff.mean()
    assert (diff > 8).mean() < 1e-4
    assert (served != emma["IMAGE"][0]).any(axis=-1).mean() > 0.05


def test_depth_is_the_nearest_surface_z(any_step, emma, vertices, nearest):
    out = render(any_step, emma, "depth").astype(int)
    drawn = (out != emma["IMAGE"][0]).any(axis=-1)
    assert drawn.mean() > 0.05 and (out[drawn] == out[drawn][:, :1]).all(), "depth is grey"
    z = vertices[nearest["face"], 2, nearest["vertex"]]
    extent = vertices[:, 2].max(axis=1)[nearest["face"]]
    expected = 255 * z / extent
    got = out[nearest["row"], nearest["col"], 0]
    error = np.abs(got - expected)
    assert len(error) > 5000
    assert np.median(error) < 1.0 and (error < 4).mean() > 0.95, np.percentile(error, [50, 95])


def test_pncc_colours_are_ncc_code_at_visible_vertices(any_step, emma, nearest, render_assets):
    out = render(any_step, emma, "pncc").astype(float)
    expected = 255 * render_assets.ncc[:, nearest["vertex"]].T
    error = np.abs(out[nearest["row"], nearest["col"]] - expected).max(axis=1)
    assert np.median(error) < 1.5 and (error < 4).mean() > 0.95, np.percentile(error, [50, 95])


def test_texture_lookup_at_the_uv_coordinates(renderer_type, emma, nearest, render_assets, bfm):
    """A texture whose red is the column and green the row shows each vertex's (u, 1 - v)."""
    from tddfa.render.step import RenderStep

    side = 256
    ramp = np.linspace(0, 255, side)
    texture = np.zeros((side, side, 3), np.uint8)
    texture[..., 0] = np.rint(ramp)[None, :]
    texture[..., 1] = np.rint(ramp)[:, None]
    renderer = renderer_type(bfm.tri, alpha=1.0, assets=render_assets, texture=texture)
    step = RenderStep(renderer, DenseDecoder(bfm))
    try:
        out = render(step, emma, "texture").astype(float)
    finally:
        step.close()
    u, v = render_assets.uv[nearest["vertex"]].T
    got = out[nearest["row"], nearest["col"]]
    error = np.abs(got[:, :2] - np.stack([255 * u, 255 * (1 - v)], axis=1)).max(axis=1)
    assert np.median(error) < 1.5 and (error < 4).mean() > 0.95, np.percentile(error, [50, 95])
    assert (got[:, 2] == 0).mean() > 0.95


def test_uv_maps_hold_the_frame_at_each_vertex(any_step, emma, vertices, render_assets):
    atlas = render(any_step, emma, "uv").astype(float)
    side = any_step.renderer.uv_size
    k = emma["ALPHA_SHP"].shape[1]
    assert atlas.shape == (side, k * side, 3)
    assert (atlas[:, len(vertices) * side :] == 0).all(), "empty slots are black"
    image = emma["IMAGE"][0].astype(float)
    u, v = render_assets.uv.T
    px, py = u * (side - 1), (1 - v) * (side - 1)
    centred = (np.abs(px - np.rint(px)) < 0.15) & (np.abs(py - np.rint(py)) < 0.15)
    for face, points in enumerate(vertices):
        x = np.clip(points[0, centred], 0, image.shape[1] - 1)
        y = np.clip(points[1, centred], 0, image.shape[0] - 1)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        x1, y1 = np.minimum(x0 + 1, image.shape[1] - 1), np.minimum(y0 + 1, image.shape[0] - 1)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        expected = (
            image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x1] * fx * (1 - fy)
            + image[y1, x0] * (1 - fx) * fy + image[y1, x1] * fx * fy
        )  # fmt: skip
        got = atlas[
            np.rint(py[centred]).astype(int), face * side + np.rint(px[centred]).astype(int)
        ]
        error = np.abs(got - expected).max(axis=1)
        assert len(error) > 500
        assert np.median(error) < 4 and (error < 16).mean() > 0.9, np.percentile(error, [50, 90])


def test_landmark_dots_at_the_landmarks(any_step, emma):
    from tddfa.render.overlays import DOT_DIVISOR

    out = render(any_step, emma, "landmarks").astype(int)
    green = (out == [0, 255, 0]).all(axis=-1)
    landmarks = emma["LANDMARKS"][0, : int(emma["NUM_FACES"][0, 0])]
    x, y = landmarks[:, 0].ravel(), landmarks[:, 1].ravel()
    assert green[np.rint(y).astype(int), np.rint(x).astype(int)].all(), "a dot on each landmark"
    rows, cols = np.nonzero(green)
    distance = np.sqrt((cols[:, None] - x[None]) ** 2 + (rows[:, None] - y[None]) ** 2).min(axis=1)
    side = np.maximum(np.ptp(landmarks[:, 0], axis=1), np.ptp(landmarks[:, 1], axis=1))
    radius = max(1.5, float((side * np.sqrt(2) / 3 / DOT_DIVISOR).max()))
    assert distance.max() <= radius + 1.0, "green only on the dots"
    changed = (out != emma["IMAGE"][0]).any(axis=-1)
    assert not (changed & ~green).any(), "nothing but the dots is drawn"


def test_pose_box_as_3ddfa_v2_draws_it(any_step, emma):
    """plot_pose_box, written from the original's code (P from the params, box from the
    landmarks), drawn with OpenCV: our edges lie on its edges."""
    cv2 = pytest.importorskip("cv2")
    from tddfa.params import transform_to_camera
    from tddfa.roi import roi_from_box  # noqa: F401  (documents where the ROI comes from)

    out = render(any_step, emma, "pose").astype(int)
    ours = (out == [0, 255, 40]).all(axis=-1)
    reference = np.zeros(out.shape[:2], np.uint8)
    count = int(emma["NUM_FACES"][0, 0])
    for face in range(count):
        transform = emma["TRANSFORM"][0, face : face + 1]
        ver = emma["LANDMARKS"][0, face].astype(np.float64)
        # the camera rows up to scale: the rotation is all the box needs
        camera = transform_to_camera(transform, np.array([[0, 0, 120, 120]], np.float32))
        p = camera.reshape(3, 4).astype(np.float64)
        r1, r2 = p[0, :3] / np.linalg.norm(p[0, :3]), p[1, :3] / np.linalg.norm(p[1, :3])
        rotation = np.stack([r1, r2, np.cross(r1, r2)])
        side = max(np.ptp(ver[0]), np.ptp(ver[1]))
        llength = np.sqrt(2 * side**2) / 3
        front = int(4 / 3 * llength)
        box = []
        for size, depth in ((llength, 0), (front, front)):
            box += [(-size, -size, depth), (-size, size, depth), (size, size, depth)]
            box += [(size, -size, depth), (-size, -size, depth)]
        points = np.array(box) @ rotation.T
        points = points[:, :2] * [1, -1]
        points = points - points[:4].mean(axis=0) + ver[:2, :27].mean(axis=1)
        points = np.int32(points)
        cv2.polylines(reference, [points], True, 255, 2, cv2.LINE_AA)
        for a, b in ((1, 6), (2, 7), (3, 8)):
            cv2.line(reference, tuple(points[a]), tuple(points[b]), 255, 2, cv2.LINE_AA)
    reference = cv2.dilate((reference > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert ours.sum() > 100
    assert (ours & reference).sum() / ours.sum() > 0.97
    covered = cv2.dilate(ours.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    strict = reference & (cv2.erode(reference.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    assert (strict & covered).sum() / max(strict.sum(), 1) > 0.9


def test_normals_of_planes(renderer_type):
    grid = _grid(20, 20, 80, 80, n=6)
    image = np.zeros((100, 100, 3), np.uint8)
    with renderer_type(grid[1], alpha=1.0) as renderer:
        flat = renderer.render(image, grid[0][None], 1, mode="normals")
        tilted = grid[0].copy()
        tilted[2] = 0.5 * tilted[0]  # z rises to the right: n ~ (-0.5, 0, 1)
        slope = renderer.render(image, tilted[None], 1, mode="normals")
    np.testing.assert_allclose(flat[50, 50], [128, 128, 255], atol=1)
    n = np.array([-0.5, 0.0, 1.0]) / np.linalg.norm([-0.5, 0.0, 1.0])
    np.testing.assert_allclose(slope[50, 50], 255 * (n / 2 + 0.5), atol=1.5)


def test_wireframe_draws_only_visible_edges_blended(renderer_type):
    near_vertices, triangles = _grid(10, 10, 90, 90, n=3, z=100.0)  # 40 px cells
    far_vertices, _ = _grid(10, 10, 90, 90, n=3, z=0.0)
    far_vertices[:2] = far_vertices[:2] + 20  # the far grid's edges fall between the near one's
    image = np.full((110, 110, 3), 40, np.uint8)
    with renderer_type(triangles, alpha=0.6) as renderer:
        both = renderer.render(image, np.stack([near_vertices, far_vertices]), 2, mode="wireframe")
        near = renderer.render(image, near_vertices[None], 1, mode="wireframe")
    changed = (both != image).any(axis=-1)
    assert changed.any()
    drawn = both[changed].astype(float)
    np.testing.assert_allclose(drawn, 0.4 * 40 + 0.6 * 255, atol=1.5)
    inside = np.zeros_like(changed)
    inside[12:88, 12:88] = True  # under the near grid: its edges only
    np.testing.assert_array_equal(changed & inside, (near != image).any(axis=-1) & inside)


@pytest.mark.parametrize("mode", RENDER_MODES)
def test_no_faces_leaves_the_frame(any_step, emma, mode):
    faces = {**emma, "NUM_FACES": np.zeros((1, 1), np.int32)}
    out = render(any_step, faces, mode)
    if mode == "uv":
        assert not out.any(), "no face: a black UV atlas"
    else:
        np.testing.assert_array_equal(out, emma["IMAGE"][0])


def test_a_batch_mixes_modes_and_equals_single_frames(any_step, emma):
    modes = ["shaded", "uv", "depth", "landmarks", "pose", "pncc"]
    batch = {name: np.concatenate([emma[name]] * len(modes)) for name in FACE_INPUTS}
    out = any_step.run(batch, [{RENDER_MODE_PARAMETER: m} for m in modes])["RENDERED"]
    assert isinstance(out, list) and len(out) == len(modes)
    for mode, got in zip(modes, out, strict=True):
        alone = render(any_step, emma, mode)
        assert got.shape == alone.shape, mode
        diff = np.abs(got.astype(int) - alone.astype(int)).max(axis=-1)
        # another tile moves the faces by whole pixels: rasterisation may flip a few edge pixels
        assert (diff > 1).mean() < 2e-5 and diff.mean() < 0.01, mode


def test_region_layout_equals_whole_frames(render_version, emma):
    """OpenGL's host path draws only around the faces; whole frames give the same picture."""
    from tddfa.render.step import RenderStep, build_render_step

    regions = build_render_step(render_version, opengl=True)
    frames = RenderStep(
        type(regions.renderer)(
            regions.decoder.bfm.tri, alpha=0.6, assets=regions.renderer.assets, layout="frames"
        ),
        regions.decoder,
    )
    try:
        for mode in ("shaded", "pncc", "landmarks", "pose", "uv"):
            a, b = render(regions, emma, mode), render(frames, emma, mode)
            diff = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
            assert (diff > 1).mean() < 2e-5 and diff.mean() < 0.01, mode
    finally:
        regions.close()
        frames.close()


def test_texture_needs_an_image(renderer_type, bfm, render_assets):
    import dataclasses

    from tddfa.render.step import RenderStep

    bare = dataclasses.replace(render_assets, texture=None)
    step = RenderStep(renderer_type(bfm.tri, assets=bare), DenseDecoder(bfm))
    try:
        with pytest.raises(ValueError, match="texture_image"):
            step.validate_parameters({RENDER_MODE_PARAMETER: "texture"})
    finally:
        step.close()


@pytest.mark.parametrize("opengl", [False, True])
def test_configured_texture_image(render_version, emma, tmp_path, opengl):
    from PIL import Image

    from tddfa.config import PipelineConfig
    from tddfa.render.step import build_render_step

    Image.fromarray(np.full((8, 8, 3), (10, 200, 30), np.uint8)).save(tmp_path / "plain.png")
    step = build_render_step(
        render_version,
        config=PipelineConfig(render_alpha=1.0, texture_image=str(tmp_path / "plain.png")),
        opengl=opengl,
    )
    try:
        out = render(step, emma, "texture")
    finally:
        step.close()
    changed = (out != emma["IMAGE"][0]).any(axis=-1)
    assert changed.mean() > 0.05
    np.testing.assert_array_equal(np.unique(out[changed], axis=0), [[10, 200, 30]])


def _grid(x0, y0, x1, y1, n, z=0.0):
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    x, y = x0 + u * (x1 - x0), y0 + v * (y1 - y0)
    vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)]).astype(np.float32)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    triangles = np.concatenate(
        [np.stack([a, a + 1, a + n + 1]), np.stack([a, a + n + 1, a + n])], 1
    )
    return vertices, triangles.astype(np.int32)
