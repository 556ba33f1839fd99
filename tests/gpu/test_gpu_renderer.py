"""The renderer on an NVIDIA EGL device with CUDA-OpenGL interop (CuPy in, CuPy out)
against the CPU renderer's output (Mesa llvmpipe, from tests/gpu/make_expected.py) and
against its own host path on the same GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def renderer(gpu_repository: Path):
    from tddfa.renderer import MeshRenderer

    triangles = np.load(gpu_repository / "face_renderer" / "1" / "triangles.npy")
    with MeshRenderer(triangles, device="cuda:0", alpha=0.6) as renderer:
        yield renderer


@pytest.mark.parametrize("name", ["JianzhuGuo.jpg", "trump_hillary.jpg"])
def test_interop_render_close_to_cpu_render(renderer, name, test_images, cpu_expected):
    import cupy

    image, vertices = test_images[name], cpu_expected[f"{name}:VERTICES"]
    out = renderer.render(cupy.asarray(image), cupy.asarray(vertices), len(vertices))
    assert isinstance(out, cupy.ndarray) and out.shape == image.shape
    assert renderer.uses_interop, "the renderer fell back to host copies"
    diff = np.abs(cupy.asnumpy(out).astype(int) - cpu_expected[f"{name}:RENDERED"].astype(int))
    diff = diff.max(axis=-1)
    # rasterisers differ on silhouette pixels only; shading is the same arithmetic
    assert diff.mean() < 0.5, f"mean pixel difference {diff.mean():.3f}"
    assert (diff > 16).mean() < 0.005, f"{(diff > 16).mean():.3%} of pixels differ by > 16"


def test_interop_equals_host_path_on_the_same_gpu(renderer, test_images, cpu_expected):
    import cupy

    name = "trump_hillary.jpg"
    image, vertices = test_images[name], cpu_expected[f"{name}:VERTICES"]
    host = renderer.render(image, vertices, len(vertices))  # numpy: glReadPixels path
    device = renderer.render(cupy.asarray(image), cupy.asarray(vertices), len(vertices))
    assert renderer.uses_interop
    # same GL, same shaders; the normals are summed in another order (atomics): at most
    # one grey level apart
    diff = np.abs(cupy.asnumpy(device).astype(int) - host.astype(int))
    assert diff.max() <= 1, f"interop and host paths differ by up to {diff.max()}"


def test_zero_faces_copies_the_frame(renderer, test_images):
    import cupy

    image = cupy.asarray(test_images["JianzhuGuo.jpg"])
    out = renderer.render(image, cupy.zeros((8, 3, 38365), cupy.float32), 0)
    assert out is not image
    assert bool((out == image).all())


def test_frame_size_changes_reregister(renderer, test_images, cpu_expected):
    """Alternating frame sizes re-create the GL targets; interop must follow."""
    import cupy

    for name in ("JianzhuGuo.jpg", "trump_hillary.jpg", "JianzhuGuo.jpg"):
        vertices = cpu_expected[f"{name}:VERTICES"]
        out = renderer.render(
            cupy.asarray(test_images[name]), cupy.asarray(vertices), len(vertices)
        )
        diff = np.abs(cupy.asnumpy(out).astype(int) - cpu_expected[f"{name}:RENDERED"].astype(int))
        assert diff.max(axis=-1).mean() < 0.5
    assert renderer.uses_interop
