"""ROI boxes around faces and the 120x120 regressor crops (docs/models.md 3).

All functions take K face slots at once and are numpy/CuPy agnostic. ROI boxes are
computed in float32, which reproduces the reference ROI boxes bit for bit (their side
is truncated to an integer, so the precision matters at the boundaries).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tddfa.config import REGRESSOR_SIZE
from tddfa.resize import blend_rows_u8, fixed_point_weights, inverse_scale, linear_taps
from tddfa.xp import get_xp

# Shape of the original's crop around a detection box: the square's side is this many
# times the box's mean side, and its centre moves down by this fraction of that side.
ROI_SIZE_FACTOR = 1.58
ROI_CENTER_SHIFT = 0.14


def roi_from_box(boxes: Any) -> Any:
    """Square crop boxes around detections.

    Args:
        boxes: (K, 4+) (x1, y1, x2, y2[, score]) in image pixels.

    Returns:
        (K, 4) float32 (sx, sy, ex, ey); the side is int(1.58 * mean box side) and the
        centre is the box centre moved down by 0.14 * mean side. Zero boxes give a
        zero-sized ROI at the origin.
    """
    xp = get_xp(boxes)
    f32 = xp.float32
    half = f32(2)
    left, top, right, bottom = boxes[:, :4].astype(f32, copy=False).T
    old_size = (right - left + bottom - top) / half
    center_x = right - (right - left) / half
    center_y = bottom - (bottom - top) / half + old_size * f32(ROI_CENTER_SHIFT)
    side = xp.trunc(old_size * f32(ROI_SIZE_FACTOR))
    start_x = center_x - side / half
    start_y = center_y - side / half
    return xp.stack([start_x, start_y, start_x + side, start_y + side], axis=1)


def roi_from_landmarks(landmarks: Any) -> Any:
    """Crop boxes from the previous frame's landmarks (tracking mode).

    Args:
        landmarks: (K, 2+, 68) image coordinates (rows x, y[, z]).

    Returns:
        (K, 4) float32 (sx, sy, ex, ey): the landmarks' bounding box made square
        (side = its longer side) and then enlarged to a square whose side is that
        square's diagonal, around the same centre.
    """
    xp = get_xp(landmarks)
    f64 = xp.float64
    points = landmarks[:, :2].astype(xp.float32, copy=False)
    low = points.min(axis=2)  # (K, 2)
    high = points.max(axis=2)
    center = (low + high).astype(f64) / 2
    radius = (high - low).max(axis=1).astype(f64) / 2  # (K,)
    square_low = center - radius[:, None]
    square_high = center + radius[:, None]
    side = xp.sqrt(((square_high - square_low) ** 2).sum(axis=1))
    center = (square_high + square_low) / 2
    start = center - side[:, None] / 2
    return xp.concatenate([start, start + side[:, None]], axis=1).astype(xp.float32)


def crop_taps(rois: Any, height: int, width: int, size: int = REGRESSOR_SIZE) -> tuple:
    """Sampling taps of :func:`crop_and_resize` for ``rois`` (k, 4) in a height x width frame.

    Returns:
        ``(x0, x1, a0, a1, y0, y1, b0, b1)``, each (k, size): clipped column/row indices
        of the two neighbours and their int32 fixed-point weights. A tap outside the
        image, or any tap of an empty ROI, has weight 0: the same as reading the black
        canvas the original crops into.
    """
    xp = get_xp(rois)
    corners = xp.rint(rois.astype(xp.float64)).astype(xp.int64)
    start_x, start_y = corners[:, 0:1], corners[:, 1:2]
    crop_w = corners[:, 2:3] - start_x  # (k, 1)
    crop_h = corners[:, 3:4] - start_y
    filled = ((crop_w > 0) & (crop_h > 0)).astype(xp.int32)  # (k, 1)

    def taps(start, length, limit, clamp_weight):
        length = xp.maximum(length, 1)
        i0, i1, weight = linear_taps(
            xp, size, length, inverse_scale(size, length), clamp_weight=clamp_weight
        )
        i0, i1 = i0 + start, i1 + start
        w0, w1 = fixed_point_weights(xp, weight)
        w0 = w0 * ((i0 >= 0) & (i0 < limit)) * filled
        w1 = w1 * ((i1 >= 0) & (i1 < limit)) * filled
        return xp.clip(i0, 0, limit - 1), xp.clip(i1, 0, limit - 1), w0, w1

    return (
        *taps(start_x, crop_w, width, clamp_weight=True),
        *taps(start_y, crop_h, height, clamp_weight=False),
    )


def crop_and_resize(
    image: Any,
    rois: Any,
    size: int = REGRESSOR_SIZE,
    count: int | None = None,
    out: Any | None = None,
) -> Any:
    """Cut each ROI out of the frame (black outside it) and resize it to size x size.

    The original's integer crop into a zero canvas of the ROI's size followed by
    ``cv2.resize(..., (size, size), interpolation=cv2.INTER_LINEAR)`` on uint8. On the
    host that is what runs (about 0.1 ms a face, a tenth of gathering the samples with
    numpy); CuPy frames are gathered at the sampled positions with the same fixed-point
    arithmetic (:func:`gather_crops`), without a per-face canvas.

    Args:
        image: (H, W, 3) uint8 RGB, numpy or cupy.
        rois: (K, 4) (sx, sy, ex, ey) image pixels; rounded to the nearest integer.
        size: output side (the regressor's 120).
        count: number of filled slots; slots >= count (and empty ROIs) give zeros.
        out: a zero-filled (K, 3, size, size) float32 array to write into (None: a new one).

    Returns:
        (K, 3, size, size) float32 RGB, integer values 0..255 (``out`` when given).
    """
    xp = get_xp(image)
    num = int(rois.shape[0])
    if out is None:
        out = xp.zeros((num, 3, size, size), dtype=xp.float32)
    if count is not None:
        rois = rois[: max(0, min(int(count), num))]  # skip the empty slots' work
    if rois.shape[0] == 0:
        return out
    if xp is not np:
        return gather_crops(image, rois, size, out)
    import cv2

    height, width = image.shape[:2]
    corners = np.rint(np.asarray(rois, np.float64)).astype(np.int64)
    for crop, (sx, sy, ex, ey) in zip(out, corners.tolist(), strict=False):
        if ex <= sx or ey <= sy:
            continue  # an empty ROI: black
        x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, width), min(ey, height)
        if sx == x0 and sy == y0 and ex == x1 and ey == y1:
            canvas = image[sy:ey, sx:ex]  # inside the frame: no copy
        else:
            canvas = np.zeros((ey - sy, ex - sx, 3), np.uint8)
            if x1 > x0 and y1 > y0:
                canvas[y0 - sy : y1 - sy, x0 - sx : x1 - sx] = image[y0:y1, x0:x1]
        resized = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)
        crop[...] = resized.transpose(2, 0, 1)  # uint8 -> float32 on assignment
    return out


def gather_crops(image: Any, rois: Any, size: int, out: Any) -> Any:
    """:func:`crop_and_resize` by gathering the frame at the sampled positions (OpenCV's
    fixed-point arithmetic, numpy or CuPy): (K, 4) non-empty list of ROIs -> ``out``
    (K', 3, size, size) with its first K crops written."""
    xp = get_xp(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    x0, x1, a0, a1, y0, y1, b0, b1 = crop_taps(rois, height, width, size)
    pixels = image.reshape(height * width, 3)
    a0, a1 = a0[:, None, :, None], a1[:, None, :, None]

    def horizontal(rows):
        """(k, size, size, 3) int32 horizontal sums of the sampled rows."""
        offsets = rows[:, :, None] * width
        left = xp.take(pixels, offsets + x0[:, None, :], axis=0).astype(xp.int32)
        left *= a0
        right = xp.take(pixels, offsets + x1[:, None, :], axis=0).astype(xp.int32)
        right *= a1
        left += right
        return left

    crops = blend_rows_u8(
        xp, horizontal(y0), horizontal(y1), b0[:, :, None, None], b1[:, :, None, None]
    )
    out[: crops.shape[0]] = crops.transpose(0, 3, 1, 2)
    return out
