"""How far a tracked face moved between two frames, measured on its regressor crops.

The regressor's 3DMM fit is accurate on average but noisy from frame to frame; the image
itself says precisely how the face moved. Phase correlation of the face's previous crop
and its current crop gives their relative shift to a few hundredths of a crop pixel on
a face that moves rigidly (Kuglin and Hines, "The phase correlation image alignment
method", 1975): the normalised cross-power spectrum of two shifted images is a pure
phase ramp, whose inverse transform peaks at the shift. The spectrum is weighted by a
Gaussian so the peak is a Gaussian whose centre three samples locate exactly. With the
two crops' boxes, the shift becomes the face's displacement in the frame
(:func:`displacement`), which tddfa.smoothing uses as the filter's prediction.

numpy/CuPy agnostic: a batch of crops is one FFT on the device they are on.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tddfa.xp import get_xp

# Width of the Gaussian weighting the cross-power spectrum, in cycles per pixel: keeps the
# frequencies where a face has texture, drops the noise above (tuned on the jitter clips).
SPECTRUM_SIGMA = 0.25


def gray(crops: Any) -> Any:
    """(..., 3, S, S) float32 RGB crops -> (..., S, S) float32: the channels' mean."""
    return crops.mean(axis=-3)


@functools.lru_cache(maxsize=4)
def _weights(size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The constants of :func:`crop_shift` for ``size`` x ``size`` crops (host, made once):
    the Hann window (S, S) float32, the Gaussian spectrum weight on the half spectrum
    that ``rfft2`` keeps (S, S // 2 + 1) float64, and that weight's sum over the whole
    spectrum (what an identical pair's peak is normalised by)."""
    hann = np.hanning(size).astype(np.float32)
    freq = np.fft.fftfreq(size)
    full = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * SPECTRUM_SIGMA**2))
    half = np.ascontiguousarray(full[:, : size // 2 + 1])
    return hann[:, None] * hann[None, :], half, float(full.sum())


def spectrum(crops: Any) -> Any:
    """(N, S, S) float32 gray crops (:func:`gray`) -> (N, S, S // 2 + 1) complex128: each
    crop's mean removed, Hann-windowed, real FFT. A tracked face's spectrum is kept for
    the next frame, where it is the previous crop's (one FFT a face and frame, not two)."""
    xp = get_xp(crops)
    window = xp.asarray(_weights(crops.shape[-1])[0])
    # real crops: half the spectrum (rfft2) holds all of it, at half the work of fft2
    return xp.fft.rfft2((crops - crops.mean(axis=(1, 2), keepdims=True)) * window)


def crop_shift(previous: Any, current: Any) -> tuple[Any, Any]:
    """Shift of each current crop's content relative to the previous crop.

    Args:
        previous, current: (N, S, S) float32 gray crops (:func:`gray`).

    Returns:
        shift (N, 2) float64 (dx, dy) in crop pixels with current(u) ~ previous(u - shift),
        and peak (N,) float64 in [0, 1]: the correlation peak's height, 1 for identical
        crops, falling as the content changes other than by a shift (occlusion, turning).
    """
    if current.shape[0] == 0:
        xp = get_xp(current)
        return xp.zeros((0, 2)), xp.zeros(0)
    return spectrum_shift(spectrum(previous), spectrum(current), current.shape[-1])


def spectrum_shift(previous: Any, current: Any, size: int) -> tuple[Any, Any]:
    """:func:`crop_shift` from the crops' (N, S, S // 2 + 1) :func:`spectrum`; ``size`` is S."""
    xp = get_xp(current)
    n = current.shape[0]
    if n == 0:
        return xp.zeros((0, 2)), xp.zeros(0)
    _, weight, weight_sum = _weights(size)
    cross = current * xp.conj(previous)
    cross /= xp.maximum(xp.abs(cross), 1e-12)
    surface = xp.fft.irfft2(cross * xp.asarray(weight), s=(size, size))  # peak at the shift
    flat = surface.reshape(n, -1).argmax(axis=1)
    py, px = flat // size, flat % size
    rows = xp.arange(n)
    centre = surface[rows, py, px]

    def offset(before, after):
        """Sub-pixel centre of a Gaussian through three samples (0 where not a peak)."""
        lb, lc, la = (xp.log(xp.maximum(v, 1e-12)) for v in (before, centre, after))
        curvature = lb - 2 * lc + la
        ok = curvature < 0
        return xp.where(ok, 0.5 * (lb - la) / xp.where(ok, curvature, -1.0), 0.0)

    dx = offset(surface[rows, py, (px - 1) % size], surface[rows, py, (px + 1) % size])
    dy = offset(surface[rows, (py - 1) % size, px], surface[rows, (py + 1) % size, px])
    wrap = lambda i: (i + size // 2) % size - size // 2  # noqa: E731 - peak index -> shift
    shift = xp.stack([wrap(px) + dx, wrap(py) + dy], axis=1).astype(xp.float64)
    # an identical pair peaks at the sum of the weights / S^2 (the inverse FFT's 1/S^2)
    peak = centre * (size * size) / weight_sum
    return shift, peak.astype(xp.float64)


def displacement(
    point: np.ndarray, previous_roi: np.ndarray, roi: np.ndarray, shift: np.ndarray, size: int
) -> np.ndarray:
    """Where an image point of the previous frame went, from its crops' shift.

    Args:
        point: (N, 2) image points (x, y) in the previous frame.
        previous_roi, roi: (N, 4) the ROI boxes (sx, sy, ex, ey) the previous and current
            crops were cut from (rounded to whole pixels, as tddfa.roi crops).
        shift: (N, 2) :func:`crop_shift` of the two crops.
        size: the crops' side (120).

    Returns:
        (N, 2) float64 displacement of each point in image pixels.
    """
    before, after = np.rint(previous_roi).astype(np.float64), np.rint(roi).astype(np.float64)
    scale_before = (before[:, 2:] - before[:, :2]) / size
    scale_after = (after[:, 2:] - after[:, :2]) / size
    # crop pixel u samples image x = start + (u + 0.5) * scale - 0.5 (tddfa.resize)
    u = (point + 0.5 - before[:, :2]) / scale_before - 0.5
    moved = after[:, :2] + (u + shift + 0.5) * scale_after - 0.5
    return moved - point
