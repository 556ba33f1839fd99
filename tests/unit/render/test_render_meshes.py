"""Both renderers (the CPU rasteriser; MeshRenderer on Mesa llvmpipe, headless EGL) on
synthetic meshes: placement, orientation, depth, blending, sizes."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("EGL_PLATFORM", "surfaceless")

from tddfa import gl_context  # noqa: E402  (after EGL_PLATFORM; sets PYOPENGL_PLATFORM)
from tddfa.render import MeshRenderer, vertex_normals  # noqa: E402

MARGIN = 2  # pixels a mesh may touch outside its vertices' bounding box


# skipped without headless EGL by this folder's conftest


def grid_mesh(
    x0: float, y0: float, x1: float, y1: float, z: np.ndarray | float = 0.0, n: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """A triangulated n x n grid over the box [x0, x1] x [y0, y1] in image space.

    ``z`` is a constant or a function of the unit grid (u, v) in [-1, 1]^2.
    Returns vertices (3, n*n) float32 and triangles (3, 2*(n-1)^2) int32.
    """
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    depth = z(u, v) if callable(z) else np.full_like(u, z)
    x = x0 + (u + 1) / 2 * (x1 - x0)
    y = y0 + (v + 1) / 2 * (y1 - y0)
    vertices = np.stack([x.ravel(), y.ravel(), depth.ravel()]).astype(np.float32)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    b, c, d = a + 1, a + n, a + n + 1
    triangles = np.concatenate([np.stack([a, b, d]), np.stack([a, d, c])], axis=1)
    return vertices, triangles.astype(np.int32)


def dome(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return 40.0 * np.sqrt(np.clip(1.0 - 0.5 * (u**2 + v**2), 0.0, None))


def changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


def assert_changes_inside(
    before: np.ndarray,
    after: np.ndarray,
    box: tuple[float, float, float, float],
    min_fill: float = 0.95,
) -> None:
    """Pixels change inside ``box`` (x0, y0, x1, y1) and nowhere outside it (+ MARGIN);
    at least ``min_fill`` of the box's interior changes."""
    mask = changed_mask(before, after)
    x0, y0, x1, y1 = box
    h, w = mask.shape
    inside = np.zeros_like(mask)
    inside[
        max(0, int(np.floor(y0)) - MARGIN) : min(h, int(np.ceil(y1)) + MARGIN + 1),
        max(0, int(np.floor(x0)) - MARGIN) : min(w, int(np.ceil(x1)) + MARGIN + 1),
    ] = True
    assert mask.any(), "the mesh changed no pixel"
    assert not (mask & ~inside).any(), f"{int((mask & ~inside).sum())} pixels changed outside"
    core = mask[int(np.ceil(y0)) + 1 : int(y1), int(np.ceil(x0)) + 1 : int(x1)]
    assert core.mean() > min_fill, f"only {core.mean():.0%} of the box's interior was drawn"


@pytest.fixture(scope="module", params=["cpu", "opengl"])
def grid(request):
    from tddfa.render.cpu_renderer import CpuRenderer

    vertices, triangles = grid_mesh(0, 0, 1, 1)
    renderer = (CpuRenderer if request.param == "cpu" else MeshRenderer)(triangles)
    yield renderer
    renderer.close()


def test_zero_faces_returns_the_image_unchanged(grid):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    vertices = np.zeros((4, 3, 144), np.float32)
    out = grid.render(image, vertices, 0)
    assert out is not image
    np.testing.assert_array_equal(out, image)


def test_mesh_changes_its_box_only_and_is_lighter(grid):
    image = np.full((120, 160, 3), 30, np.uint8)
    vertices, _ = grid_mesh(40, 30, 100, 90, dome)
    out = grid.render(image, vertices[None], 1)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert_changes_inside(image, out, (40, 30, 100, 90))
    drawn = out[changed_mask(image, out)].astype(int)
    assert (drawn > 30).all(), "the mesh must lighten a dark frame"
    assert np.abs(drawn - drawn.mean(axis=1, keepdims=True)).max() <= 1, "the mesh is grey"
    assert drawn.max() <= round(0.6 * 255) + 1 + 30 * 0.4, "alpha 0.6 caps the mesh's weight"


def test_mesh_desaturates_a_coloured_frame(grid):
    image = np.zeros((80, 80, 3), np.uint8)
    image[..., 0] = 220  # saturated red
    vertices, _ = grid_mesh(10, 10, 70, 70, dome)
    out = grid.render(image, vertices[None], 1)
    drawn = out[changed_mask(image, out)].astype(int)
    spread = drawn.max(axis=1) - drawn.min(axis=1)
    assert (spread < 220 * 0.5).all(), "blending a grey mesh must desaturate the frame"


