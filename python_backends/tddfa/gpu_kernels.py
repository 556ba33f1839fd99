"""Fused CUDA kernels (CuPy) for the two pixel steps of the GPU flavour.

The numpy/CuPy code in :mod:`tddfa.preprocess` and :mod:`tddfa.roi` launches some forty
small kernels per frame (index tables, gathers, fixed-point passes); on a GPU that is
launch- and Python-bound (~3 ms per 720p frame for the canvas, ~4 ms for the crops).
Here each is one kernel for a whole batch of frames, reading the uint8 frames once:

- :func:`detector_canvas`: B frames (H, W, 3) -> (B, 3, Hc, Wc) float32 canvases;
- :func:`face_crops`: B frames, (B, K, 4) ROI boxes and (B,) face counts (host or device)
  -> (B, K, 3, 120, 120) crops;
- :func:`vertex_normals`: the renderer's per-vertex normals, one scatter kernel.

The arithmetic is OpenCV's fixed-point INTER_LINEAR of :mod:`tddfa.resize` (11-bit
weights, the vertical pass dropping 4 + 16 bits, +2 >> 2), so the results equal the
numpy path bit for bit. The canvas's sampling taps depend only on the frame size: they
come from the numpy functions and are uploaded once per size. The crops' taps depend on
each ROI box: every thread computes its own in the kernel, with the same float64/float32
rounding steps as :func:`tddfa.roi.crop_taps` (one launch per batch instead of ~30).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tddfa.config import REGRESSOR_SIZE, PipelineConfig
from tddfa.preprocess import DETECTOR_MEAN_RGB, detector_scale, resized_size
from tddfa.resize import fixed_point_weights, inverse_scale, linear_taps

_BLEND = r"""
__device__ __forceinline__ float blend(const unsigned char* top, const unsigned char* bottom,
                                       int xa, int xb, int a0, int a1, int b0, int b1) {
    int t = top[xa] * a0 + top[xb] * a1;       // horizontal pass, 11-bit weights
    int u = bottom[xa] * a0 + bottom[xb] * a1;
    t = ((t >> 4) * b0) >> 16;                  // vertical pass as OpenCV's SIMD kernel
    u = ((u >> 4) * b1) >> 16;
    return (float)((t + u + 2) >> 2);
}
"""

_CANVAS = (
    _BLEND
    + r"""
extern "C" __global__ void detector_canvas(
        const unsigned char* frames, int height, int width,
        const int* taps_x, const int* taps_y, int out_h, int out_w,
        int canvas_h, int canvas_w, float m0, float m1, float m2,
        float* out, long long total) {
    // taps_x: (4, out_w) x0, x1, a0, a1; taps_y: (4, out_h) y0, y1, b0, b1
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int x = (int)(i % canvas_w);
    long long r = i / canvas_w;
    int y = (int)(r % canvas_h);
    r /= canvas_h;
    int c = (int)(r % 3);
    long long b = r / 3;
    if (y >= out_h || x >= out_w) {
        out[i] = c == 0 ? m0 : (c == 1 ? m1 : m2);
        return;
    }
    const unsigned char* frame = frames + b * (long long)height * width * 3;
    const unsigned char* top = frame + (long long)taps_y[y] * width * 3;
    const unsigned char* bottom = frame + (long long)taps_y[out_h + y] * width * 3;
    out[i] = blend(top, bottom, taps_x[x] * 3 + c, taps_x[out_w + x] * 3 + c,
                   taps_x[2 * out_w + x], taps_x[3 * out_w + x],
                   taps_y[2 * out_h + y], taps_y[3 * out_h + y]);
}
"""
)

_CROPS = (
    _BLEND
    + r"""
