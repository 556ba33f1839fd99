"""The drawing blended over the frames in CUDA (GPU only): the interop path's last step.

On the host path a GL pass blends the drawing (straight colour + weight, RGBA) over the
frames (the COMPOSITE shaders). On a GPU that pass, and the frames' upload into GL that it
needs, cost more than the drawing: OpenGL on an H100/H200 runs on the few graphics-capable
units of the chip (benchmarks/RESULTS.md, renderer phases). Here one CUDA kernel does the
same arithmetic as the shader (GLSL ``mix``, then UNORM8 rounding) on the drawing read
back from GL and the frames still in device memory.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

_SOURCE = r"""
extern "C" __global__ void blend_over(const unsigned char* frames,
                                      const unsigned char* drawing, unsigned char* out,
                                      long long pixels) {
    // frames, out: (P, 3) RGB; drawing: (P, 4) straight RGB + weight, all uint8
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels) return;
    const unsigned char* d = drawing + 4 * i;
    float a = d[3] / 255.f;
    for (int c = 0; c < 3; ++c) {
        float f = frames[3 * i + c] / 255.f;
        float v = f * (1.f - a) + (d[c] / 255.f) * a;  // GLSL mix(frame, drawn, a)
        v = v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
        out[3 * i + c] = (unsigned char)__float2int_rn(v * 255.f);
    }
}
"""
THREADS = 256


def source() -> str:
    """The CUDA source (tests compile it for the host too)."""
    return _SOURCE


@functools.lru_cache(maxsize=1)
def _kernel():
    import cupy

    return cupy.RawKernel(_SOURCE, "blend_over")


def blend_over(frames: Any, drawing: Any) -> Any:
    """(B, H, W, 3) uint8 CuPy frames, their drawing (B * H, W, 4) uint8 (rows of the
    frames' tiles, as read back from the target) -> (B, H, W, 3) uint8 new CuPy frames."""
    import cupy

    frames = cupy.ascontiguousarray(frames)
    drawing = cupy.ascontiguousarray(drawing)
    batch, height, width, _ = frames.shape
    if drawing.shape != (batch * height, width, 4):
        raise ValueError(
            f"drawing must be ({batch * height}, {width}, 4) for frames {frames.shape}, "
            f"got {drawing.shape}"
        )
    out = cupy.empty_like(frames)
    pixels = batch * height * width
    blocks = (pixels + THREADS - 1) // THREADS
    _kernel()((blocks,), (THREADS,), (frames, drawing, out, np.int64(pixels)))
    return out
