"""The CPU renderer's shortcuts against the plain way: the uv map painted from a raster
made once against drawing its triangles, the texture filter in fixed point against float
arithmetic, and one renderer drawing for several threads at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tddfa.contract import RENDER_MODE_PARAMETER

FACE_INPUTS = ("IMAGE", "ALPHA_SHP", "ALPHA_EXP", "TRANSFORM", "NUM_FACES")


def test_uv_map_painted_as_its_triangles_draw_it(render_step, emma):
    """cpu_atlas's painted map equals the map's triangles rasterised and composited for
    this face, to the bit."""
    from tddfa.render import cpu_atlas, cpu_blend, raster
    from tddfa.render.faces import MeshFaces

    renderer = render_step.renderer
    inputs = {name: emma[name] for name in FACE_INPUTS}
    vertices = render_step.decoder.vertices(inputs["ALPHA_SHP"][0], inputs["ALPHA_EXP"][0])
    meshes = MeshFaces(np.zeros(3, np.int64), np.arange(3), vertices, inputs["TRANSFORM"][0])
    side = renderer.uv_size
    for face in range(3):
        values, _, _, mesh = renderer._vertex_stage(meshes, face, "uv", inputs["IMAGE"][0])
        painted = np.zeros((side, side, 3), np.uint8)
        cpu_atlas.paint_atlas(
            renderer._atlas_records, mesh.triangles, renderer._atlas_winner, values, painted, 0
        )
        records = renderer._atlas_records.copy()
        records[:, 5:] = values[:, 5:]
        region = np.array([0, 0, side, side], np.int64)
        depth = np.full((side, side), -np.inf, np.float32)
        colour = np.zeros((side, side, 3), np.float32)
        written = np.zeros((side, side), np.uint8)
        raster.fill_triangles(records, mesh.triangles, region, depth, colour, written)
        drawn = np.zeros((side, side, 3), np.uint8)
        cpu_blend.composite(drawn, region, colour, written, 255)
        assert written.mean() > 0.5, "most of the map is drawn"
        np.testing.assert_array_equal(painted, drawn, err_msg=f"face {face}")


def _float_filter(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """GL_LINEAR in float64 (clamped to the edge), in [0, 255]: (P, 3)."""
    height, width = texture.shape[:2]
    fx, fy = np.floor(x), np.floor(y)
    c0 = np.clip(fx.astype(int), 0, width - 1)
    c1 = np.clip(fx.astype(int) + 1, 0, width - 1)
    r0 = np.clip(fy.astype(int), 0, height - 1)
    r1 = np.clip(fy.astype(int) + 1, 0, height - 1)
    ax, ay = (x - fx)[:, None], (y - fy)[:, None]
    top = texture[r0, c0] * (1 - ax) + texture[r0, c1] * ax
    low = texture[r1, c0] * (1 - ax) + texture[r1, c1] * ax
    return top * (1 - ay) + low * ay


@pytest.mark.parametrize("alpha8", [255, 153])
def test_texture_filter_rounds_as_float_arithmetic(alpha8):
    """Random texel coordinates (float32, inside, outside, on texel centres and halves):
    the fixed-point filter gives the correctly rounded 8 bits, as float64 arithmetic does
    but for values on a half (or within the fixed point's precision of one)."""
    from tddfa.render import cpu_blend

    rng = np.random.default_rng(7)
    texture = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    side = 64
    coords = rng.uniform(-3, 58, (side, side, 2))
    coords[:8] = np.round(coords[:8] * 2) / 2  # texel centres and halves
    colour = np.zeros((side, side, 3), np.float32)
    colour[..., :2] = coords
    written = np.ones((side, side), np.uint8)
    written[::5, ::3] = 0
    frame = rng.integers(0, 256, (side, side + 4, 3), dtype=np.uint8)
    out = frame.copy()
    region = np.array([4, 0, side + 4, side], np.int64)
    texels = cpu_blend.texture_layout(texture)
    cpu_blend.composite_texture(out, region, colour, written, alpha8, texels)

    x, y = colour[..., 0].astype(np.float64).ravel(), colour[..., 1].astype(np.float64).ravel()
    value = _float_filter(texture, x, y)  # exact but for the last bits
    drawn = np.floor(value + 0.5).astype(np.int64)
    under = frame[:, 4:].reshape(-1, 3).astype(np.int64)
    blended = (under * (255 - alpha8) + drawn * alpha8 + 127) // 255
    expected = np.where(written.reshape(-1, 1) == 1, blended, under)
    got = out[:, 4:].reshape(-1, 3)
    tie = np.abs(value - np.floor(value) - 0.5) < 1e-4  # weights below texel 1: 2^-24 off
    assert not np.array_equal(got, frame[:, 4:].reshape(-1, 3)), "something is drawn"
    np.testing.assert_array_equal(got[~tie], expected[~tie])
    np.testing.assert_array_equal(out[:, :4], frame[:, :4])  # outside the region


@pytest.mark.parametrize("alpha8", [255, 153])
def test_one_colour_blends_as_the_colour_buffer(alpha8):
    """composite_colour (the wireframe's blend) equals composite over a colour buffer filled
    with that colour, to the bit, on scattered flags."""
    from tddfa.render import cpu_blend

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    written = (rng.random((30, 41)) < 0.5).astype(np.uint8)
    region = np.array([5, 7, 46, 37], np.int64)
    rgb = np.array([1.0, 0.25, 0.6], np.float32)
    colour = np.broadcast_to(rgb, (30, 41, 3)).copy()
    rgb8 = np.floor(np.clip(rgb.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.int64)
    expected, got = frame.copy(), frame.copy()
    cpu_blend.composite(expected, region, colour, written, alpha8)
    cpu_blend.composite_colour(got, region, rgb8, written, alpha8)
    assert not np.array_equal(got, frame), "something is drawn"
    np.testing.assert_array_equal(got, expected)


def test_texture_layout_says_what_it_needs():
    from tddfa.render import cpu_blend

    with pytest.raises(ValueError, match=r"\(h, w, 3\) RGB image"):
        cpu_blend.texture_layout(np.zeros((4, 4), np.uint8))
    texels = cpu_blend.texture_layout(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
    assert texels.shape == (4, 5) and texels.dtype == np.uint32
    assert texels[0, 0] == texels[1, 1] == 0 | 1 << 8 | 2 << 16  # the corner repeated


def test_one_renderer_draws_for_several_threads(render_step, emma):
    """Calls from several threads at once (each keeps its own buffers): every picture as
    drawn alone."""
    inputs = {name: emma[name] for name in FACE_INPUTS}
    modes = ["shaded", "texture", "wireframe", "uv", "pncc", "depth"]
    alone = {m: render_step.run(inputs, [{RENDER_MODE_PARAMETER: m}])["RENDERED"] for m in modes}
    together: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    failures: list[BaseException] = []

    def draw(mode: str) -> None:
        try:
            for _ in range(3):
                out = render_step.run(inputs, [{RENDER_MODE_PARAMETER: mode}])["RENDERED"]
                together[mode].append(out)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=draw, args=(m,)) for m in modes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    for mode in modes:
        for out in together[mode]:
            np.testing.assert_array_equal(out, alone[mode], err_msg=mode)


_COMPILES_NOTHING = """
import sys
import numpy as np
from tddfa.contract import RENDER_MODE_PARAMETER, RENDER_MODES
from tddfa.render import cpu_atlas, cpu_blend, raster, shading
from tddfa.render.step import build_render_step

kernels = [shading.vertex_records, raster.fill_triangles, raster.fill_depth, raster.draw_lines,
           raster.fill_discs, cpu_blend.composite, cpu_blend.composite_colour,
           cpu_blend.composite_texture, cpu_atlas.paint_atlas]
step = build_render_step(sys.argv[1])
before = [len(k.signatures) for k in kernels]
with np.load(sys.argv[2]) as faces:
    inputs = {name: faces[name] for name in faces.files}
for mode in RENDER_MODES:
    step.run(inputs, [{RENDER_MODE_PARAMETER: mode}])
after = [len(k.signatures) for k in kernels]
assert all(before) and after == before, (before, after)
"""


def test_every_kernel_is_compiled_at_load(render_version, emma, tmp_path):
    """A served frame compiles nothing: building the step (a fresh process) compiled, or
    loaded from numba's cache, every kernel with the types a frame brings, in every mode."""
    import subprocess
    import sys

    faces = tmp_path / "faces.npz"
    np.savez(faces, **{name: emma[name] for name in FACE_INPUTS})
    done = subprocess.run(
        [sys.executable, "-c", _COMPILES_NOTHING, str(render_version), str(faces)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
