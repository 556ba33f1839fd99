"""The CUDA source of the interop path's blend (tddfa.render.blend), compiled for the host
with a C++ compiler, against the composite shader's arithmetic in numpy (GLSL ``mix`` in
float32, then UNORM8 rounding). tests/gpu compares the blended frames with the GL pass's
on the device (interop path against host path)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from tddfa.render import blend

CXX = shutil.which("g++") or shutil.which("c++")

_HOST_CUDA = r"""
#include <cmath>
struct Dim { int x; };
static Dim blockIdx, blockDim, threadIdx;
#define __global__
inline int __float2int_rn(float x) { return (int)std::rint(x); }
"""
_HOST_LAUNCH = r"""
extern "C" void launch(const unsigned char* frames, const unsigned char* drawing,
                       unsigned char* out, long long pixels) {
    blockDim.x = 1; threadIdx.x = 0;
    for (long long i = 0; i < pixels; ++i) {
        blockIdx.x = (int)i;
        blend_over(frames, drawing, out, pixels);
    }
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler to build the kernel source for the host")
    folder = tmp_path_factory.mktemp("blend")
    source = folder / "kernel.cpp"
    source.write_text(_HOST_CUDA + blend.source().replace('extern "C" ', "") + _HOST_LAUNCH)
    library = folder / "kernel.so"
    subprocess.run(
        [CXX, "-O1", "-ffp-contract=off", "-shared", "-fPIC", str(source), "-o", str(library)],
        check=True,
    )
    return ctypes.CDLL(str(library)).launch


def _shader(frames: np.ndarray, drawing: np.ndarray) -> np.ndarray:
    """COMPOSITE_FRAGMENT in numpy: mix(frame, drawn.rgb, drawn.a) on UNORM8 texels."""
    f = frames.astype(np.float32) / np.float32(255)
    d = drawing[..., :3].astype(np.float32) / np.float32(255)
    a = drawing[..., 3:].astype(np.float32) / np.float32(255)
    v = np.clip(f * (np.float32(1) - a) + d * a, 0, 1)
    return np.rint(v * np.float32(255)).astype(np.uint8)


def test_host_compiled_blend_equals_the_shader_arithmetic(host_kernel):
    rng = np.random.default_rng(5)
    batch, height, width = 2, 7, 13
    frames = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    drawing = rng.integers(0, 256, (batch * height, width, 4), dtype=np.uint8)
    drawing[0, :, 3] = 0  # nothing drawn: the frame itself
    drawing[1, :, 3] = 255  # opaque modes: the drawing itself
    drawing[2, :, 3] = 153  # render_alpha 0.6
    out = np.zeros_like(frames)
    pixels = batch * height * width
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    host_kernel(pointer(frames), pointer(drawing), pointer(out), ctypes.c_longlong(pixels))
    want = _shader(frames.reshape(batch * height, width, 3), drawing)
    np.testing.assert_array_equal(out.reshape(batch * height, width, 3), want)
    np.testing.assert_array_equal(out[0, 0], frames[0, 0])
    np.testing.assert_array_equal(out[0, 1], drawing[1, :, :3])
