"""The drawing blended over the frames in CUDA (GPU only): the interop path's last step.

On the host path a GL pass blends the drawing (straight colour + weight, RGBA) over the
frames (the COMPOSITE shaders) and the regions are pasted back into copies of the frames.
On a GPU that pass, the frames' upload into GL that it needs and a clear of whole frames
cost more than the faces: OpenGL on an H100/H200 runs on the few graphics-capable units of
the chip (benchmarks/RESULTS.md, renderer phases). Here one CUDA kernel does the shader's
arithmetic (GLSL ``mix``, then UNORM8 rounding) for every tile of a pass, reading the
drawing as read back from GL and the frames still in device memory.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

_SOURCE = r"""
extern "C" __global__ void blend_tiles(const unsigned char* frames,
                                       const unsigned char* drawing, unsigned char* out,
                                       const int* tiles, int height, int width,
                                       int drawing_width) {
    // frames, out: (B, H, W, 3) RGB; drawing: (rows, drawing_width, 4) straight RGB + weight;
    // tiles: (T, 7) frame, x, y, w, h of the frame's rectangle, x, y of it in the drawing;
    // one row of blocks per tile
    const int* t = tiles + 7 * blockIdx.y;
    long long pixels = (long long)t[3] * t[4];
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < pixels;
         p += (long long)gridDim.x * blockDim.x) {
        int x = (int)(p % t[3]), y = (int)(p / t[3]);
        long long at = 3 * (((long long)t[0] * height + t[2] + y) * width + t[1] + x);
        const unsigned char* d = drawing + 4 * ((long long)(t[6] + y) * drawing_width + t[5] + x);
        float a = d[3] / 255.f;
        for (int c = 0; c < 3; ++c) {
            float f = frames[at + c] / 255.f;
            float v = f * (1.f - a) + (d[c] / 255.f) * a;  // GLSL mix(frame, drawn, a)
            v = v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
            out[at + c] = (unsigned char)__float2int_rn(v * 255.f);
        }
    }
}
"""
THREADS = 256
MAX_BLOCKS_PER_TILE = 256


def source() -> str:
    """The CUDA source (tests compile it for the host too)."""
    return _SOURCE


@functools.lru_cache(maxsize=1)
def _kernel():
    import cupy

    return cupy.RawKernel(_SOURCE, "blend_tiles")


def tile_table(tiles: Sequence[Any]) -> np.ndarray:
    """(T, 7) int32 rows (frame, x, y, w, h, drawing x, drawing y) of tddfa.render.layout
    FrameTiles."""
    return np.array([(t.frame, *t.src, *t.dst) for t in tiles], dtype=np.int32).reshape(-1, 7)


def blend_tiles(out: Any, frames: Any, drawing: Any, tiles: Sequence[Any]) -> None:
    """Into ``out`` (B, H, W, 3) uint8 CuPy, at each tile's frame rectangle: the drawing
    (rows, width, 4) uint8 at the tile's place in it, over ``frames`` (same shape as out).
    Pixels outside the tiles are left as they are."""
    import cupy

    if not tiles:
        return
    table = tile_table(tiles)
    _, height, width, _ = frames.shape
    largest = int((table[:, 3] * table[:, 4]).max())
    blocks = min(MAX_BLOCKS_PER_TILE, (largest + THREADS - 1) // THREADS)
    _kernel()(
        (max(blocks, 1), len(table)),
        (THREADS,),
        (cupy.ascontiguousarray(frames), cupy.ascontiguousarray(drawing), out,
         cupy.asarray(table), np.int32(height), np.int32(width), np.int32(drawing.shape[1])),
    )  # fmt: skip
