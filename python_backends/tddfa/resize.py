"""Bilinear resampling with OpenCV ``INTER_LINEAR`` semantics, for numpy and CuPy.

OpenCV maps destination index ``d`` to the source position ``(d + 0.5) * inv_scale - 0.5``
(``inv_scale`` = source size / destination size when ``dsize`` is given), takes the two
neighbouring pixels and clamps at the borders (a position left of pixel 0 or right of
the last pixel reads that edge pixel).

For uint8 images OpenCV works in fixed point: 11-bit weights, an integer horizontal
pass, and a vertical pass that drops low bits before rounding (its SIMD kernel).
:func:`fixed_point_weights` and :func:`blend_rows_u8` reproduce that arithmetic, so the
uint8 results equal ``cv2.resize`` except, rarely, by one grey level in the few pixels
at the right end of a row that OpenCV computes with its scalar tail loop.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tddfa.xp import get_xp

# OpenCV's INTER_RESIZE_COEF_BITS: weights are integers summing to 2**11.
COEF_SCALE = 1 << 11


def linear_taps(
    xp: ModuleType, dst_size: int, src_size: Any, inv_scale: Any, clamp_weight: bool = True
):
    """Source taps of ``INTER_LINEAR`` for destination indices ``0 .. dst_size - 1``.

    Args:
        xp: numpy or cupy.
        dst_size: number of destination samples along the axis.
        src_size: source length, a scalar or an integer array of shape (K, 1) for K
            independent axes (one per face crop).
        inv_scale: source length / destination length, same shape rules as ``src_size``.
        clamp_weight: OpenCV's horizontal rule: outside the source the weight is set
            to 0 (the edge pixel alone). Its vertical rule (False) keeps the weight and
            only clamps the row indices; the values agree, the fixed-point rounding
            does not always.

    Returns:
        ``(i0, i1, w1)``: int64 indices of the left/right neighbours and float32 weight
        of the right one, each of shape (dst_size,) or (K, dst_size). For a source of
        length 0 the indices are -1 (callers mask such rows).
    """
    pos = (xp.arange(dst_size, dtype=xp.float64) + 0.5) * inv_scale - 0.5
    pos = pos.astype(xp.float32)
    base = xp.floor(pos)
    weight = pos - base
    first = base.astype(xp.int64)
    last = xp.asarray(src_size, dtype=xp.int64) - 1
    i0 = xp.clip(first, 0, last)
    i1 = xp.clip(first + 1, 0, last)
    if clamp_weight:
        outside = (first < 0) | (first >= last)
        weight = xp.where(outside, xp.float32(0), weight).astype(xp.float32)
    return i0, i1, weight


def inverse_scale(dst_size: Any, src_size: Any) -> Any:
    """OpenCV's source step per destination pixel, ``1 / (dst / src)``, in float64."""
    return 1.0 / (dst_size / src_size)


def fixed_point_weights(xp: ModuleType, weight: Any):
    """OpenCV's 11-bit integer weights ``(w0, w1)`` (int32) for float weights ``w1``."""
    scale = xp.float32(COEF_SCALE)
    w1 = xp.rint(weight * scale).astype(xp.int32)
    w0 = xp.rint((xp.float32(1) - weight) * scale).astype(xp.int32)
    return w0, w1


def blend_rows_u8(xp: ModuleType, top: Any, bottom: Any, w0: Any, w1: Any) -> Any:
    """OpenCV's vertical uint8 pass on horizontally filtered rows (consumes its inputs).

    Args:
        top, bottom: int32 horizontal sums (pixel * 11-bit weights) of the two rows;
            overwritten.
        w0, w1: int32 vertical weights (0 .. 2048), broadcastable to ``top``.

    Returns:
        uint8 array shaped like ``top``.
    """
    top >>= 4
    top *= w0
    top >>= 16
    bottom >>= 4
    bottom *= w1
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2  # at most 255 for weights summing to 2048: no clipping needed
    return top.astype(xp.uint8)


def resize_bilinear_u8(image: Any, out_h: int, out_w: int) -> Any:
    """``cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)`` for uint8.

    Args:
        image: (H, W, C) uint8, numpy or cupy.
        out_h, out_w: destination size (positive).

    Returns:
        (out_h, out_w, C) uint8.
    """
    xp = get_xp(image)
    height, width, channels = image.shape
    x0, x1, wx = linear_taps(xp, out_w, width, inverse_scale(out_w, width))
    y0, y1, wy = linear_taps(xp, out_h, height, inverse_scale(out_h, height), clamp_weight=False)
    # Work on (rows, W * C) so the horizontal gathers and weights are 1-D per row.
    channel = xp.arange(channels)
    cols0 = (x0[:, None] * channels + channel).reshape(-1)
    cols1 = (x1[:, None] * channels + channel).reshape(-1)
    a0, a1 = (xp.repeat(w, channels)[None, :] for w in fixed_point_weights(xp, wx))
    b0, b1 = (w[:, None] for w in fixed_point_weights(xp, wy))
    flat = image.reshape(height, width * channels)

    def horizontal(rows):
        left = xp.take(rows, cols0, axis=1).astype(xp.int32)
        left *= a0
        right = xp.take(rows, cols1, axis=1).astype(xp.int32)
        right *= a1
        left += right
        return left

    top = horizontal(xp.take(flat, y0, axis=0))
    bottom = horizontal(xp.take(flat, y1, axis=0))
    return blend_rows_u8(xp, top, bottom, b0, b1).reshape(out_h, out_w, channels)


def resize_bilinear(image: Any, out_h: int, out_w: int) -> Any:
    """Float resize like ``cv2.resize`` of a float32 image with ``INTER_LINEAR``.

    Args:
        image: (H, W, C) array, any real dtype, numpy or cupy.
        out_h, out_w: destination size (positive).

    Returns:
        (out_h, out_w, C) float32.
    """
    xp = get_xp(image)
    height, width = image.shape[:2]
    x0, x1, wx = linear_taps(xp, out_w, width, inverse_scale(out_w, width))
    y0, y1, wy = linear_taps(xp, out_h, height, inverse_scale(out_h, height))
    # Only the sampled rows are read; blending vertically first, then horizontally,
    # differs from OpenCV's order only by float rounding and is faster here.
    wy = wy[:, None, None]
    wx = wx[None, :, None]
    rows = xp.take(image, y0, axis=0).astype(xp.float32)
    below = xp.take(image, y1, axis=0).astype(xp.float32)
    below -= rows
    below *= wy
    rows += below
    out = xp.take(rows, x0, axis=1)
    right = xp.take(rows, x1, axis=1)
    right -= out
    right *= wx
    out += right
    return out
