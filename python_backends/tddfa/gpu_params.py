"""The aligner's parameter maths on the GPU as one fused kernel.

:meth:`tddfa.aligner.Aligner.parameters` written xp-agnostically launches about a hundred
tiny CuPy kernels for (B, K, 62) numbers: launch-bound (~5 ms measured on an H100), against
one launch here. The kernel reproduces tddfa.params (docs/models.md 2 and 4) per face slot, one
thread per face: de-normalisation, pose angles (float64, gimbal lock as the original),
the model->image transform (float64, then float32), the 68 landmarks (float32) with
``z -= min z``, and zeros in empty slots. tests/gpu compares it with the numpy path.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_PARAMS, NUM_SHAPE, REGRESSOR_SIZE
from tddfa.params import GIMBAL_LIMIT

_SOURCE = r"""
extern "C" __global__ void face_parameters(
    const float* norm, const float* mean, const float* std, const float* rois,
    const int* counts, const float* u_lm, const float* w_lm, int faces, int k,
    float* params, float* pose, float* landmarks, float* transform)
{
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= faces) return;
    const int NP = 62, NL = 68, NC = 50;
    float* p = params + f * NP;
    float* ps = pose + f * 3;
    float* lm = landmarks + f * 3 * NL;
    float* t = transform + f * 12;
    if (f % k >= counts[f / k]) {  // empty slot: zeros
        for (int i = 0; i < NP; ++i) p[i] = 0.f;
        for (int i = 0; i < 3; ++i) ps[i] = 0.f;
        for (int i = 0; i < 3 * NL; ++i) lm[i] = 0.f;
        for (int i = 0; i < 12; ++i) t[i] = 0.f;
        return;
    }
    for (int i = 0; i < NP; ++i) p[i] = norm[f * NP + i] * std[i] + mean[i];

    // pose (tddfa.params.pose_degrees), in double
    double r1[3], r2[3], r3[3], n1 = 0, n2 = 0;
    for (int i = 0; i < 3; ++i) { r1[i] = p[i]; r2[i] = p[4 + i]; n1 += r1[i] * r1[i]; n2 += r2[i] * r2[i]; }
    n1 = sqrt(n1); n2 = sqrt(n2);
    for (int i = 0; i < 3; ++i) { r1[i] /= (n1 > 0 ? n1 : 1); r2[i] /= (n2 > 0 ? n2 : 1); }
    r3[0] = r1[1] * r2[2] - r1[2] * r2[1];
    r3[1] = r1[2] * r2[0] - r1[0] * r2[2];
    r3[2] = r1[0] * r2[1] - r1[1] * r2[0];
    const double limit = GIMBAL_LIMIT, half_pi = 1.5707963267948966;
    double yaw, pitch, roll;
    if (r3[0] > limit) { yaw = half_pi; pitch = atan2(-r1[1], -r1[2]); roll = 0; }
    else if (r3[0] < -limit) { yaw = -half_pi; pitch = atan2(r1[1], r1[2]); roll = 0; }
    else {
        yaw = asin(fmin(fmax(r3[0], -1.0), 1.0));
        const double c = cos(yaw);
        pitch = atan2(r3[1] / c, r3[2] / c);
        roll = atan2(r2[0] / c, r1[0] / c);
    }
    const double deg = 57.29577951308232;
    ps[0] = (float)(yaw * deg); ps[1] = (float)(pitch * deg); ps[2] = (float)(roll * deg);

    // model -> image transform (tddfa.params.model_to_image), in double
    const float* roi = rois + f * 4;
    const double size = REGRESSOR_SIZE;
    const double sx = roi[0], sy = roi[1], ex = roi[2], ey = roi[3];
    const double scale_x = (ex - sx) / size, scale_y = (ey - sy) / size;
    const double scale_z = (scale_x + scale_y) / 2;
    for (int j = 0; j < 4; ++j) {
        const double shift = j == 3 ? 1.0 : 0.0;
        double x = scale_x * ((double)p[j] - shift);
        double y = -scale_y * (double)p[4 + j];
        double z = scale_z * ((double)p[8 + j] - shift);
        if (j == 3) { x += sx; y += size * scale_y + sy; }
        t[j] = (float)x; t[4 + j] = (float)y; t[8 + j] = (float)z;
    }

    // 68 landmarks: (u + W alpha) then the transform, float32; z starts at 0
    float zmin = 3.4e38f;
    for (int l = 0; l < NL; ++l) {
        float v[3];
        for (int a = 0; a < 3; ++a) {
            const int row = 3 * l + a;
            float acc = 0.f;
            for (int c = 0; c < NC; ++c) acc += p[12 + c] * w_lm[row * NC + c];
            v[a] = u_lm[row] + acc;
        }
        for (int a = 0; a < 3; ++a) {
            const float value = t[4 * a] * v[0] + t[4 * a + 1] * v[1] + t[4 * a + 2] * v[2] + t[4 * a + 3];
            lm[a * NL + l] = value;
        }
        zmin = fminf(zmin, lm[2 * NL + l]);
    }
    for (int l = 0; l < NL; ++l) lm[2 * NL + l] -= zmin;
}
"""


def kernel_source() -> str:
    """The CUDA C source with the constants filled in (tests compile it for the host too)."""
    return _SOURCE.replace("GIMBAL_LIMIT", repr(float(GIMBAL_LIMIT))).replace(
        "REGRESSOR_SIZE", f"{float(REGRESSOR_SIZE)!r}"
    )


def landmark_basis(bfm: Any) -> np.ndarray:
    """(204, 50) float32: the landmark rows of the shape and expression bases side by side."""
    return np.ascontiguousarray(np.concatenate([bfm.w_shp_lm, bfm.w_exp_lm], axis=1), np.float32)


@functools.cache
def _kernel(device: int):
    import cupy

    with cupy.cuda.Device(device):
        return cupy.RawKernel(kernel_source(), "face_parameters")


@functools.cache
def _tables(bfm: Any, device: int) -> tuple[Any, ...]:
    import cupy

    with cupy.cuda.Device(device):
        return (
            cupy.asarray(bfm.param_mean, dtype=cupy.float32),
            cupy.asarray(bfm.param_std, dtype=cupy.float32),
            cupy.asarray(bfm.u_lm, dtype=cupy.float32),
            cupy.asarray(landmark_basis(bfm)),
        )


def face_parameters(params_norm: Any, rois: Any, counts: Any, bfm: Any) -> dict[str, Any]:
    """(B,K,62) normalised params, (B,K,4) ROI boxes, (B,) counts (CuPy) -> the aligner's
    outputs (see tddfa.aligner.ALIGNED) as CuPy arrays on the same device, one launch."""
    import cupy

    batch, k = params_norm.shape[:2]
    faces = batch * k
    device = params_norm.device.id
    mean, std, u_lm, w_lm = _tables(bfm, device)
    params = cupy.empty((batch, k, NUM_PARAMS), cupy.float32)
    pose = cupy.empty((batch, k, 3), cupy.float32)
    landmarks = cupy.empty((batch, k, 3, NUM_LANDMARKS), cupy.float32)
    transform = cupy.empty((batch, k, 3, 4), cupy.float32)
    threads = 64
    _kernel(device)(
        ((faces + threads - 1) // threads,),
        (threads,),
        (
            cupy.ascontiguousarray(params_norm, dtype=cupy.float32),
            mean,
            std,
            cupy.ascontiguousarray(rois, dtype=cupy.float32),
            cupy.ascontiguousarray(counts, dtype=cupy.int32),
            u_lm,
            w_lm,
            np.int32(faces),
            np.int32(k),
            params,
            pose,
            landmarks,
            transform,
        ),
    )
    return {
        "PARAMS": params,
        "POSE": pose,
        "LANDMARKS": landmarks,
        "ALPHA_SHP": params[:, :, 12 : 12 + NUM_SHAPE],
        "ALPHA_EXP": params[:, :, 12 + NUM_SHAPE : 12 + NUM_SHAPE + NUM_EXP],
        "TRANSFORM": transform,
    }
