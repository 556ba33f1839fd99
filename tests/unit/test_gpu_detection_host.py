"""The CUDA source of the selection kernel (tddfa.gpu_detection), compiled for the host with
a C++ compiler, against the definition of face selection (tddfa.detection.select_faces).

No GPU here: a thin host emulation of the CUDA primitives it uses (one std::thread per CUDA
thread, __syncthreads as a barrier, atomics, warp shuffles through a barrier-synchronised
slot array) runs the kernel source with 1 and with 64 threads per block: its logic,
arithmetic and block-level synchronisation (keys, pre-NMS cap, greedy NMS, zero rows).
tests/gpu runs the same source on the device with 512 threads per block."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from host_cuda import compile_for_host

from tddfa import gpu_detection
from tddfa.config import DETECTOR_VARIANCES, PipelineConfig
from tddfa.detection import select_faces, select_faces_per_frame
from tddfa.priors import prior_boxes

# Just enough of CUDA for a block of host threads.
_HOST_CUDA = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
struct Dim { int x; };
static Dim blockIdx, blockDim;
static thread_local Dim threadIdx;
static std::barrier<>* block_barrier;
static unsigned long long shuffle_slots[1024];
#define __global__
#define __shared__ static
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
template <class T> T __shfl_down_sync(unsigned int, T v, int offset) {
    shuffle_slots[threadIdx.x] = (unsigned long long)v;
    block_barrier->arrive_and_wait();
    int lane = threadIdx.x & 31;
    T r = (lane + offset < 32 && threadIdx.x + offset < blockDim.x)
              ? (T)shuffle_slots[threadIdx.x + offset] : v;
    block_barrier->arrive_and_wait();
    return r;
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
    unsigned long long old = __atomic_load_n(a, __ATOMIC_SEQ_CST);
    while (v > old && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST,
                                                   __ATOMIC_SEQ_CST)) {}
    return old;
}
using std::exp; using std::fmaxf; using std::fminf;
"""

_HOST_LAUNCH = r"""
extern "C" void launch(int threads, int batch, const float* loc, const float* conf,
        const float* priors, int num_priors, float threshold, int max_candidates,
        double iou_threshold, int rounds, int slots, float centre_var, float size_var,
        float in_w, float in_h, float scale, unsigned long long* keys, float* boxes,
        float* out, int* counts) {
    blockDim.x = threads;
    for (int b = 0; b < batch; ++b) {
        blockIdx.x = b;
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> block;
        for (int t = 0; t < threads; ++t)
            block.emplace_back([=] {
                threadIdx.x = t;
                select_faces(loc, conf, priors, num_priors, threshold, max_candidates,
                             iou_threshold, rounds, slots, centre_var, size_var, in_w, in_h,
                             scale, keys, boxes, out, counts);
            });
        for (auto& thread : block) thread.join();
    }
}
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    # -ffp-contract=off: no fused multiply-add, as the device build's --fmad=false
    return compile_for_host(
        tmp_path_factory.mktemp("kernel"),
        _HOST_CUDA,
        gpu_detection._SELECT,
        _HOST_LAUNCH,
        flags=("-std=c++20", "-ffp-contract=off", "-pthread"),
    )


def _run(kernel, loc, conf, priors, scale, cfg, threads=1):
    batch, count = loc.shape[:2]
    keys = np.zeros((batch, count), np.uint64)
    boxes = np.zeros((batch, count, 4), np.float32)
    out = np.full((batch, cfg.max_faces, 5), np.nan, np.float32)  # the kernel zeroes the rest
    counts = np.full(batch, -1, np.int32)

    def ptr(array):
        return array.ctypes.data_as(ctypes.c_void_p)

    centre_var, size_var = DETECTOR_VARIANCES
    height, width = cfg.canvas_height, cfg.canvas_width
    kernel(
        ctypes.c_int(threads), ctypes.c_int(batch), ptr(loc), ptr(conf), ptr(priors), ctypes.c_int(count),
        ctypes.c_float(max(cfg.pre_nms_threshold, cfg.score_threshold)),
        ctypes.c_int(cfg.pre_nms_top_k), ctypes.c_double(cfg.nms_iou_threshold),
        ctypes.c_int(min(cfg.max_faces, cfg.post_nms_top_k)), ctypes.c_int(cfg.max_faces),
        ctypes.c_float(centre_var), ctypes.c_float(size_var), ctypes.c_float(width),
        ctypes.c_float(height), ctypes.c_float(scale), ptr(keys),
        ptr(boxes), ptr(out), ptr(counts),
    )  # fmt: skip
    return out, counts


def _detections(rng, batch, priors):
    loc = rng.normal(0, 0.3, (batch, len(priors), 4)).astype(np.float32)
    score = rng.uniform(0, 0.3, (batch, len(priors))).astype(np.float32)
    for b in range(batch - 1):
        for _ in range(6):
            near = np.abs(priors[:, :2] - rng.uniform(0, 1, 2)).max(axis=1) < 0.08
            score[b, near] = rng.uniform(0.4, 1.0, near.sum())
    score[0, 3] = score[0, 5] = 0.875  # a tie
    return loc, np.ascontiguousarray(np.stack([1 - score, score], axis=-1), dtype=np.float32)


@pytest.mark.parametrize(
    "cfg",
    [
        PipelineConfig(canvas_height=256, canvas_width=320),
        PipelineConfig(canvas_height=256, canvas_width=320, max_faces=3),
        PipelineConfig(canvas_height=256, canvas_width=320, pre_nms_top_k=30),
        PipelineConfig(
            canvas_height=256, canvas_width=320, nms_iou_threshold=0.6, post_nms_top_k=2
        ),
    ],
    ids=["default", "k3", "pre-nms-cap", "iou0.6-post2"],
)
@pytest.mark.parametrize("threads", [1, 64])
def test_kernel_source_equals_numpy(kernel, cfg, threads):
    priors = np.ascontiguousarray(prior_boxes(cfg.canvas_height, cfg.canvas_width))
    loc, conf = _detections(np.random.default_rng(cfg.pre_nms_top_k), 4, priors)
    out, counts = _run(kernel, loc, conf, priors, 0.43, cfg, threads)
    want, want_counts = select_faces_per_frame(loc, conf, priors, 0.43, cfg)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(out, want)  # bit for bit, zero rows included
    assert counts[-1] == 0 and counts[:-1].min() >= 2


def test_kernel_source_on_the_reference_outputs(kernel, reference_dir):
    raw = np.load(reference_dir / "emma_faceboxes_raw.npz")
    height, width = (int(d) for d in raw["input_shape"][2:])
    cfg = PipelineConfig(canvas_height=height, canvas_width=width)
    priors = np.ascontiguousarray(prior_boxes(height, width))
    loc = np.ascontiguousarray(raw["loc"], np.float32)
    conf = np.ascontiguousarray(raw["conf"], np.float32)
    out, counts = _run(kernel, loc, conf, priors, float(raw["scale"]), cfg, threads=64)
    want, count = select_faces(loc[0], conf[0], priors, float(raw["scale"]), cfg)
    assert counts.tolist() == [count] == [3]
    np.testing.assert_array_equal(out[0], want)