// One axis of tddfa.roi.crop_taps for destination index d: the two source indices and
// their 11-bit weights. The _rn intrinsics keep numpy's rounding (no fused multiply-add).
__device__ __forceinline__ void crop_tap(int d, long long start, long long length, int limit,
                                         int size, bool clamp_weight, int filled,
                                         int* i0, int* i1, int* w0, int* w1) {
    if (length < 1) length = 1;
    double inv_scale = 1.0 / ((double)size / (double)length);
    float pos = __double2float_rn(__dadd_rn(__dmul_rn((double)d + 0.5, inv_scale), -0.5));
    float base = floorf(pos);
    float weight = __fsub_rn(pos, base);
    long long first = (long long)base, last = length - 1;
    if (clamp_weight && (first < 0 || first >= last)) weight = 0.f;
    long long a = first < 0 ? 0 : (first > last ? last : first);
    long long b = first + 1 < 0 ? 0 : (first + 1 > last ? last : first + 1);
    a += start;
    b += start;
    *w1 = (int)rintf(__fmul_rn(weight, 2048.f)) * (b >= 0 && b < limit) * filled;
    *w0 = (int)rintf(__fmul_rn(__fsub_rn(1.f, weight), 2048.f)) * (a >= 0 && a < limit) * filled;
    *i0 = (int)(a < 0 ? 0 : (a >= limit ? limit - 1 : a));
    *i1 = (int)(b < 0 ? 0 : (b >= limit ? limit - 1 : b));
}

extern "C" __global__ void face_crops(
        const unsigned char* frames, int height, int width, int faces, int size,
        const float* rois, const int* counts, float* out, long long total) {
    // rois: (B * K, 4) sx, sy, ex, ey; counts: (B,) filled slots; out: (B * K, 3, size, size)
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int x = (int)(i % size);
    long long r = i / size;
    int y = (int)(r % size);
    r /= size;
    int c = (int)(r % 3);
    long long slot = r / 3;               // b * K + k
    long long b = slot / faces;
    if (slot % faces >= counts[b]) {      // an empty slot: a black crop
        out[i] = 0.f;
        return;
    }
    const float* roi = rois + slot * 4;
    long long sx = (long long)rint((double)roi[0]), sy = (long long)rint((double)roi[1]);
    long long crop_w = (long long)rint((double)roi[2]) - sx;
    long long crop_h = (long long)rint((double)roi[3]) - sy;
    int filled = crop_w > 0 && crop_h > 0;
    int x0, x1, a0, a1, y0, y1, b0, b1;
    crop_tap(x, sx, crop_w, width, size, true, filled, &x0, &x1, &a0, &a1);
    crop_tap(y, sy, crop_h, height, size, false, filled, &y0, &y1, &b0, &b1);
    const unsigned char* frame = frames + b * (long long)height * width * 3;
    const unsigned char* top = frame + (long long)y0 * width * 3;
    const unsigned char* bottom = frame + (long long)y1 * width * 3;
    out[i] = blend(top, bottom, x0 * 3 + c, x1 * 3 + c, a0, a1, b0, b1);
}
"""
)

_NORMALS = r"""
extern "C" __global__ void vertex_normals(
        const float* vertices, const int* triangles, int n, int t, float* out,
        long long total) {
    // vertices, out: (F, 3, N) planes; triangles: (3, T); one thread per (face, triangle)
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    long long f = i / t;
    int j = (int)(i % t);
    int a = triangles[j], b = triangles[t + j], c = triangles[2 * t + j];
    const float* x = vertices + f * 3 * n;
    const float* y = x + n;
    const float* z = y + n;
    float e1x = x[b] - x[a], e1y = y[b] - y[a], e1z = z[b] - z[a];
    float e2x = x[c] - x[a], e2y = y[c] - y[a], e2z = z[c] - z[a];
    float cx = e1y * e2z - e1z * e2y;
    float cy = e1z * e2x - e1x * e2z;
    float cz = e1x * e2y - e1y * e2x;
    float* o = out + f * 3 * n;
    int corners[3] = {a, b, c};
    for (int k = 0; k < 3; ++k) {
        atomicAdd(o + corners[k], cx);
        atomicAdd(o + n + corners[k], cy);
        atomicAdd(o + 2 * n + corners[k], cz);
    }
}
"""

THREADS = 256


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any, Any]:
    import cupy

    return (
        cupy.RawKernel(_CANVAS, "detector_canvas"),
        cupy.RawKernel(_CROPS, "face_crops"),
        cupy.RawKernel(_NORMALS, "vertex_normals"),
    )


def canvas_taps(height: int, width: int, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Host taps of ``resize_bilinear_u8`` from height x width to out_h x out_w.

    Returns:
        ``(taps_x, taps_y)``: int32 (4, out_w) rows x0, x1, a0, a1 and (4, out_h) rows
        y0, y1, b0, b1 (pixel indices and 11-bit weights).
    """
    x0, x1, wx = linear_taps(np, out_w, width, inverse_scale(out_w, width))
    y0, y1, wy = linear_taps(np, out_h, height, inverse_scale(out_h, height), clamp_weight=False)
    taps_x = np.stack([x0, x1, *fixed_point_weights(np, wx)]).astype(np.int32)
    taps_y = np.stack([y0, y1, *fixed_point_weights(np, wy)]).astype(np.int32)
    return taps_x, taps_y


