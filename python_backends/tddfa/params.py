"""From regressor output to pose, landmarks and the model->image transform (docs/models.md 4).

``params`` are the 62 de-normalised 3DMM parameters of a face: a 3x4 matrix [R | t]
(row-major, R a scaled rotation), 40 shape and 10 expression coefficients. Model-space
vertices V (3, N) map into the 120x120 crop as R @ V + t and from there into the frame
by the "similar transform" of the ROI box; both steps are affine, so they are composed
into one (3, 4) matrix per face (``model_to_image``) that the renderer or a GPU kernel
can apply to the dense mesh. All functions take K faces at once, numpy or CuPy.
"""

from __future__ import annotations

from typing import Any

from tddfa.config import NUM_EXP, NUM_LANDMARKS, NUM_SHAPE, REGRESSOR_SIZE
from tddfa.xp import get_xp

POSE_END = 12  # params[:12] is the 3x4 matrix [R | t]
SHAPE_END = POSE_END + NUM_SHAPE
EXP_END = SHAPE_END + NUM_EXP
# |R[2, 0]| above this is treated as gimbal lock (yaw = +-90 degrees), as the original does.
GIMBAL_LIMIT = 0.998


def denormalize(params_norm: Any, mean: Any, std: Any) -> Any:
    """(K, 62) normalised regressor output -> (K, 62) float32 params = x * std + mean."""
    xp = get_xp(params_norm)
    out = params_norm.astype(xp.float32) * xp.asarray(std, dtype=xp.float32)
    return out + xp.asarray(mean, dtype=xp.float32)


def split_params(params: Any) -> tuple[Any, Any, Any]:
    """(K, 62) -> camera (K, 3, 4) [R | t], alpha_shp (K, 40), alpha_exp (K, 10)."""
    camera = params[:, :POSE_END].reshape(-1, 3, 4)
    return camera, params[:, POSE_END:SHAPE_END], params[:, SHAPE_END:EXP_END]


def pose_degrees(params: Any) -> Any:
    """Yaw, pitch, roll of each face in degrees.

    Args:
        params: (K, 62) de-normalised params.

    Returns:
        (K, 3) float32 (yaw, pitch, roll). The rows of R are normalised, the third is
        their cross product; |R[2, 0]| > 0.998 is handled as gimbal lock (roll 0).
        All-zero params give zeros.
    """
    xp = get_xp(params)
    camera = split_params(params.astype(xp.float64))[0]
    r1, r2 = camera[:, 0, :3], camera[:, 1, :3]
    n1 = xp.linalg.norm(r1, axis=1, keepdims=True)
    n2 = xp.linalg.norm(r2, axis=1, keepdims=True)
    r1 = r1 / xp.where(n1 > 0, n1, 1)
    r2 = r2 / xp.where(n2 > 0, n2, 1)
    r3 = _cross(r1, r2)
    r20, r21, r22 = r3[:, 0], r3[:, 1], r3[:, 2]
    r00, r01, r02 = r1[:, 0], r1[:, 1], r1[:, 2]
    r10 = r2[:, 0]

    up = r20 > GIMBAL_LIMIT
    down = r20 < -GIMBAL_LIMIT
    regular = ~(up | down)
    yaw = xp.arcsin(xp.clip(r20, -1, 1))
    cos_yaw = xp.where(regular, xp.cos(yaw), 1)
    pitch = xp.arctan2(r21 / cos_yaw, r22 / cos_yaw)
    roll = xp.arctan2(r10 / cos_yaw, r00 / cos_yaw)

    half_pi = xp.pi / 2
    yaw = xp.where(up, half_pi, xp.where(down, -half_pi, yaw))
    pitch = xp.where(up, xp.arctan2(-r01, -r02), xp.where(down, xp.arctan2(r01, r02), pitch))
    roll = xp.where(regular, roll, 0)
    return xp.degrees(xp.stack([yaw, pitch, roll], axis=1)).astype(xp.float32)


def _cross(a: Any, b: Any) -> Any:
    """(K, 3) x (K, 3) row-wise cross product: numpy's own arithmetic (``np.cross``) without
    its axis handling, which cost more than the products for a few faces."""
    xp = get_xp(a)
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return xp.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def model_to_image(params: Any, rois: Any) -> Any:
    """Per-face affine map from model space to image space, without ``z -= min z``.

    With crop-frame points X = R @ V + t and ROI (sx, sy, ex, ey), the original maps
    x -> (x - 1) * (ex - sx) / 120 + sx, y -> (120 - y) * (ey - sy) / 120 + sy,
    z -> (z - 1) * ((ex - sx) + (ey - sy)) / 240; this composes both steps.

    Args:
        params: (K, 62) de-normalised params.
        rois: (K, 4) ROI boxes (sx, sy, ex, ey) in image pixels.

    Returns:
        (K, 3, 4) float32 T with image_xyz = T[:, :, :3] @ V + T[:, :, 3:].
    """
    xp = get_xp(params)
    camera = split_params(params.astype(xp.float64))[0]
    rois = rois.astype(xp.float64)
    size = float(REGRESSOR_SIZE)
    sx, sy, ex, ey = (rois[:, i, None] for i in range(4))
    scale_x = (ex - sx) / size
    scale_y = (ey - sy) / size
    scale_z = (scale_x + scale_y) / 2
    shift = xp.asarray([0.0, 0.0, 0.0, 1.0])  # subtracts 1 from the translation column
    row_x = scale_x * (camera[:, 0] - shift)
    row_x[:, 3] += sx[:, 0]
    row_y = -scale_y * camera[:, 1]
    row_y[:, 3] += (size * scale_y + sy)[:, 0]
    row_z = scale_z * (camera[:, 2] - shift)
    return xp.stack([row_x, row_y, row_z], axis=1).astype(xp.float32)


