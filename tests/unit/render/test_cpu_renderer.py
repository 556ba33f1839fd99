"""The CPU rasteriser against OpenGL (Mesa llvmpipe): the same pictures in every mode on
real faces, the same coverage rules on edge cases, and what GL would clip or reject."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES

FACE_INPUTS = ("IMAGE", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")


def _run(step, faces: dict, mode: str) -> np.ndarray:
    inputs = {name: faces[name] for name in FACE_INPUTS}
    return step.run(inputs, [{RENDER_MODE_PARAMETER: mode}])["RENDERED"][0]


def assert_like_opengl(cpu: np.ndarray, gl: np.ndarray, what: str) -> None:
    """Rasterisers differ on edge pixels only, colours are the same arithmetic up to
    rounding (llvmpipe filters with 8-bit weights: a uv map's samples are often 1 off):
    measured on emma.jpg and the sample video, 1e-4 of the pixels beyond 16 at most."""
    assert cpu.shape == gl.shape and cpu.dtype == gl.dtype, what
    diff = np.abs(cpu.astype(int) - gl.astype(int)).max(axis=-1)
    assert diff.mean() < 0.2, f"{what}: mean difference {diff.mean():.4f}"
    assert (diff > 16).mean() < 5e-4, f"{what}: {(diff > 16).mean():.3%} of pixels > 16 off"
    assert (diff > 1).mean() < 2e-3, f"{what}: {(diff > 1).mean():.3%} of pixels > 1 off"


@pytest.mark.parametrize("mode", RENDER_MODES)
def test_every_mode_as_opengl_draws_it(render_step, gl_render_step, emma, mode):
    """emma.jpg's three faces (~450 px: the full mesh)."""
    cpu, gl = _run(render_step, emma, mode), _run(gl_render_step, emma, mode)
    assert_like_opengl(cpu, gl, mode)
    if mode != "uv":
        assert (cpu != emma["IMAGE"][0]).any(axis=-1).sum() > 1000, "something is drawn"


@pytest.fixture(scope="module")
def small_emma(emma) -> dict[str, np.ndarray]:
    """emma.jpg at 40 %: faces of ~200 px, drawn with the coarse mesh."""
    scale = 0.4
    image = Image.fromarray(emma["IMAGE"][0])
    size = (round(image.width * scale), round(image.height * scale))
    small = {name: emma[name].copy() for name in FACE_INPUTS}
    small["IMAGE"] = np.asarray(image.resize(size, Image.BILINEAR))[None]
    small["TRANSFORM"][:, :, :2] *= scale
    return small


@pytest.mark.parametrize("mode", ["shaded", "texture", "depth", "pncc", "normals", "wireframe"])
def test_coarse_faces_as_opengl_draws_them(render_step, gl_render_step, small_emma, mode):
    cpu, gl = _run(render_step, small_emma, mode), _run(gl_render_step, small_emma, mode)
    assert_like_opengl(cpu, gl, mode)


def test_a_batch_of_frames_of_other_sizes_and_modes(render_step, gl_render_step, emma):
    """Eight frames in one call, every mode, faces moved between frames."""
    modes = list(RENDER_MODES[:8])
    batch = {name: np.concatenate([emma[name]] * len(modes)) for name in FACE_INPUTS}
    batch["TRANSFORM"] = batch["TRANSFORM"].copy()
    batch["TRANSFORM"][:, :, 0, 3] += np.arange(len(modes))[:, None] * 7.5  # x shift
    parameters = [{RENDER_MODE_PARAMETER: m} for m in modes]
    cpu = render_step.run(batch, parameters)["RENDERED"]
    gl = gl_render_step.run(batch, parameters)["RENDERED"]
    for mode, a, b in zip(modes, cpu, gl, strict=True):
        assert_like_opengl(a, b, mode)


def _jittered_grid(n: int, step: float, origin: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """An n x n vertex grid on a quarter-pixel lattice (many pixel centres on edges and
    vertices), z rising to the right; (3, n * n) float32 and (3, T) triangles."""
    u, v = np.meshgrid(np.arange(n), np.arange(n))
    jitter = rng.integers(-2, 3, (2, n, n)) / 4.0
    x = origin + u * step + jitter[0]
    y = origin + v * step + jitter[1]
    vertices = np.stack([x.ravel(), y.ravel(), 0.5 * x.ravel()]).astype(np.float32)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    triangles = np.concatenate(
        [np.stack([a, a + 1, a + n + 1]), np.stack([a, a + n + 1, a + n])], 1
    )
    return vertices, triangles.astype(np.int32)


def test_coverage_rules_as_opengl(renderer_type):
    """Pixel centres on edges and vertices: the same pixels as llvmpipe, no holes."""
    from tddfa.render import MeshRenderer

    rng = np.random.default_rng(3)
    vertices, triangles = _jittered_grid(12, 3.0, 4.0, rng)
    image = np.zeros((48, 48, 3), np.uint8)
    drawn = {}
    for cls in {renderer_type, MeshRenderer}:
        with cls(triangles, alpha=1.0) as renderer:
            out = renderer.render(image, vertices[None], 1, mode="normals")
        drawn[cls] = (out != image).any(axis=-1)
    reference = drawn[MeshRenderer]
    np.testing.assert_array_equal(drawn[renderer_type], reference)
    assert reference[8:36, 8:36].all(), "no holes inside the mesh"


def test_nothing_to_draw_and_far_away_vertices(render_step, emma):
    """Vertices beyond the rasteriser's range or not finite drop their triangles, the
    rest is drawn; faces outside the frame leave it unchanged."""
    from tddfa.render.cpu_renderer import CpuRenderer
    from tddfa.render.raster import GUARD

    vertices, triangles = _jittered_grid(6, 4.0, 2.0, np.random.default_rng(0))
    image = np.full((30, 30, 3), 50, np.uint8)
    with CpuRenderer(triangles) as renderer:
        clean = renderer.render(image, vertices[None], 1)
        broken = vertices.copy()
        broken[:, 0] = [np.nan, 0.0, 0.0]  # vertex 0: a corner triangle
        broken[0, 35] = 4 * GUARD  # the opposite corner, far outside
        partial = renderer.render(image, broken[None], 1)
        outside = vertices.copy()
        outside[0] += 100.0
        np.testing.assert_array_equal(renderer.render(image, outside[None], 1), image)
    changed = (clean != image).any(axis=-1)
    kept = (partial != image).any(axis=-1)
    assert kept.sum() > 0.8 * changed.sum() and not (kept & ~changed).any()
    assert kept.sum() < changed.sum(), "the triangles of the bad vertices are not drawn"


def test_cpu_frames_only_and_closing(bfm):
    from tddfa.render.cpu_renderer import CpuRenderer

    renderer = CpuRenderer(bfm.tri)
    assert renderer.device == "cpu" and not renderer.uses_interop
    with pytest.raises(ValueError, match="uint8"):
        renderer.render(np.zeros((4, 4, 3), np.float32), np.zeros((1, 3, bfm.num_vertices)), 0)
    renderer.close()
    assert renderer.closed
    with pytest.raises(ValueError, match="closed"):
        renderer.render(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 3, bfm.num_vertices)), 0)


def test_the_cpu_renderer_opens_no_gl_context(render_version):
    from tddfa import gl_context
    from tddfa.render.step import build_render_step

    before = dict(gl_context._display_refs)
    step = build_render_step(render_version)
    try:
        assert type(step.renderer).__name__ == "CpuRenderer"
        assert gl_context._display_refs == before
    finally:
        step.close()


def test_bands_drawn_by_several_threads_equal_one(render_step, emma, bfm, render_assets):
    """The region cut into bands, drawn in parallel: the same picture to the bit."""
    from tddfa.bfm import DenseDecoder
    from tddfa.render.cpu_renderer import CpuRenderer
    from tddfa.render.step import RenderStep

    steps = [
        RenderStep(CpuRenderer(bfm.tri, assets=render_assets, threads=n), DenseDecoder(bfm))
        for n in (1, 3)
    ]
    try:
        assert steps[1].renderer.threads == 3
        for mode in ("shaded", "texture", "wireframe", "pncc"):
            one, three = (_run(step, emma, mode) for step in steps)
            np.testing.assert_array_equal(one, three, err_msg=mode)
    finally:
        for step in steps:
            step.close()
    with pytest.raises(ValueError, match="threads"):
        CpuRenderer(bfm.tri, threads=-1)