@functools.lru_cache(maxsize=16)
def _device_canvas_taps(device: int, height: int, width: int, out_h: int, out_w: int):
    import cupy

    with cupy.cuda.Device(device):
        return tuple(cupy.asarray(t) for t in canvas_taps(height, width, out_h, out_w))


def _launch(kernel, total: int, args: tuple) -> None:
    blocks = (total + THREADS - 1) // THREADS
    kernel((blocks,), (THREADS,), (*args, np.int64(total)))


def detector_canvas(frames: Any, cfg: PipelineConfig) -> tuple[Any, float]:
    """(B, H, W, 3) uint8 CuPy frames -> ((B, 3, Hc, Wc) float32 canvases, scale).

    Equal to :func:`tddfa.preprocess.to_detector_canvas` on every frame.
    """
    import cupy

    frames = cupy.ascontiguousarray(frames)
    batch, height, width, _ = frames.shape
    scale = detector_scale(height, width, cfg)
    out_h, out_w = resized_size(height, width, scale)
    taps_x, taps_y = _device_canvas_taps(frames.device.id, height, width, out_h, out_w)
    out = cupy.empty((batch, 3, cfg.canvas_height, cfg.canvas_width), dtype=cupy.float32)
    mean = [np.float32(m) for m in DETECTOR_MEAN_RGB]
    _launch(
        _kernels()[0],
        out.size,
        (frames, np.int32(height), np.int32(width), taps_x, taps_y, np.int32(out_h),
         np.int32(out_w), np.int32(cfg.canvas_height), np.int32(cfg.canvas_width), *mean, out),
    )  # fmt: skip
    return out, scale


def crops_source() -> str:
    """The CUDA source of :func:`face_crops` (tests compile it for the host too)."""
    return _CROPS


def face_crops(frames: Any, rois: Any, counts: Any = None, size: int = REGRESSOR_SIZE) -> Any:
    """(B, H, W, 3) uint8 CuPy frames, (B, K, 4) ROI boxes and (B,) filled slots per frame
    (numpy or CuPy; None: all K) -> (B, K, 3, size, size) float32 CuPy crops, equal to
    :func:`tddfa.roi.crop_and_resize` per frame (zeros in empty slots and empty boxes).

    One launch: every thread computes its own sampling taps from its ROI box (the
    arithmetic of :func:`tddfa.roi.crop_taps`), so no tap table is built per call.
    """
    import cupy

    frames = cupy.ascontiguousarray(frames)
    batch, height, width, _ = frames.shape
    faces = rois.shape[1]
    rois = cupy.ascontiguousarray(cupy.asarray(rois, dtype=cupy.float32))
    if counts is None:
        counts = cupy.full((batch,), faces, dtype=cupy.int32)
    counts = cupy.ascontiguousarray(cupy.asarray(counts, dtype=cupy.int32).reshape(-1))
    out = cupy.empty((batch, faces, 3, size, size), dtype=cupy.float32)
    _launch(
        _kernels()[1],
        out.size,
        (frames, np.int32(height), np.int32(width), np.int32(faces), np.int32(size), rois,
         counts, out),
    )  # fmt: skip
    return out


def vertex_normals(vertices: Any, triangles: Any) -> Any:
    """(F, 3, N) float32 CuPy vertices, (3, T) int32 CuPy triangles -> (F, 3, N) float32
    area-weighted vertex normals (the sum of the adjacent faces' edge cross products, as
    :class:`tddfa.render.VertexNormals`; summed with atomics, so the last bits of a
    normal may vary between runs)."""
    import cupy

    vertices = cupy.ascontiguousarray(vertices, dtype=cupy.float32)
    faces, _, n = vertices.shape
    t = triangles.shape[1]
    out = cupy.zeros_like(vertices)
    _launch(_kernels()[2], faces * t, (vertices, triangles, np.int32(n), np.int32(t), out))
    return out