def apply_transform(transform: Any, vertices: Any) -> Any:
    """Map model-space vertices into the image and shift each face's depth to start at 0.

    Args:
        transform: (K, 3, 4) from :func:`model_to_image`.
        vertices: (K, 3, N) model-space vertices.

    Returns:
        (K, 3, N) float32 image coordinates (x right, y down, z towards the camera
        with min z = 0 per face).
    """
    xp = get_xp(vertices)
    transform = xp.asarray(transform, dtype=xp.float32)
    points = transform[:, :, :3] @ vertices.astype(xp.float32) + transform[:, :, 3:]
    if points.shape[2]:
        points[:, 2] -= points[:, 2].min(axis=1, keepdims=True)
    return points


def landmark_vertices(params: Any, bfm: Any) -> Any:
    """(K, 3, 68) float32 model-space landmarks of each face.

    ``bfm`` provides ``u_lm`` (204,), ``w_shp_lm`` (204, 40) and ``w_exp_lm`` (204, 10),
    xyz interleaved per landmark (tddfa.bfm.BFM).
    """
    xp = get_xp(params)
    _, alpha_shp, alpha_exp = split_params(params.astype(xp.float32))
    u_lm = xp.asarray(bfm.u_lm, dtype=xp.float32)
    w_shp = xp.asarray(bfm.w_shp_lm, dtype=xp.float32)
    w_exp = xp.asarray(bfm.w_exp_lm, dtype=xp.float32)
    flat = u_lm + alpha_shp @ w_shp.T + alpha_exp @ w_exp.T  # (K, 204)
    return flat.reshape(-1, NUM_LANDMARKS, 3).transpose(0, 2, 1)


def landmarks(params: Any, rois: Any, bfm: Any) -> Any:
    """The 68 landmarks of each face in image coordinates.

    Args:
        params: (K, 62) de-normalised params.
        rois: (K, 4) ROI boxes the params were regressed from.
        bfm: object with ``u_lm``, ``w_shp_lm``, ``w_exp_lm`` (see landmark_vertices).

    Returns:
        (K, 3, 68) float32 (x, y, z) rows, z shifted so its minimum is 0 per face.
    """
    return apply_transform(model_to_image(params, rois), landmark_vertices(params, bfm))


def transform_to_camera(transform: Any, rois: Any) -> Any:
    """Inverse of :func:`model_to_image`: the crop-frame camera [R | t] of each face.

    Args:
        transform: (K, 3, 4) model->image transforms.
        rois: (K, 4) ROI boxes (sx, sy, ex, ey) the camera is expressed in.

    Returns:
        (K, 12) float32 params[:12] (row-major [R | t]) for those ROI boxes.
    """
    xp = get_xp(transform)
    t = transform.astype(xp.float64)
    rois = rois.astype(xp.float64)
    size = float(REGRESSOR_SIZE)
    sx, sy, ex, ey = (rois[:, i, None] for i in range(4))
    scale_x = (ex - sx) / size
    scale_y = (ey - sy) / size
    scale_z = (scale_x + scale_y) / 2
    safe = lambda s: xp.where(s != 0, s, 1)  # noqa: E731 - empty slots stay zero
    row_x = t[:, 0].copy()
    row_x[:, 3] -= sx[:, 0]
    row_y = t[:, 1].copy()
    row_y[:, 3] -= (size * scale_y + sy)[:, 0]
    row_z = t[:, 2]
    shift = xp.asarray([0.0, 0.0, 0.0, 1.0])
    camera = xp.stack(
        [row_x / safe(scale_x) + shift, -row_y / safe(scale_y), row_z / safe(scale_z) + shift],
        axis=1,
    )
    return camera.reshape(-1, POSE_END).astype(xp.float32)


def landmarks_from_transform(transform: Any, alpha_shp: Any, alpha_exp: Any, bfm: Any) -> Any:
    """(K, 3, 68) image landmarks of faces given as transform (K,3,4) + coefficients."""
    xp = get_xp(transform)
    k = transform.shape[0]
    coefficients = xp.zeros((k, EXP_END), dtype=xp.float32)
    coefficients[:, POSE_END:SHAPE_END] = alpha_shp
    coefficients[:, SHAPE_END:EXP_END] = alpha_exp
    return apply_transform(transform, landmark_vertices(coefficients, bfm))
