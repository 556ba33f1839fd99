"""The CUDA source of the fused parameter kernel (tddfa.gpu_params), compiled for the host
with a C++ compiler and run one "thread" per face, against the numpy aligner maths.
tests/gpu runs the same source on the device."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from host_cuda import compile_for_host

from tddfa import gpu_params
from tddfa.aligner import Aligner
from tddfa.config import PipelineConfig

_HOST_CUDA = r"""
#include <cmath>
struct Dim { int x; };
static Dim blockIdx, blockDim, threadIdx;
#define __global__
using std::sqrt; using std::atan2; using std::asin; using std::cos; using std::fmin;
using std::fmax; using std::fminf;
"""
_HOST_LAUNCH = r"""
extern "C" void launch(const float* norm, const float* mean, const float* std_,
        const float* rois, const int* counts, const float* u_lm, const float* w_lm, int faces,
        int k, float* params, float* pose, float* landmarks, float* transform) {
    blockDim.x = 1;
    for (int f = 0; f < faces; ++f) {
        blockIdx.x = f; threadIdx.x = 0;
        face_parameters(norm, mean, std_, rois, counts, u_lm, w_lm, faces, k, params, pose,
                        landmarks, transform);
    }
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    return compile_for_host(
        tmp_path_factory.mktemp("gpu_params"), _HOST_CUDA, gpu_params.kernel_source(), _HOST_LAUNCH
    )


def _pointer(array: np.ndarray):
    return array.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("seed", [0, 1])
def test_host_compiled_kernel_equals_the_numpy_maths(host_kernel, landmark_pipeline, seed):
    bfm = landmark_pipeline.aligner.aligner.bfm
    aligner = Aligner(PipelineConfig(), None, bfm)
    rng = np.random.default_rng(seed)
    batch, k = 3, 8
    norm = rng.normal(0, 1, (batch, k, 62)).astype(np.float32)
    norm[0, 0, :12] = [3, 0.2, -0.1, 0, -0.2, 2.9, 0.1, 0, 0.1, 0.05, 3.1, 0]  # a frontal face
    starts = rng.uniform(0, 500, (batch, k, 2))
    sides = rng.uniform(40, 300, (batch, k, 1))
    rois = np.concatenate([starts, starts + sides], axis=2).astype(np.float32)
    counts = np.array([8, 0, 3], np.int32)
    want = aligner.parameters(norm, rois, counts)

    faces = batch * k
    outputs = {
        "PARAMS": np.full((batch, k, 62), np.nan, np.float32),  # poisoned: all must be written
        "POSE": np.full((batch, k, 3), np.nan, np.float32),
        "LANDMARKS": np.full((batch, k, 3, 68), np.nan, np.float32),
        "TRANSFORM": np.full((batch, k, 3, 4), np.nan, np.float32),
    }
    tables = [
        np.ascontiguousarray(a, np.float32)
        for a in (bfm.param_mean, bfm.param_std, bfm.u_lm, gpu_params.landmark_basis(bfm))
    ]
    host_kernel(
        _pointer(norm), _pointer(tables[0]), _pointer(tables[1]), _pointer(rois),
        _pointer(counts), _pointer(tables[2]), _pointer(tables[3]), faces, k,
        *(_pointer(outputs[n]) for n in ("PARAMS", "POSE", "LANDMARKS", "TRANSFORM")),
    )  # fmt: skip
    for name, got in outputs.items():
        assert not np.isnan(got).any(), name
        np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-3, err_msg=name)
    assert not outputs["PARAMS"][1].any()  # the empty frame stays zero
