"""The CPU renderer's last step (numba): a region's drawing blended over the frame.

:func:`composite` blends the interpolated colour, :func:`composite_colour` one colour (the
wireframe's lines), :func:`composite_texture` samples the texture image at the
interpolated texel coordinates first; all round as the GL path's RGBA8 target and blend (``mix(frame, drawn, alpha)``, then UNORM8 rounding). :func:`taps`
and :func:`mix` are GL_LINEAR sampling, which the vertex stage shares (uv maps sample the
frame at each vertex).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
_ONE = 1 << 24  # the texture filter's weights: 24-bit fixed point
_BITS = 48  # the filtered value's bits below the point (two weights)
_HALF = 1 << (_BITS - 1)
# texture mode: the texels of the pixel this far ahead in a row are asked for early (each
# frame's BFM decode streams megabytes through the caches: the texture comes back from
# memory on every frame, a miss a pixel when each pixel waits for its own; 16 ahead takes
# 5% less than 8 on a 720p face, 24 no less)
PREFETCH_AHEAD = 16


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to bring ``array``'s element ``index`` (flat, C order) into the caches:
    LLVM's prefetch (no fault for any address, no result)."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, data, [args[1]], wraparound=False
        )
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0"
        if not getattr(pointer.type, "is_opaque", False):  # LLVM before opaque pointers
            pointer, name = builder.bitcast(pointer, ir.IntType(8).as_pointer()), name + "i8"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), name
        )
        # read, keep in all cache levels, data cache
        builder.call(
            function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        )
        return context.get_dummy_value()

    return types.void(array, index), codegen


@njit(inline="always")
def unorm8(value):
    """float in [0, 1] (clamped) -> 0..255, rounded as GL's conversion to RGBA8."""
    return np.int64(min(max(value, 0.0), 1.0) * 255.0 + 0.5)


@njit(inline="always")
def _div255(x):
    """round(x / 255) for 0 <= x <= 255 * 255, without a division (a signed integer
    division costs numba more than the rest of the blend)."""
    x += 128
    return (x + (x >> 8)) >> 8


@njit(inline="always")
def taps(x, y, width, height):
    """GL_LINEAR's four texels around (x, y) (texel centres at integers, clamped to the
    edge) and the weights of the right and lower ones."""
    fx, fy = np.floor(x), np.floor(y)
    c0 = min(max(np.int64(fx), 0), width - 1)
    c1 = min(max(np.int64(fx) + 1, 0), width - 1)
    r0 = min(max(np.int64(fy), 0), height - 1)
    r1 = min(max(np.int64(fy) + 1, 0), height - 1)
    return c0, c1, r0, r1, x - fx, y - fy


@njit(inline="always")
def mix(image, c0, c1, r0, r1, ax, ay, channel):
    """GL_LINEAR's value of ``channel`` of (H, W, C) uint8 ``image`` from :func:`taps`,
    in [0, 1]."""
    top = image[r0, c0, channel] * (1.0 - ax) + image[r0, c1, channel] * ax
    low = image[r1, c0, channel] * (1.0 - ax) + image[r1, c1, channel] * ax
    return (top * (1.0 - ay) + low * ay) / 255.0


@njit(inline="always")
def _blend(old, drawn, alpha8):
    """drawn (0..255) over old, weighted alpha8 / 255 (255: drawn exactly)."""
    return _div255(np.int64(old) * (255 - alpha8) + drawn * alpha8)


# The loops below index with unsigned integers: numba adds no negative-index wrap-around
# to those loads and stores (a third of the time of these loops).


@njit(**_JIT)
def composite(
    out: np.ndarray, region: np.ndarray, colour: np.ndarray, written: np.ndarray, alpha8: int
) -> None:
    """Blend the region's drawing over ``out`` (H, W, 3) uint8 in place: the colour, stored
    as 8 bits, weighted ``alpha8`` / 255 (255: opaque), every written pixel once, rounded
    as GL does."""
    x0, y0 = region[0], region[1]
    height, width = written.shape
    frame, drawn, flags = out.reshape(-1), colour.reshape(-1), written.reshape(-1)
    for row in range(height):
        start = 3 * ((y0 + row) * out.shape[1] + x0)
        for col in range(width):
            pixel = np.uint64(row * width + col)
            if not flags[pixel]:
                continue
            at, source = np.uint64(start + 3 * col), np.uint64(3) * pixel
            for c in range(3):
                k = np.uint64(c)
                value = unorm8(drawn[source + k])
                frame[at + k] = value if alpha8 >= 255 else _blend(frame[at + k], value, alpha8)


