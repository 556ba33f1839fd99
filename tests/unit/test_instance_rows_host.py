"""The CUDA source of the renderer's instance-row kernel (tddfa.render.instances), compiled
for the host with a C++ compiler and run one "thread" per face, against the numpy rows.
tests/gpu draws with the same source on the device."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from host_cuda import compile_for_host

from tddfa.render import instances
from tddfa.render.shaders import INSTANCE_FLOATS

_HOST_CUDA = r"""
struct Dim { int x; };
static Dim blockIdx, blockDim, threadIdx;
#define __global__
"""
_HOST_LAUNCH = r"""
extern "C" void launch(const float* transforms, const float* low, const float* high,
        const float* host, int shift_z, int faces, float* out) {
    blockDim.x = 1; threadIdx.x = 0;
    for (int f = 0; f < faces; ++f) {
        blockIdx.x = f;
        instance_rows(transforms, low, high, host, shift_z, faces, out);
    }
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    return compile_for_host(
        tmp_path_factory.mktemp("instance_rows"), _HOST_CUDA, instances.rows_source(), _HOST_LAUNCH
    )


@pytest.mark.parametrize("shift_z", [True, False])
def test_host_compiled_rows_equal_numpy(host_kernel, shift_z):
    rng = np.random.default_rng(int(shift_z))
    faces = 5
    vertices = rng.normal(0, 50, (faces, 3, 300)).astype(np.float32)
    vertices[3, 1] = 0  # a face with no height: the extent falls back to another side
    transforms = rng.normal(0, 1, (faces, 3, 4)).astype(np.float32)
    host = rng.normal(0, 100, (faces, 14)).astype(np.float32)
    bounds = instances.face_bounds(vertices, transforms)
    want = instances.instance_array(transforms, bounds, shift_z, host)

    got = np.full((faces, INSTANCE_FLOATS), np.nan, np.float32)  # poisoned: all must be written
    arrays = [
        np.ascontiguousarray(a, np.float32)
        for a in (transforms.reshape(faces, 12), bounds.low, bounds.high, host)
    ]
    pointers = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
    host_kernel(*pointers, int(shift_z), faces, got.ctypes.data_as(ctypes.c_void_p))
    np.testing.assert_array_equal(got, want)
