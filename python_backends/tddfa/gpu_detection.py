"""Face selection on the GPU: decode + score filter + pre-NMS cap + greedy NMS + top-K in
one CUDA kernel (CuPy), for a whole batch, with no host synchronisation.

One thread block per frame. The block

1. gives every prior a uint64 sort key, ``score bits << 32 | (2**32 - 1 - index)`` for a
   prior above the threshold and 0 otherwise (non-negative float32 scores order as their
   bits, so keys order candidates by descending score, ties by ascending index: the stable
   sort of :func:`tddfa.detection.select_faces`; keys are unique, so "the best live
   candidate" is one argmax), and decodes the candidates' boxes into a scratch buffer;
2. if there are more than ``pre_nms_top_k`` candidates, finds the cut-off key with a
   bitwise search (64 block-wide counts) and drops the candidates below it;
3. runs ``min(max_faces, post_nms_top_k)`` rounds of greedy NMS: a block-wide argmax of the
   live keys is the next face; every thread drops its live candidates whose IoU (+1-pixel
   convention, docs/models.md 1) with that face is >= the threshold;
4. writes the faces (B, K, 5), zero rows past the count, and the counts (B,).

It gives the faces of :func:`tddfa.detection.select_faces` on each frame; the arithmetic
is the same float32 operations in the same order (compiled with ``--fmad=false`` so that no
multiply-add is fused; ``exp`` in double, rounded), so the boxes are bit-equal to the numpy
path. Fixed launch shape and no host reads: the kernel can be captured in a CUDA graph
(pass preallocated ``out``/``counts``/scratch through :class:`FaceSelector`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tddfa.config import DETECTOR_VARIANCES, PipelineConfig

THREADS = 512  # per block (= per frame); P / THREADS priors per thread (39 at 720x1280)

_SELECT = r"""
extern "C" __global__ void select_faces(
        const float* loc, const float* conf, const float* priors, int num_priors,
        float threshold, int max_candidates, double iou_threshold, int rounds, int slots,
        float centre_var, float size_var, float in_w, float in_h, float scale,
        unsigned long long* keys, float* boxes, float* out, int* counts) {
    // loc (B, P, 4), conf (B, P, 2), priors (P, 4); scratch keys (B, P), boxes (B, P, 4);
    // out (B, slots, 5), counts (B,)
    const int b = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const long long P = num_priors;
    loc += b * P * 4;
    conf += b * P * 2;
    keys += b * P;
    boxes += b * P * 4;
    out += (long long)b * slots * 5;
    __shared__ int valid;
    __shared__ int at_least;
    __shared__ unsigned long long best;
    if (tid == 0) valid = 0;
    __syncthreads();

    // 1. keys and decoded boxes (tddfa.detection.decode_boxes, same operation order)
    int mine = 0;
    for (long long i = tid; i < P; i += nt) {
        float score = conf[2 * i + 1];
        unsigned long long key = 0ull;
        if (score > threshold) {
            key = ((unsigned long long)__float_as_uint(score) << 32)
                  | (0xFFFFFFFFull - (unsigned long long)i);
            ++mine;
            const float* p = priors + 4 * i;
            const float* l = loc + 4 * i;
            float cx = p[0] + (l[0] * centre_var) * p[2];
            float cy = p[1] + (l[1] * centre_var) * p[3];
            float w = p[2] * (float)exp((double)(l[2] * size_var));
            float h = p[3] * (float)exp((double)(l[3] * size_var));
            float x1 = cx - w / 2.0f, y1 = cy - h / 2.0f;
            float* o = boxes + 4 * i;
            o[0] = (x1 * in_w) / scale;
            o[1] = (y1 * in_h) / scale;
            o[2] = ((x1 + w) * in_w) / scale;
            o[3] = ((y1 + h) * in_h) / scale;
        }
        keys[i] = key;
    }
    atomicAdd(&valid, mine);
    __syncthreads();

    // 2. pre-NMS cap: the max_candidates-th largest key, bit by bit from the top
    if (valid > max_candidates) {
        unsigned long long cut = 0ull;
        for (int bit = 63; bit >= 0; --bit) {
            unsigned long long trial = cut | (1ull << bit);
            if (tid == 0) at_least = 0;
            __syncthreads();
            int n = 0;
            for (long long i = tid; i < P; i += nt) n += keys[i] >= trial;
            atomicAdd(&at_least, n);
            __syncthreads();
            if (at_least >= max_candidates) cut = trial;
            __syncthreads();
        }
        for (long long i = tid; i < P; i += nt)
            if (keys[i] < cut) keys[i] = 0ull;
        __syncthreads();
    }

    // 3. greedy NMS, one face per round
    int found = 0;
    for (int r = 0; r < rounds; ++r) {
        if (tid == 0) best = 0ull;
        __syncthreads();
        unsigned long long top = 0ull;
        for (long long i = tid; i < P; i += nt) top = keys[i] > top ? keys[i] : top;
        for (int offset = 16; offset > 0; offset >>= 1) {
            unsigned long long other = __shfl_down_sync(0xFFFFFFFFu, top, offset);
            top = other > top ? other : top;
        }
        if ((tid & 31) == 0) atomicMax(&best, top);
        __syncthreads();
        const unsigned long long chosen = best;
        if (chosen == 0ull) break;  // the same value in every thread
        const long long j = (long long)(0xFFFFFFFFull - (chosen & 0xFFFFFFFFull));
        const float bx1 = boxes[4 * j], by1 = boxes[4 * j + 1];
        const float bx2 = boxes[4 * j + 2], by2 = boxes[4 * j + 3];
        const float area = (bx2 - bx1 + 1.0f) * (by2 - by1 + 1.0f);
        if (tid == 0) {
            float* o = out + 5 * r;
            o[0] = bx1; o[1] = by1; o[2] = bx2; o[3] = by2;
            o[4] = conf[2 * j + 1];
        }
        for (long long i = tid; i < P; i += nt) {
            if (keys[i] == 0ull) continue;
            const float* q = boxes + 4 * i;
            float iw = fmaxf(fminf(bx2, q[2]) - fmaxf(bx1, q[0]) + 1.0f, 0.0f);
            float ih = fmaxf(fminf(by2, q[3]) - fmaxf(by1, q[1]) + 1.0f, 0.0f);
            float inter = iw * ih;
            float other = (q[2] - q[0] + 1.0f) * (q[3] - q[1] + 1.0f);
            float iou = inter / ((area + other) - inter);
            if (i == j || (double)iou >= iou_threshold) keys[i] = 0ull;
        }
        ++found;
        __syncthreads();
    }

    // 4. zero rows past the count
    for (int i = found * 5 + tid; i < slots * 5; i += nt) out[i] = 0.0f;
    if (tid == 0) counts[b] = found;
}
"""


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    import cupy

    # no fused multiply-add: the float32 results must equal numpy's operation by operation
    return cupy.RawKernel(_SELECT, "select_faces", options=("--fmad=false",))


class FaceSelector:
    """GPU face selection for one detector input size; holds the priors on the device.

    ``FaceSelector(cfg, priors)(loc, conf, scale)`` -> ``(boxes (B, K, 5) float32,
    counts (B,) int32)`` CuPy arrays, equal to :func:`tddfa.detection.select_faces` per frame.

    Args:
        cfg: thresholds, limits, K.
        priors: (P, 4) float32 priors of the detector input (numpy; copied once per device).
        input_size: (height, width) the priors were made for; default the canvas.
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        priors: np.ndarray,
        input_size: tuple[int, int] | None = None,
    ):
        self.config = cfg
        self.priors = np.ascontiguousarray(priors, dtype=np.float32)
        self.input_size = input_size or (cfg.canvas_height, cfg.canvas_width)
        self._device_priors: dict[int, Any] = {}

    def priors_on(self, device: int) -> Any:
        """The (P, 4) priors as a CuPy array on ``device`` (uploaded once)."""
        import cupy

        if device not in self._device_priors:
            with cupy.cuda.Device(device):
                self._device_priors[device] = cupy.asarray(self.priors)
        return self._device_priors[device]

    def __call__(
        self,
        loc: Any,
        conf: Any,
        scale: float,
        *,
        out: Any = None,
        counts: Any = None,
        scratch: tuple[Any, Any] | None = None,
    ) -> tuple[Any, Any]:
        """Select the faces of a batch.

        Args:
            loc: (B, P, 4) float32 CuPy detector offsets.
            conf: (B, P, 2) float32 CuPy softmaxed scores (column 1: face).
            scale: rescale factor of the frames (they share their size).
            out, counts, scratch: optional preallocated (B, K, 5) float32, (B,) int32 and
                ((B, P) uint64, (B, P, 4) float32) buffers, e.g. for CUDA graph capture.

        Returns:
            ``(boxes, counts)``: (B, K, 5) float32 x1, y1, x2, y2, score in original image
            pixels, rows past the count zero; (B,) int32 face counts.
        """
        import cupy

        cfg = self.config
        loc = cupy.ascontiguousarray(loc, dtype=cupy.float32)
        conf = cupy.ascontiguousarray(conf, dtype=cupy.float32)
        batch, num_priors = int(loc.shape[0]), int(loc.shape[1])
        if num_priors != len(self.priors) or tuple(conf.shape) != (batch, num_priors, 2):
            raise ValueError(
                f"LOC {tuple(loc.shape)}, CONF {tuple(conf.shape)} and priors "
                f"{self.priors.shape} disagree on the number of priors: build the priors "
                "for the detector input size"
            )
        if out is None:
            out = cupy.empty((batch, cfg.max_faces, 5), dtype=cupy.float32)
        if counts is None:
            counts = cupy.empty(batch, dtype=cupy.int32)
        if scratch is None:
            scratch = (
                cupy.empty((batch, num_priors), dtype=cupy.uint64),
                cupy.empty((batch, num_priors, 4), dtype=cupy.float32),
            )
        height, width = self.input_size
        centre_var, size_var = DETECTOR_VARIANCES
        if batch:
            _kernel()(
                (batch,),
                (THREADS,),
                (loc, conf, self.priors_on(loc.device.id), np.int32(num_priors),
                 np.float32(max(cfg.pre_nms_threshold, cfg.score_threshold)),
                 np.int32(cfg.pre_nms_top_k), np.float64(cfg.nms_iou_threshold),
                 np.int32(min(cfg.max_faces, cfg.post_nms_top_k)), np.int32(cfg.max_faces),
                 np.float32(centre_var), np.float32(size_var), np.float32(width),
                 np.float32(height), np.float32(scale), *scratch, out, counts),
            )  # fmt: skip
        return out, counts