@njit(**_JIT)
def composite_colour(
    out: np.ndarray, region: np.ndarray, rgb8: np.ndarray, written: np.ndarray, alpha8: int
) -> None:
    """As :func:`composite` for a drawing of one colour, ``rgb8`` (3,) int64 0..255 (the
    wireframe's lines): a row's pixels are blended or kept by a select, not a branch
    (lines flag a scattered half of a face's pixels: a branch mispredicts on every
    other one)."""
    x0, y0 = region[0], region[1]
    height, width = written.shape
    frame, flags = out.reshape(-1), written.reshape(-1)
    red = rgb8[0] * alpha8 + 128
    green = rgb8[1] * alpha8 + 128
    blue = rgb8[2] * alpha8 + 128
    keep = 255 - alpha8
    for row in range(height):
        start = 3 * ((y0 + row) * out.shape[1] + x0)
        for col in range(width):
            at = np.uint64(start + 3 * col)
            drawn = flags[np.uint64(row * width + col)] != 0
            for c, weighted in ((0, red), (1, green), (2, blue)):
                k = at + np.uint64(c)
                old = frame[k]
                x = np.int64(old) * keep + weighted
                frame[k] = ((x + (x >> 8)) >> 8) if drawn else old


def texture_layout(texture: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> the (h + 2, w + 2) uint32 texels :func:`composite_texture`
    samples: one 4-byte read a texel (red in the low byte), the edge repeated around it so
    that the filter's right and lower taps are always the next column and row (clamping
    to the edge as GL_CLAMP_TO_EDGE then happens to the left and upper taps alone)."""
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] < 3 or 0 in texture.shape:
        raise ValueError(f"the texture must be an (h, w, 3) RGB image, got {texture.shape}")
    padded = np.pad(texture[..., :3].astype(np.uint8), ((1, 1), (1, 1), (0, 0)), mode="edge")
    channels = padded.astype(np.uint32)
    return np.ascontiguousarray(channels[..., 0] | channels[..., 1] << 8 | channels[..., 2] << 16)


@njit(**_JIT)
def composite_texture(
    out: np.ndarray,
    region: np.ndarray,
    colour: np.ndarray,
    written: np.ndarray,
    alpha8: int,
    texels: np.ndarray,
) -> None:
    """As :func:`composite` for the texture mode: the colour's first two channels are
    texel coordinates (x, y) of a texture, ``texels`` its :func:`texture_layout`, sampled
    (GL_LINEAR, clamped) once per visible pixel.

    The filter runs in integers: a float32 texel coordinate of 1 or more has at most 23
    bits below its point, so its weights are exact in 24-bit fixed point (below 1 they
    lose what lies past 2^-24 of a texel) and so is the filtered value (56 bits), rounded
    to 8 bits once: float64 arithmetic rounds on the way too and takes longer; the two
    differ only on values a half or within 2^-16 of it."""
    x0, y0 = region[0], region[1]
    height, width = written.shape
    frame, drawn, flags = out.reshape(-1), colour.reshape(-1), written.reshape(-1)
    stride = texels.shape[1]
    texture_height, texture_width = texels.shape[0] - 2, stride - 2
    flat = texels.reshape(-1)
    for row in range(height):
        start = 3 * ((y0 + row) * out.shape[1] + x0)
        for col in range(width):
            pixel = np.uint64(row * width + col)
            if col + PREFETCH_AHEAD < width:  # that pixel's two texel rows, on their way
                ahead = 3 * (row * width + col + PREFETCH_AHEAD)
                ax = min(max(np.int64(drawn[ahead]), -1), texture_width - 1) + 1
                ay = min(max(np.int64(drawn[ahead + 1]), -1), texture_height - 1) + 1
                prefetch(flat, ay * stride + ax)
                prefetch(flat, (ay + 1) * stride + ax)
            if not flags[pixel]:
                continue
            source = np.uint64(3) * pixel
            x, y = np.float64(drawn[source]), np.float64(drawn[source + np.uint64(1)])
            fx, fy = np.floor(x), np.floor(y)
            c0 = min(max(np.int64(fx), -1), texture_width - 1) + 1  # of the padded texels
            r0 = min(max(np.int64(fy), -1), texture_height - 1) + 1
            wx, wy = np.int64((x - fx) * _ONE), np.int64((y - fy) * _ONE)
            top = np.uint64(r0 * stride + c0)
            low = top + np.uint64(stride)
            top0, top1 = flat[top], flat[top + np.uint64(1)]
            low0, low1 = flat[low], flat[low + np.uint64(1)]
            at = np.uint64(start + 3 * col)
            for c in range(3):
                shift = np.uint32(8 * c)
                upper = (
                    np.int64((top0 >> shift) & 255) * (_ONE - wx)
                    + np.int64((top1 >> shift) & 255) * wx
                )
                lower = (
                    np.int64((low0 >> shift) & 255) * (_ONE - wx)
                    + np.int64((low1 >> shift) & 255) * wx
                )
                value = (upper * (_ONE - wy) + lower * wy + _HALF) >> _BITS
                k = at + np.uint64(c)
                frame[k] = _blend(frame[k], value, alpha8)
