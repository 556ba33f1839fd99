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
    rois[1, :2] = [[5.4, 7.6, 55.5, 63.2], [2.5, 3.5, 9.5, 10.5]]  # the second past the count
    counts = np.array([3, 1], np.int32)
    got = cupy.asnumpy(face_crops(cupy.asarray(frames), rois, counts))
    for b, count in enumerate(counts):
        want = roi.crop_and_resize(frames[b], rois[b], count=int(count))
        np.testing.assert_array_equal(got[b], want)
    # device ROI boxes and counts (no host round trip): the same crops
    on_device = face_crops(cupy.asarray(frames), cupy.asarray(rois), cupy.asarray(counts))
    np.testing.assert_array_equal(cupy.asnumpy(on_device), got)
    # random boxes with quarter-pixel corners (rounding ties), all slots filled
    starts = np.round(rng.uniform(-60, 450, (2, 8, 2)) * 4) / 4
    sides = np.round(rng.uniform(1, 300, (2, 8, 2)) * 4) / 4
    boxes = np.concatenate([starts, starts + sides], axis=2).astype(np.float32)
    got = cupy.asnumpy(face_crops(cupy.asarray(frames), cupy.asarray(boxes)))
    for b in range(2):
        np.testing.assert_array_equal(got[b], roi.crop_and_resize(frames[b], boxes[b]))


def test_vertex_normals_match_numpy():
    import cupy

    from tddfa.render import VertexNormals

    rng = np.random.default_rng(3)
    triangles = rng.integers(0, 500, (3, 900)).astype(np.int32)
    vertices = rng.normal(size=(3, 3, 500)).astype(np.float32)
    want = VertexNormals(triangles)(vertices)
    got = cupy.asnumpy(VertexNormals(triangles)(cupy.asarray(vertices)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fused_parameters_equal_numpy(gpu_repository):
    import cupy

    from tddfa.aligner import Aligner
    from tddfa.bfm import load_bfm

    bfm = load_bfm(gpu_repository / "face_aligner" / "1" / "bfm.npz")
    aligner = Aligner(PipelineConfig(), None, bfm)
    rng = np.random.default_rng(3)
    norm = rng.normal(0, 1, (4, 8, 62)).astype(np.float32)
    starts = rng.uniform(0, 500, (4, 8, 2))
    rois = np.concatenate([starts, starts + rng.uniform(40, 300, (4, 8, 1))], axis=2)
    rois = rois.astype(np.float32)
    counts = np.array([8, 0, 1, 5], np.int32)
    want = aligner.parameters(norm, rois, counts)
    got = aligner.parameters(cupy.asarray(norm), cupy.asarray(rois), cupy.asarray(counts))
    for name, array in want.items():
        np.testing.assert_allclose(
            cupy.asnumpy(got[name]), array, rtol=1e-4, atol=1e-3, err_msg=name
        )
