"""The CUDA source of the crop kernel (tddfa.gpu_kernels.face_crops), compiled for the host
with a C++ compiler and run one "thread" per output value, against the numpy crops
(tddfa.roi.crop_and_resize, itself checked against OpenCV in test_roi.py).

The kernel computes its sampling taps itself; these cases aim at the rounding steps that
could differ from numpy's: half-pixel boxes (round half to even), boxes partly or wholly
outside the frame, tiny and huge boxes, empty boxes and slots past the face count.
tests/gpu runs the same source on the device."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from host_cuda import compile_for_host

from tddfa import gpu_kernels
from tddfa.roi import crop_and_resize

# Just enough of CUDA for one host thread; -ffp-contract=off keeps the _rn operations apart
# as the intrinsics do on the device.
_HOST_CUDA = r"""
#include <cmath>
struct Dim { int x; };
static Dim blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __double2float_rn(double a) { return (float)a; }
using std::rint;
"""
_HOST_LAUNCH = r"""
extern "C" void launch(const unsigned char* frames, int height, int width, int faces,
        int size, const float* rois, const int* counts, float* out, long long total) {
    blockDim.x = 1; threadIdx.x = 0;
    for (long long i = 0; i < total; ++i) {
        blockIdx.x = (int)i;
        face_crops(frames, height, width, faces, size, rois, counts, out, total);
    }
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    return compile_for_host(
        tmp_path_factory.mktemp("gpu_crops"),
        _HOST_CUDA,
        gpu_kernels.crops_source(),
        _HOST_LAUNCH,
        flags=("-ffp-contract=off",),
    )


def _crops(host_kernel, frames: np.ndarray, rois: np.ndarray, counts: np.ndarray, size: int):
    batch, height, width, _ = frames.shape
    faces = rois.shape[1]
    out = np.full((batch, faces, 3, size, size), np.nan, np.float32)  # poisoned
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    host_kernel(
        pointer(frames), height, width, faces, size, pointer(rois), pointer(counts),
        pointer(out), ctypes.c_longlong(out.size),
    )  # fmt: skip
    return out


def test_host_compiled_crops_equal_numpy(host_kernel):
    rng = np.random.default_rng(11)
    height, width = 151, 97
    frames = rng.integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    rois = np.zeros((3, 6, 4), np.float32)
    rois[0] = [
        [10, 20, 80, 90],  # inside
        [-30.5, -12.5, 40.5, 58.5],  # half pixels, over the top-left corner
        [width - 20, height - 25, width + 30, height + 25],  # over the bottom-right corner
        [2.5, 3.5, 9.5, 10.5],  # tiny (upsampled 17x)
        [-400, -300, 500, 600],  # far larger than the frame
        [200, 200, 260, 260],  # wholly outside
    ]
    rois[1, :2] = [[5.4, 7.6, 55.5, 63.2], [30, 30, 30, 80]]  # the second is empty (no width)
    starts = rng.uniform(-40, 120, (6, 2))
    rois[2] = np.concatenate([starts, starts + rng.uniform(1, 160, (6, 1))], axis=1)
    rois[2, 5] = [1, 2, 3, 4]  # past the count: must come out black although not empty
    counts = np.array([6, 2, 5], np.int32)
    for size in (120, 7):
        got = _crops(host_kernel, frames, rois, counts, size)
        for b in range(len(frames)):
            want = crop_and_resize(frames[b], rois[b], size=size, count=int(counts[b]))
            np.testing.assert_array_equal(got[b], want, err_msg=f"frame {b}, size {size}")
    assert not got[2, 5].any() and not got[1, 2:].any()


@pytest.mark.parametrize("seed", range(4))
def test_host_compiled_crops_equal_numpy_on_random_boxes(host_kernel, seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(40, 200, 2)
    frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    # quarter-pixel corners make ties of the rounding common
    starts = np.round(rng.uniform(-60, 200, (2, 8, 2)) * 4) / 4
    sides = np.round(rng.uniform(0, 250, (2, 8, 2)) * 4) / 4
    rois = np.concatenate([starts, starts + sides], axis=2).astype(np.float32)
    counts = np.array([8, int(rng.integers(0, 9))], np.int32)
    got = _crops(host_kernel, frames, rois, counts, 120)
    for b in range(2):
        want = crop_and_resize(frames[b], rois[b], count=int(counts[b]))
        np.testing.assert_array_equal(got[b], want)
