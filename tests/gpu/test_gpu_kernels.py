"""The fused CuPy kernels (tddfa.gpu_kernels) equal the numpy steps bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tddfa import preprocess, roi
from tddfa.config import PipelineConfig


@pytest.mark.parametrize("shape", [(720, 1280), (551, 413), (1901, 3913), (100, 37)])
def test_detector_canvas_equals_numpy(shape):
    import cupy

    from tddfa.gpu_kernels import detector_canvas

    cfg = PipelineConfig()
    rng = np.random.default_rng(sum(shape))
    frames = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    got, scale = detector_canvas(cupy.asarray(frames), cfg)
    for frame, canvas in zip(frames, cupy.asnumpy(got), strict=True):
        want, want_scale = preprocess.to_detector_canvas(frame, cfg)
        assert scale == want_scale
        np.testing.assert_array_equal(canvas, want)


def test_face_crops_equal_numpy():
    import cupy

    from tddfa.gpu_kernels import face_crops

    rng = np.random.default_rng(7)
    height, width = 551, 413
    frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    rois = np.zeros((2, 8, 4), np.float32)
    rois[0, :3] = [
        [10, 20, 200, 260],
        [-50, -40, 90, 120],
        [width - 60, height - 70, width + 40, height + 50],
    ]
    rois[1, :1] = [[5.4, 7.6, 55.5, 63.2]]
    got = cupy.asnumpy(face_crops(cupy.asarray(frames), rois))
    for b, count in enumerate((3, 1)):
        want = roi.crop_and_resize(frames[b], rois[b], count=count)
        np.testing.assert_array_equal(got[b], want)


def test_vertex_normals_match_numpy():
    import cupy

    from tddfa.render import VertexNormals

    rng = np.random.default_rng(3)
    triangles = rng.integers(0, 500, (3, 900)).astype(np.int32)
    vertices = rng.normal(size=(3, 3, 500)).astype(np.float32)
    want = VertexNormals(triangles)(vertices)
    got = cupy.asnumpy(VertexNormals(triangles)(cupy.asarray(vertices)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
