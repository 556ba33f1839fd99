"""The CUDA source of the interop path's blend (tddfa.render.blend), compiled for the host
with a C++ compiler, against the composite shader's arithmetic in numpy (GLSL ``mix`` in
float32, then UNORM8 rounding) pasted into the tiles' rectangles, as the host path does.
tests/gpu compares the interop path's pictures with the host path's on the device."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from host_cuda import compile_for_host

from tddfa.render import blend
from tddfa.render.layout import FrameTile

_HOST_CUDA = r"""
#include <cmath>
struct Dim { int x, y; };
static Dim blockIdx, blockDim, threadIdx, gridDim;
#define __global__
inline int __float2int_rn(float x) { return (int)std::rint(x); }
"""
_HOST_LAUNCH = r"""
extern "C" void launch(const unsigned char* frames, const unsigned char* drawing,
                       unsigned char* out, const int* tiles, int count, int height, int width,
                       int drawing_width) {
    blockDim.x = 1; gridDim.x = 1; threadIdx.x = 0; blockIdx.x = 0;  // one thread strides
    for (int t = 0; t < count; ++t) {
        blockIdx.y = t;
        blend_tiles(frames, drawing, out, tiles, height, width, drawing_width);
    }
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    return compile_for_host(
        tmp_path_factory.mktemp("blend"),
        _HOST_CUDA,
        blend.source(),
        _HOST_LAUNCH,
        flags=("-ffp-contract=off",),
    )


def _shader(frames: np.ndarray, drawing: np.ndarray) -> np.ndarray:
    """COMPOSITE_FRAGMENT in numpy: mix(frame, drawn.rgb, drawn.a) on UNORM8 texels."""
    f = frames.astype(np.float32) / np.float32(255)
    d = drawing[..., :3].astype(np.float32) / np.float32(255)
    a = drawing[..., 3:].astype(np.float32) / np.float32(255)
    v = np.clip(f * (np.float32(1) - a) + d * a, 0, 1)
    return np.rint(v * np.float32(255)).astype(np.uint8)


def test_host_compiled_blend_equals_the_shader_pasted_into_the_tiles(host_kernel):
    rng = np.random.default_rng(5)
    batch, height, width = 3, 9, 13
    frames = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    drawing = rng.integers(0, 256, (20, 11, 4), dtype=np.uint8)
    drawing[0, :, 3] = 0  # nothing drawn: the frame itself
    drawing[1, :, 3] = 255  # opaque modes: the drawing itself
    drawing[2, :, 3] = 153  # render_alpha 0.6
    tiles = [  # a region of frame 0, the whole of frame 2 (frame 1: nothing to draw)
        FrameTile(0, src=(2, 3, 11, 6), dst=(0, 0)),
        FrameTile(2, src=(0, 0, 11, 9), dst=(0, 6)),
    ]
    table = blend.tile_table(tiles)
    np.testing.assert_array_equal(table[1], [2, 0, 0, 11, 9, 0, 6])
    out = frames.copy()
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    host_kernel(
        pointer(frames), pointer(drawing), pointer(out), pointer(table), len(table), height,
        width, drawing.shape[1],
    )  # fmt: skip

    want = frames.copy()
    for tile in tiles:  # as MeshRenderer._paste after the GL composite
        x, y, w, h = tile.src
        dx, dy = tile.dst
        want[tile.frame, y : y + h, x : x + w] = _shader(
            frames[tile.frame, y : y + h, x : x + w], drawing[dy : dy + h, dx : dx + w]
        )
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out[1], frames[1])
    np.testing.assert_array_equal(out[0, 3, 2:13], frames[0, 3, 2:13])  # weight 0: the frame
    np.testing.assert_array_equal(out[0, 4, 2:13], drawing[1, :11, :3])  # weight 1: the drawing