def test_alpha_blend_formula(renderer_type):
    vertices, triangles = grid_mesh(5, 5, 45, 45, dome)
    with renderer_type(triangles, alpha=1.0) as opaque, renderer_type(triangles, alpha=0.6) as half:
        black = np.zeros((50, 50, 3), np.uint8)
        white = np.full((50, 50, 3), 255, np.uint8)
        mesh_on_black = opaque.render(black, vertices[None], 1)
        mesh_on_white = opaque.render(white, vertices[None], 1)
        mask = changed_mask(black, mesh_on_black)
        assert mask.mean() > 0.5
        diff = np.abs(mesh_on_black.astype(int) - mesh_on_white.astype(int))[mask]
        assert diff.max() <= 1, "an opaque mesh hides the frame"
        blended = half.render(white, vertices[None], 1).astype(float)
        expected = 0.4 * 255 + 0.6 * mesh_on_black.astype(float)
        assert np.abs(blended[mask] - expected[mask]).max() <= 1.5


def test_nearer_face_wins_whatever_the_drawing_order(renderer_type):
    # face A: steep slope (dark), z in [0, 180]; face B: flat (bright) at z = 500, nearer
    far, triangles = grid_mesh(20, 20, 80, 80, lambda u, v: 90.0 * (u + 1))
    near, _ = grid_mesh(50, 50, 110, 110, 500.0)
    image = np.zeros((130, 130, 3), np.uint8)
    with renderer_type(triangles) as renderer:
        for order in ([far, near], [near, far]):
            out = renderer.render(image, np.stack(order), 2).astype(int)
            only_far, only_near, overlap = out[30:45, 30:45], out[90:105, 90:105], out[60:75, 60:75]
            assert only_near.mean() - only_far.mean() > 30, "test setup: faces must differ"
            assert abs(overlap.mean() - only_near.mean()) < 3, "the nearer face must be visible"


def test_orientation_top_left_quadrant(grid):
    image = np.full((200, 300, 3), 90, np.uint8)
    vertices, _ = grid_mesh(10, 10, 120, 80, dome)
    out = grid.render(image, vertices[None], 1)
    mask = changed_mask(image, out)
    assert mask[:100, :150].sum() > 0.9 * 110 * 70
    assert not mask[100:].any(), "a row flip would draw in the bottom half"
    assert not mask[:, 150:].any(), "a column flip would draw in the right half"


def test_mesh_partly_outside_the_frame_is_clipped(grid):
    image = np.full((60, 60, 3), 10, np.uint8)
    vertices, _ = grid_mesh(-40, 30, 30, 100, dome)
    out = grid.render(image, vertices[None], 1)
    assert_changes_inside(image, out, (0, 30, 30, 59))


@pytest.mark.parametrize("height,width", [(1, 1), (1, 17), (23, 1), (359, 641), (5, 3)])
def test_tiny_and_odd_sizes(grid, height, width):
    image = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = (0.25 * width - 0.5, 0.25 * height - 0.5, 0.75 * width - 0.5, 0.75 * height - 0.5)
    vertices, _ = grid_mesh(*box, dome)
    out = grid.render(image, vertices[None], 1)
    assert out.shape == image.shape and out.dtype == np.uint8
    mask = changed_mask(image, out)
    if min(height, width) > 100:  # rows of odd byte length must not shear
        assert_changes_inside(image, out, box)
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_frame_size_changes_between_calls(grid):
    for height, width in [(100, 150), (300, 200), (100, 150), (64, 64)]:
        image = np.full((height, width, 3), 50, np.uint8)
        box = (10, 10, width - 20, height - 30)
        vertices, _ = grid_mesh(*box, dome)
        assert_changes_inside(image, grid.render(image, vertices[None], 1), box)


def test_render_from_another_thread(grid):
    image = np.full((40, 40, 3), 0, np.uint8)
    vertices, _ = grid_mesh(5, 5, 30, 30, dome)
    expected = grid.render(image, vertices[None], 1)
    results = []
    thread = threading.Thread(target=lambda: results.append(grid.render(image, vertices[None], 1)))
    thread.start()
    thread.join()
    np.testing.assert_array_equal(results[0], expected)


def test_bad_inputs_name_the_problem(grid):
    vertices = np.zeros((2, 3, 144), np.float32)
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        grid.render(image.astype(np.float32), vertices, 1)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        grid.render(np.zeros((10, 10, 4), np.uint8), vertices, 1)
    with pytest.raises(ValueError, match="count"):
        grid.render(image, vertices, 3)
    with pytest.raises(ValueError, match="N >"):
        grid.render(image, np.zeros((2, 3, 10), np.float32), 1)
    with pytest.raises(ValueError, match="device"):
        MeshRenderer(np.zeros((3, 1), np.int32), device="gpu")


def test_close_releases_the_context():
    _, triangles = grid_mesh(0, 0, 1, 1)
    refs_before = dict(gl_context._display_refs)
    renderers = [MeshRenderer(triangles) for _ in range(3)]
    for renderer in renderers:
        renderer.close()
        renderer.close()  # idempotent
        assert renderer.closed
    assert gl_context._display_refs == refs_before, "close() must release its EGL display"
    with pytest.raises(gl_context.GLContextError, match="closed"):
        renderers[0].render(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 3, 144), np.float32), 1)


def test_vertex_normals_of_a_flat_grid_point_along_z():
    vertices, triangles = grid_mesh(0, 0, 10, 10, 3.0, n=4)
    normals = vertex_normals(vertices[None], triangles)[0]
    assert normals.shape == vertices.shape
    unit = normals / np.linalg.norm(normals, axis=0)
    np.testing.assert_allclose(np.abs(unit[2]), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- BFM mean face
@pytest.fixture(scope="module")
def mean_face(asset_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(3, 38365) no-neck BFM mean shape in model space and (3, T) triangles."""
    with open(asset_dir / "3ddfa_v2" / "tri.pkl", "rb") as f:
        triangles = np.asarray(pickle.load(f, encoding="latin1"), dtype=np.int32)
    u = np.load(asset_dir / "3ddfa_v1" / "u_shp.npy") + np.load(
        asset_dir / "3ddfa_v1" / "u_exp.npy"
    )
    indices = np.load(asset_dir / "3ddfa_v2" / "indices.npy")
    return u.reshape(-1, 3)[indices].T.astype(np.float32), triangles


def place_face(model: np.ndarray, cx: float, cy: float, height: float) -> np.ndarray:
    """Model space (y up) -> image space (y down, z shifted to min 0), ``height`` px tall."""
    scale = height / np.ptp(model[1])
    x = (model[0] - model[0].mean()) * scale + cx
    y = -(model[1] - model[1].mean()) * scale + cy
    z = model[2] * scale
    return np.stack([x, y, z - z.min()]).astype(np.float32)


def test_bfm_mean_face_over_a_photo(asset_dir, mean_face, renderer_type):
    cv2 = pytest.importorskip("cv2")
    image = cv2.cvtColor(
        cv2.imread(str(asset_dir / "images" / "JianzhuGuo.jpg")), cv2.COLOR_BGR2RGB
    )
    h, w = image.shape[:2]
    model, triangles = mean_face
    faces = np.stack([place_face(model, w / 2, h / 2, 0.5 * h), np.zeros_like(model)])
    with renderer_type(triangles) as renderer:
        out = renderer.render(image, faces, 1)
    x, y = faces[0, 0], faces[0, 1]
    assert_changes_inside(image, out, (x.min(), y.min(), x.max(), y.max()), min_fill=0.7)
    mask = changed_mask(image, out)
    assert mask.mean() > 0.1
    spread = np.ptp(out[mask].astype(int), axis=1).mean()
    assert spread < np.ptp(image[mask].astype(int), axis=1).mean(), "the mesh is grey"


def test_two_faces_left_and_right(mean_face, renderer_type):
    model, triangles = mean_face
    image = np.full((240, 400, 3), 20, np.uint8)
    left, right = place_face(model, 100, 120, 160), place_face(model, 300, 120, 160)
    with renderer_type(triangles) as renderer:
        out = renderer.render(image, np.stack([left, right]), 2)
        only_left = renderer.render(image, np.stack([left, right]), 1)
    mask = changed_mask(image, out)
    assert mask[:, :200].any() and mask[:, 200:].any()
    assert not changed_mask(image, only_left)[:, 200:].any(), "count=1 must ignore face 2"


# ----------------------------------------------------------------------------- GPU interop
def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs CuPy and a CUDA device")
def test_cuda_interop_matches_the_host_render(mean_face):
    import cupy

    model, triangles = mean_face
    image = np.random.default_rng(2).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    faces = np.stack([place_face(model, 640, 360, 400), place_face(model, 900, 300, 200)])
    with MeshRenderer(triangles, device="cuda:0") as gpu:
        assert gpu.uses_interop, "CuPy and cuda-python are importable: interop expected"
        for _ in range(2):  # the second call reuses the registrations
            device = gpu.render(cupy.asarray(image), cupy.asarray(faces), 2)
        assert gpu.uses_interop, "interop failed and fell back to host copies (see the log)"
        assert isinstance(device, cupy.ndarray) and device.shape == image.shape
        host_path = gpu.render(image, faces, 2)  # numpy in: glReadPixels on the same device
        small = gpu.render(cupy.asarray(image[:99, :201]), cupy.asarray(faces), 2)
        small_host = gpu.render(image[:99, :201], faces, 2)
    # the same drawing; blended in CUDA (interop) or by a GL pass (host): rounding may differ
    for got, want in ((cupy.asnumpy(device), host_path), (cupy.asnumpy(small), small_host)):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    try:
        cpu = MeshRenderer(triangles, device="cpu")
    except gl_context.GLContextError as exc:
        pytest.skip(f"no Mesa EGL beside the NVIDIA driver to compare with: {exc}")
    with cpu:
        diff = np.abs(cpu.render(image, faces, 2).astype(int) - host_path.astype(int))
    assert (diff > 8).mean() < 0.005, "GPU and llvmpipe renders differ beyond rasterisation"
